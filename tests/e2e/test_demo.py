"""`airflow-gpu demo` end to end, and the DAG's failure paths under dag.test(), each in a fresh process.

Both share one Airflow home (migrated by whichever runs first) and start their own embedded S3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.airflow_e2e import seed_airflow_home

pytestmark = pytest.mark.timeout(400)

BIN = Path(sys.executable).parent
SUPPORT = Path(__file__).resolve().parents[1] / "support"


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    return seed_airflow_home(tmp_path_factory.mktemp("demo-airflow-home"))


def clean_env() -> dict[str, str]:
    # Nothing from the test session's own Airflow or AWS settings may leak into the demo.
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}


def test_demo_runs_the_dag_end_to_end(airflow_home, tmp_path):
    outputs = tmp_path / "outputs"
    done = subprocess.run(
        [
            str(BIN / "airflow-gpu"),
            "demo",
            "--size",
            "60000",
            "--objects",
            "3",
            "--home",
            str(airflow_home),
            "--output-dir",
            str(outputs),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=360,
    )
    out = done.stdout
    assert done.returncode == 0, f"demo failed:\n{out[-4000:]}\n{done.stderr[-4000:]}"
    # Progress throughout: the tasks' states, with the deferral, and the worker's own lines.
    for line in (
        "task prepare: success",
        "task train: deferred",
        "task train: success",
        "task publish: success",
        "worker | train: iteration 1/15",
        "worker | publish: committed",
    ):
        assert line in out, line
    # Training runs to the 15th iteration or stops earlier on a loss plateau, and says which.
    assert "worker | train: iteration 15/15" in out or "worker | train: stopping after iteration" in out
    # The summary: stages with times, ALS against popularity, three users, where things are.
    for heading in ("Stages", "precision@10: ALS", "Three users", "Where things are", "latest marker", "manifest"):
        assert heading in out, heading
    for stage in ("generate data", "upload to S3", "prepare", "train (deferred)", "publish", "total"):
        assert any(line.strip().startswith(stage) and line.rstrip().split()[-1] != "-" for line in out.splitlines()), (
            stage
        )
    assert sum(line.startswith("  user-") for line in out.splitlines()) == 3
    # The local copy of the run, as a reader finds it: latest.json -> manifest -> files.
    [run] = list(outputs.iterdir())
    latest = json.loads((run / "latest.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    assert latest["run_prefix"].endswith(f"/{run.name}/") and latest["worker_run_id"] == manifest["run_id"]
    assert manifest["complete"] is True
    for entry in manifest["files"]:
        assert (run / entry["path"]).stat().st_size == entry["bytes"]
    quality = manifest["summary"]["precision_at_k"]
    assert quality["als"] > quality["popularity"]
    assert f"precision@10: ALS {quality['als']:.4f} vs popularity {quality['popularity']:.4f}" in out


def test_dag_refuses_empty_input_and_a_model_that_fails_the_gate(airflow_home):
    done = subprocess.run(
        [sys.executable, str(SUPPORT / "dag_test_driver.py"), str(airflow_home)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=360,
    )
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-6000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])

    # No data: prepare fails at once with what to do; no job is ever started.
    empty = result["empty_input"]
    assert empty["state"] == "failed"
    assert empty["tasks"]["prepare"] == "failed" and empty["tasks"].get("train") in (None, "upstream_failed")
    why = empty["reasons"]["prepare"]
    assert "No input under s3://data/staging/interactions/" in why and "export the interactions there" in why

    # The model is trained and committed, but it does not pass the gate: nothing is published.
    gate = result["quality_gate"]
    assert gate["state"] == "failed"
    assert (gate["tasks"]["prepare"], gate["tasks"]["train"], gate["tasks"]["publish"]) == (
        "success",
        "success",
        "failed",
    ), (gate["reasons"], logs[-6000:])
    assert "does not beat popularity by 1000x" in gate["reasons"]["publish"]
    keys = result["testing_outputs"]
    assert any(key.endswith("/manifest.json") for key in keys)
    assert not any(key.endswith("latest.json") for key in keys)
