"""The worker end to end, as the container runs it: the CLI against a moto S3 server and local folders."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards
from airflow_gpu.worker import storage
from airflow_gpu.worker.__main__ import main
from airflow_gpu.worker.config import AlsConfig
from airflow_gpu.worker.ingest import Columns
from airflow_gpu.worker.metrics import json_bytes
from airflow_gpu.worker.pipeline import run_als
from airflow_gpu.worker.train import TrainParams
from tests.support.moto_aws import upload_folder

SMALL = ["--factors", "16", "--iterations", "6", "--progress-interval", "0.2"]


@pytest.fixture(scope="module")
def interactions() -> pa.Table:
    return synthetic_interactions(40_000, n_users=1_500, n_items=300, seed=4)


def s3_bytes(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))


def read_dataset(s3, bucket: str, prefix: str, manifest: dict, kind: str) -> pa.Table:
    tables = [
        pq.read_table(io.BytesIO(s3_bytes(s3, bucket, prefix + f["path"])))
        for f in manifest["files"]
        if f["kind"] == kind
    ]
    return pa.concat_tables(tables)


def test_als_end_to_end_on_s3(moto_aws, tmp_path, interactions, capsys):
    s3 = moto_aws.client("s3")
    write_shards(interactions, tmp_path / "orc", "orc", objects=4)
    upload_folder(s3, tmp_path / "orc", "lake", "interactions")
    s3.put_object(Bucket="lake", Key="interactions/_SUCCESS", Body=b"")
    s3.create_bucket(Bucket="out")

    code = main(
        [
            "als",
            "--input",
            "s3://lake/interactions/",
            "--output",
            "s3://out/als/",
            "--weight-col",
            "plays",
            "--endpoint-url",
            moto_aws.endpoint_url,
            "--eval-holdout",
            "0.2",
            "--batch-users",
            "400",
            *SMALL,
        ]
    )
    assert code == 0, capsys.readouterr().err
    log = capsys.readouterr().err
    assert "ingest: 4/4 objects" in log and "MB/s" in log and "train: iteration 6/6" in log

    manifest = json.loads(s3_bytes(s3, "out", "als/manifest.json"))
    assert manifest["complete"] is True and manifest["command"] == "als"
    # The manifest lists exactly this run's files, each with its true size and checksum.
    listed = sorted("als/" + f["path"] for f in manifest["files"])
    # ... plus the run's _COMMITTED mark, written after the manifest for --keep-runs.
    assert listed == [k for k in keys(s3, "out", "als/runs/") if not k.endswith("/_COMMITTED")]
    for entry in manifest["files"]:
        body = s3_bytes(s3, "out", "als/" + entry["path"])
        assert len(body) == entry["bytes"]
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        if entry["path"].endswith(".parquet"):
            assert pq.read_metadata(io.BytesIO(body)).num_rows == entry["rows"]
    assert manifest["params"]["train"]["factors"] == 16 and manifest["params"]["weighting"] == "bm25"
    # The job's profile: listed, beside the outputs, summed up in the log and in the report's headline.
    profile = json.loads(s3_bytes(s3, "out", "als/" + manifest["profile"]))
    assert profile["format"] == "airflow-gpu-profile" and profile["cpu"]["samples"] and profile["gpus"] == []
    assert "profile: cpu: " in log and "(no GPU profile: " in log
    assert "(no GPU profile: " in s3_bytes(s3, "out", "als/" + manifest["report"]).decode()
    assert manifest["datasets"]["recommendations"]["files"] == 4  # 1,500 users in parts of 400

    recs = read_dataset(s3, "out", "als/", manifest, "recommendations").to_pandas()
    seen = set(zip(interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist()))
    assert not any(pair in seen for pair in zip(recs["user_id"], recs["item_id"]))
    assert recs["user_id"].nunique() == manifest["summary"]["users"] == len(set(interactions["user_id"].to_pylist()))
    ranks = recs.groupby("user_id")["rank"].apply(list)
    assert all(r == list(range(1, len(r) + 1)) for r in ranks)
    assert (recs.groupby("user_id")["score"].apply(lambda s: (np.diff(s.to_numpy()) <= 1e-6).all())).all()

    similar = read_dataset(s3, "out", "als/", manifest, "similar_items").to_pandas()
    assert not (similar["item_id"] == similar["similar_item_id"]).any()
    factors = read_dataset(s3, "out", "als/", manifest, "user_factors")
    assert factors.num_rows == manifest["summary"]["users"] and factors.schema.field("factors").type.list_size == 16
    id_map = read_dataset(s3, "out", "als/", manifest, "user_ids")
    assert id_map["index"].to_pylist() == list(range(factors.num_rows))
    assert id_map["user_id"].to_pylist() == factors["user_id"].to_pylist()

    metrics = json.loads(s3_bytes(s3, "out", "als/" + manifest["metrics"]))
    assert {"ingest", "matrix", "train", "evaluate", "recommend", "similar_items", "factors"} <= metrics[
        "stages"
    ].keys()
    assert len(metrics["training"]["loss"]) == 6 and metrics["training"]["device"] == "cpu"
    assert metrics["counts"]["rows_read"] == 40_000 and metrics["versions"]["implicit"] == "0.7.3"
    evaluation = metrics["evaluation"]
    assert evaluation["als"]["precision_at_10"] > evaluation["popularity"]["precision_at_10"]
    report = s3_bytes(s3, "out", "als/" + manifest["report"]).decode()
    assert report.count("<svg") >= 3 and "<script" not in report and "https://" not in report


def test_the_returned_metrics_are_the_document_metrics_json_holds(tmp_path, interactions):
    # One document, assembled once: what run_als returns is what was written and what the
    # report was drawn from, stages and total time included (publish's own time is only logged).
    write_shards(interactions, tmp_path / "in", "parquet", objects=2)
    out = tmp_path / "out"
    run = run_als(
        AlsConfig(
            input=str(tmp_path / "in"),
            output=str(out),
            columns=Columns(weight="plays"),
            train=TrainParams(factors=8, iterations=2),
            eval_holdout=0.2,
        )
    )
    written = json.loads((out / run.manifest["metrics"]).read_text())
    assert json.loads(json_bytes(run.metrics)) == written
    assert list(written["stages"]) == [
        "ingest",
        "matrix",
        "split",
        "weighting",
        "train",
        "evaluate",
        "recommend",
        "similar_items",
        "id_maps",
        "factors",
    ]
    assert written["ingest"]["build_seconds"] == written["stages"]["matrix"]


def test_rerun_replaces_the_manifest_only_at_the_end(tmp_path, interactions, monkeypatch):
    write_shards(interactions, tmp_path / "in", "parquet", objects=2)
    out = tmp_path / "out"

    def config(**kwargs):
        return AlsConfig(
            input=str(tmp_path / "in"),
            output=str(out),
            columns=Columns(weight="plays"),
            train=TrainParams(factors=8, iterations=2),
            batch_users=300,
            **kwargs,
        )

    first = run_als(config())
    manifest_bytes = (out / "manifest.json").read_bytes()
    first_files = sorted(p for p in out.rglob("*") if p.is_file())

    writes = []
    original = storage.LocalStore.write

    async def failing_write(self, name, data):
        writes.append(name)
        if len(writes) == 3:
            raise OSError("No space left on device")
        return await original(self, name, data)

    monkeypatch.setattr(storage.LocalStore, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        run_als(config())
    monkeypatch.undo()

    # The failed rerun left the old run current and untouched, and removed its own parts.
    assert (out / "manifest.json").read_bytes() == manifest_bytes
    assert sorted(p for p in out.rglob("*") if p.is_file()) == first_files

    second = run_als(config())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == second.manifest["run_id"] != first.manifest["run_id"]
    assert all(f["path"].startswith(f"runs/{manifest['run_id']}/") for f in manifest["files"])


def test_failure_in_the_middle_of_publishing_leaves_no_manifest(moto_aws, tmp_path, interactions, monkeypatch):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="out")
    write_shards(interactions, tmp_path / "in", "parquet", objects=2)
    calls = []
    original = storage.S3Store.write

    async def flaky(self, name, data):
        calls.append(name)
        if name.endswith("similar_items/part-00000.parquet"):
            raise ConnectionResetError("connection reset by peer")
        return await original(self, name, data)

    monkeypatch.setattr(storage.S3Store, "write", flaky)
    with pytest.raises(ConnectionResetError):
        run_als(
            AlsConfig(
                input=str(tmp_path / "in"),
                output="s3://out/run/",
                endpoint_url=moto_aws.endpoint_url,
                train=TrainParams(factors=8, iterations=2),
                batch_users=500,
            )
        )
    assert any("recommendations/part-00000" in c for c in calls)  # it failed part-way, after some uploads
    assert keys(s3, "out") == []


def _parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


GOOD = pa.table({"user_id": ["a", "b", "c"], "item_id": ["x", "y", "x"], "plays": [1, 2, 3]})


def _bad_inputs(tmp_path: Path, s3) -> dict:
    """name -> (input URI, extra flags, the message the user must see)."""
    s3.create_bucket(Bucket="lake")
    s3.put_object(Bucket="lake", Key="empty/_SUCCESS", Body=b"")
    cases = {
        "missing prefix": (
            "s3://lake/nothing-here/",
            [],
            r"no data objects under s3://lake/nothing-here/; check --input",
        ),
        "prefix with only markers": ("s3://lake/empty/", [], r"no data objects under s3://lake/empty/"),
        "missing bucket": ("s3://no-such-bucket/x/", [], r"bucket 'no-such-bucket' does not exist"),
        "missing local folder": (str(tmp_path / "absent"), [], r"no data objects under .*absent"),
    }
    corrupt = {
        "parquet": b"PAR1 definitely not parquet PAR1",
        "orc": b"ORC\x00\x01garbage",
        "csv": b"user_id,item_id\na,x\nb,y,z,w\n",
    }
    for fmt, body in corrupt.items():
        folder = tmp_path / f"corrupt-{fmt}"
        _parquet(GOOD, folder / "good.parquet")
        (folder / f"bad.{fmt}").write_bytes(body)
        cases[f"corrupt {fmt}"] = (
            str(folder),
            [],
            rf"bad\.{fmt} is not a readable {fmt.upper()} object.*replace or remove it",
        )
    _parquet(GOOD, tmp_path / "good" / "p.parquet")
    cases["missing column"] = (
        str(tmp_path / "good"),
        ["--user-col", "customer"],
        r"column 'customer' not found in .*p\.parquet \(it has: user_id, item_id, plays\); pass the right name with --user-col",
    )
    _parquet(pa.table({"user_id": [1.5, 2.5], "item_id": ["x", "y"]}), tmp_path / "float-ids" / "p.parquet")
    cases["wrong id type"] = (
        str(tmp_path / "float-ids"),
        [],
        r"column 'user_id' in .*p\.parquet has type double, but ids must be strings or integers",
    )
    _parquet(pa.table({"user_id": ["a"], "item_id": ["x"], "plays": [[1]]}), tmp_path / "list-weight" / "p.parquet")
    cases["wrong weight type"] = (
        str(tmp_path / "list-weight"),
        ["--weight-col", "plays"],
        r"column 'plays' .* weights must be numbers",
    )
    _parquet(
        pa.table({"user_id": pa.array([None, None], pa.string()), "item_id": ["x", "y"]}),
        tmp_path / "all-null" / "p.parquet",
    )
    cases["nothing left after filtering"] = (
        str(tmp_path / "all-null"),
        [],
        r"no interactions left after dropping rows",
    )
    _parquet(
        pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "plays": [1.0, -2.0]}),
        tmp_path / "negative" / "p.parquet",
    )
    cases["negative weight"] = (
        str(tmp_path / "negative"),
        ["--weight-col", "plays"],
        r"invalid weight.*-2\.0 at row 1.*--drop-invalid",
    )
    cases["output inside input"] = (
        str(tmp_path / "good"),
        ["--output", str(tmp_path / "good" / "als")],
        r"--output .*good/als is inside --input .*good; write the outputs somewhere else",
    )
    return cases


BAD_CASES = [
    "missing prefix",
    "prefix with only markers",
    "missing bucket",
    "missing local folder",
    "corrupt parquet",
    "corrupt orc",
    "corrupt csv",
    "missing column",
    "wrong id type",
    "wrong weight type",
    "nothing left after filtering",
    "negative weight",
    "output inside input",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gets_one_clear_line_and_no_manifest(moto_aws, tmp_path, capsys, case):
    uri, flags, message = _bad_inputs(tmp_path, moto_aws.client("s3"))[case]
    out = tmp_path / "out"
    code = main(["als", "--input", uri, "--output", str(out), "--endpoint-url", moto_aws.endpoint_url, *SMALL, *flags])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("airflow-gpu-worker: error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() or not any(out.rglob("*"))


def test_access_denied(moto_aws, tmp_path, capsys, monkeypatch):
    from moto import settings

    s3, iam = moto_aws.client("s3"), moto_aws.client("iam")
    s3.create_bucket(Bucket="secret")
    s3.put_object(Bucket="secret", Key="in/p.parquet", Body=b"PAR1")
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks IAM
    code = main(
        [
            "als",
            "--input",
            "s3://secret/in/",
            "--output",
            str(tmp_path / "out"),
            "--endpoint-url",
            moto_aws.endpoint_url,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(
        "airflow-gpu-worker: error: access denied to s3://secret/in/ (AccessDenied); give the job's role"
    )
    assert not (tmp_path / "out").exists()


def test_unknown_format_is_refused_by_the_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["als", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--format", "avro"])
    assert exit_.value.code == 2 and "invalid choice: 'avro'" in capsys.readouterr().err


SCRIPT = """
import os, sys, pathlib
inputs = sorted(p.name for p in pathlib.Path("input").rglob("*") if p.is_file())
out = pathlib.Path(os.environ["OUTPUT_DIR"])
(out / "nested").mkdir()
(out / "summary.txt").write_text(",".join(inputs) + "|" + " ".join(sys.argv[1:]))
(out / "nested" / "data.bin").write_bytes(bytes(range(256)) * 1000)
sys.exit(int(os.environ.get("SCRIPT_EXIT", "0")))
"""


def test_run_script_end_to_end(moto_aws, tmp_path, capsys):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="jobs")
    s3.put_object(Bucket="jobs", Key="code/job.py", Body=SCRIPT.encode())
    for name in ("a.csv", "sub/b.csv"):
        s3.put_object(Bucket="jobs", Key=f"data/{name}", Body=b"x,y\n1,2\n")
    code = main(
        [
            "run-script",
            "--script",
            "s3://jobs/code/job.py",
            "--input",
            "s3://jobs/data/",
            "--output",
            "s3://jobs/result/",
            "--endpoint-url",
            moto_aws.endpoint_url,
            "--",
            "--alpha",
            "3",
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = json.loads(s3_bytes(s3, "jobs", "result/manifest.json"))
    assert manifest["complete"] is True and manifest["command"] == "run-script" and manifest["exit_code"] == 0
    files = {f["path"].split("/output/", 1)[1]: f for f in manifest["files"] if f["kind"] == "output"}
    assert set(files) == {"summary.txt", "nested/data.bin"}
    assert manifest["profile"] == manifest["root"] + "profile.json"  # the job's profile, beside its outputs
    summary = s3_bytes(s3, "jobs", "result/" + files["summary.txt"]["path"]).decode()
    assert summary == "a.csv,b.csv|--alpha 3"
    data = s3_bytes(s3, "jobs", "result/" + files["nested/data.bin"]["path"])
    assert hashlib.sha256(data).hexdigest() == files["nested/data.bin"]["sha256"] and len(data) == 256_000


def test_run_script_exit_code_becomes_the_jobs(tmp_path, monkeypatch):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    monkeypatch.setenv("SCRIPT_EXIT", "3")
    code = main(["run-script", "--script", str(script), "--output", str(tmp_path / "out")])
    assert code == 3
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_run_script_missing_script(moto_aws, tmp_path, capsys):
    moto_aws.client("s3").create_bucket(Bucket="jobs")
    for script in ("s3://jobs/missing.py", str(tmp_path / "missing.py")):
        code = main(
            [
                "run-script",
                "--script",
                script,
                "--output",
                str(tmp_path / "out"),
                "--endpoint-url",
                moto_aws.endpoint_url,
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1] == f"airflow-gpu-worker: error: script {script} not found; check --script " + (
            "(it must name one .py object)" if script.startswith("s3://") else "(a local .py file or an s3:// object)"
        )
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_help_is_clear(capsys):
    with pytest.raises(SystemExit):
        main(["als", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--input",
        "--output",
        "--format",
        "--weight-col",
        "--weighting",
        "--alpha",
        "--device",
        "--eval-holdout",
        "--top-n",
        "--no-factors",
        "--concurrency",
        "--endpoint-url",
        "--drop-invalid",
        "manifest.json",
    ):
        assert flag in text


def test_importing_the_worker_does_not_import_airflow():
    code = (
        "import sys, airflow_gpu.worker.__main__ as m, airflow_gpu.worker.pipeline, airflow_gpu.worker.script, "
        "airflow_gpu.worker.train, airflow_gpu.worker.ingest, airflow_gpu.worker.publish\n"
        "m.build_parser()\n"
        "bad = sorted(k for k in sys.modules if k == 'airflow' or k.startswith('airflow.'))\n"
        "print(bad)\nsys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_dash_m_runs_the_cli(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_gpu.worker",
            "als",
            "--input",
            str(tmp_path / "none"),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("airflow-gpu-worker: error: no data objects under")


SLOW_PUBLISH = """
import asyncio, sys
from airflow_gpu.worker import publish
original = publish.Publisher.put

async def slow_put(self, *args, **kwargs):
    await asyncio.sleep(0.3)  # a slow object store, so the test can stop the job mid-publish
    return await original(self, *args, **kwargs)

publish.Publisher.put = slow_put
from airflow_gpu.worker.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_mid_publish_removes_the_uploads(tmp_path, interactions):
    import signal
    import time

    write_shards(interactions, tmp_path / "in", "parquet", objects=2)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SLOW_PUBLISH,
            "als",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(out),
            "--factors",
            "8",
            "--iterations",
            "2",
            "--batch-users",
            "50",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(out.rglob("part-*.parquet")):
        assert process.poll() is None and time.monotonic() < deadline, "the job ended before it published a part"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "airflow-gpu-worker: stopped by SIGTERM; nothing was published"
    assert not any(p.is_file() for p in out.rglob("*"))
