"""The worker learns its instance type and market from the instance metadata service (IMDSv2: a
token first, then the metadata with it), as the AWS SDKs do, and its report and manifest carry the
run's estimated cost; no IMDS means "cost unknown", said plainly. The service is a stand-in on
127.0.0.1 (tests/support/imds.py)."""

from __future__ import annotations

import json

import pytest

from airflow_gpu.worker.instance import Placement, lookup
from airflow_gpu.worker.run_cost import forget_placement
from tests.support.imds import TOKEN, closed_port, imds_stand_in


@pytest.fixture(autouse=True)
def _ask_again():
    forget_placement()
    yield
    forget_placement()


def test_a_spot_instance_is_found_with_a_token_as_imdsv2_asks():
    with imds_stand_in("g6e.xlarge", "spot") as imds:
        found = lookup({"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url})
    assert found == Placement("g6e.xlarge", "spot")
    assert imds.requests == [
        ("PUT", "/latest/api/token", None),
        ("GET", "/latest/meta-data/instance-type", TOKEN),
        ("GET", "/latest/meta-data/instance-life-cycle", TOKEN),
    ]


def test_an_imdsv1_only_instance_is_asked_without_a_token():
    with imds_stand_in("g5.xlarge", "on-demand", v1_only=True) as imds:
        found = lookup({"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url + "/"})
    assert found == Placement("g5.xlarge", "on-demand")
    assert [r[2] for r in imds.requests if r[0] == "GET"] == [None, None]


def test_an_instance_with_imds_turned_off_says_it_refused():
    with imds_stand_in(token_status=403) as imds:
        found = lookup({"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url})
    assert found.instance_type is None and "refused (403" in found.why_unknown
    assert [r[0] for r in imds.requests] == ["PUT"]  # nothing asked after the refusal


def test_disabled_metadata_is_never_asked():
    with imds_stand_in() as imds:
        found = lookup({"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "AWS_EC2_METADATA_DISABLED": "true"})
    assert found.instance_type is None and "AWS_EC2_METADATA_DISABLED" in found.why_unknown
    assert imds.requests == []


def test_no_service_and_a_slow_service_both_say_it_did_not_answer():
    missing = lookup({"AWS_EC2_METADATA_SERVICE_ENDPOINT": closed_port()})
    assert missing.instance_type is None and "did not answer" in missing.why_unknown
    with imds_stand_in(delay_s=2.0) as imds:
        slow = lookup({"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, "AWS_METADATA_SERVICE_TIMEOUT": "0.2"})
    assert slow.instance_type is None and "did not answer" in slow.why_unknown


SCRIPT = "import os, pathlib; pathlib.Path(os.environ['OUTPUT_DIR'], 'x.txt').write_text('x')\n"


def _run_script(tmp_path, capsys):
    from airflow_gpu.worker.__main__ import main

    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    code = main(["run-script", "--script", str(script), "--output", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    return json.loads((tmp_path / "out" / "manifest.json").read_text()), capsys.readouterr().err


def test_a_batch_jobs_manifest_carries_its_estimated_cost_and_the_log_says_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_BATCH_JOB_ID", "job-1")
    monkeypatch.delenv("AIRFLOW_GPU_JOB_ID", raising=False)
    with imds_stand_in("p5.48xlarge", "spot") as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "2")  # one of the eight (no NVML here)
        manifest, err = _run_script(tmp_path, capsys)
    cost = manifest["cost"]
    assert cost["instance_type"] == "p5.48xlarge" and cost["market"] == "spot" and cost["share_of_instance"] == 0.125
    assert cost["cost_usd"] == pytest.approx(cost["run_s"] / 3600 * 55.04 * 0.4 / 8, abs=1e-4)
    assert "1/8 of the instance" in cost["text"] and "spot at 40% of on-demand" in cost["text"]
    assert f"cost: {cost['text']}" in err


def test_without_an_instance_to_ask_the_manifest_says_cost_unknown(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_BATCH_JOB_ID", "job-1")
    monkeypatch.delenv("AIRFLOW_GPU_JOB_ID", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", closed_port())
    manifest, err = _run_script(tmp_path, capsys)
    assert manifest["cost"]["cost_usd"] is None
    assert manifest["cost"]["text"].startswith("Cost unknown: the instance metadata service at http://127.0.0.1:")
    assert "cost: Cost unknown" in err


def test_an_als_reports_headline_shows_the_runs_cost(tmp_path, monkeypatch):
    import re

    from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards
    from airflow_gpu.worker.ingest import Columns
    from airflow_gpu.worker.pipeline import AlsConfig, run_als
    from airflow_gpu.worker.train import TrainParams

    monkeypatch.setenv("AWS_BATCH_JOB_ID", "job-1")
    monkeypatch.delenv("AIRFLOW_GPU_JOB_ID", raising=False)
    write_shards(synthetic_interactions(4_000, n_users=300, n_items=60, seed=1), tmp_path / "in", "parquet", objects=1)
    with imds_stand_in("g5.xlarge", "on-demand") as imds:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
        run = run_als(
            AlsConfig(
                input=str(tmp_path / "in"),
                output=str(tmp_path / "out"),
                columns=Columns(weight="plays"),
                train=TrainParams(factors=4, iterations=1),
            )
        )
    page = (tmp_path / "out" / run.manifest["report"]).read_text()
    start = page.index("class=headline")
    headline = re.sub("<[^>]+>", "", page[start : page.index("</div>", start)])
    assert "on g5.xlarge (on-demand), the whole instance at $1.006/h" in headline
    assert run.manifest["cost"]["instance_type"] == "g5.xlarge"
