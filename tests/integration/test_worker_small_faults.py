"""Smaller faults: empty objects, temporary folders, signal exit codes, secrets in manifests, old runs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_gpu.worker.__main__ import main


def _err(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_the_only_object_being_empty_is_named(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part-0.parquet").write_bytes(b"")
    code = main(["als", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    err = _err(capsys)
    assert code == 2 and "part-0.parquet is empty (0 bytes), the only object under" in err
    assert "null ids" not in err


def test_an_empty_object_among_others_is_logged(tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a-empty.parquet").write_bytes(b"")
    users = [f"u{i % 9}" for i in range(60)]
    pq.write_table(pa.table({"user_id": users, "item_id": [f"i{i % 7}" for i in range(60)]}), folder / "b.parquet")
    caplog.set_level(logging.WARNING, logger="airflow_gpu.worker")
    code = main(
        [
            "als",
            "--input",
            str(folder),
            "--output",
            str(tmp_path / "out"),
            "--factors",
            "2",
            "--iterations",
            "1",
            "--threads",
            "1",
            "--similar-n",
            "0",
        ]
    )
    assert code == 0
    assert any("a-empty.parquet is empty (0 bytes); skipped" in r.getMessage() for r in caplog.records)


def _temp_folders() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("airflow-gpu-script-")}


FAILING = "import sys; open('output/x', 'w').write('x'); sys.exit(3)\n"


def test_a_failed_script_leaves_no_temporary_folder_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    tempfile.tempdir = None  # let tempfile see TMPDIR
    try:
        script = tmp_path / "job.py"
        script.write_text(FAILING)
        assert main(["run-script", "--script", str(script), "--output", str(tmp_path / "out")]) == 3
        assert _temp_folders() == set()
        assert main(["run-script", "--script", str(script), "--output", str(tmp_path / "out"), "--keep-workdir"]) == 3
        (kept,) = _temp_folders()
        assert (tmp_path / "tmp" / kept / "output" / "x").read_text() == "x"
        # A failure before the script runs (a missing input) cleans up too.
        assert (
            main(
                [
                    "run-script",
                    "--script",
                    str(script),
                    "--input",
                    str(tmp_path / "none"),
                    "--output",
                    str(tmp_path / "o"),
                ]
            )
            == 2
        )
        assert _temp_folders() == {kept}
    finally:
        tempfile.tempdir = None


def test_a_script_killed_by_sigkill_exits_137(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n")
    assert main(["run-script", "--script", str(script), "--output", str(tmp_path / "out")]) == 137
    script.write_text(
        "import os, signal; signal.signal(signal.SIGTERM, signal.SIG_DFL); os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    assert main(["run-script", "--script", str(script), "--output", str(tmp_path / "out")]) == 143
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_secret_looking_flags_are_redacted_in_the_manifest(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("print('ok')\n")
    args = ["--alpha", "3", "--api-key", "AKIA-SECRET-1", "--token=SECRET-2", "--db-password", "SECRET-3", "plain"]
    assert main(["run-script", "--script", str(script), "--output", str(tmp_path / "out"), "--", *args]) == 0
    text = (tmp_path / "out" / "manifest.json").read_text()
    assert "SECRET" not in text
    recorded = json.loads(text)["params"]["args"]
    assert recorded == ["--alpha", "3", "--api-key", "***", "--token=***", "--db-password", "***", "plain"]
    from airflow_gpu.worker.script import redacted_args

    assert redacted_args(["--monkey", "m", "--keep", "x"]) == ["--monkey", "m", "--keep", "x"]


def _runs(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "runs").iterdir()) if (out / "runs").exists() else []


def test_keep_runs_deletes_only_committed_runs_older_than_the_newest_n(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import os; open(os.path.join(os.environ['OUTPUT_DIR'], 'r.txt'), 'w').write('r')\n")
    out = tmp_path / "out"
    # A run that never committed (crashed mid-upload) sits among them: never touched.
    (out / "runs" / "00000000T000000Z-crashed" / "output").mkdir(parents=True)
    (out / "runs" / "00000000T000000Z-crashed" / "output" / "half.txt").write_text("half")
    from airflow_gpu.worker.script import run_script_async

    ids = []
    for i in range(4):
        run_id = f"2026120{i}T000000Z-run{i}"
        assert asyncio.run(run_script_async(str(script), None, str(out), run_id=run_id, keep_runs=2)) == 0
        ids.append(run_id)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["run_id"] == run_id  # the newest run is the committed one
    assert _runs(out) == ["00000000T000000Z-crashed", ids[2], ids[3]]
    assert (out / "runs" / ids[3] / "output" / "r.txt").read_text() == "r"
    # 0 keeps all.
    assert main(["run-script", "--script", str(script), "--output", str(out), "--keep-runs", "0"]) == 0
    assert len(_runs(out)) == 4


def test_keep_runs_on_s3_prunes_after_the_commit(moto_aws, tmp_path):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="jobs")
    s3.put_object(
        Bucket="jobs",
        Key="code/job.py",
        Body=b"import os; open(os.path.join(os.environ['OUTPUT_DIR'], 'r.txt'), 'w').write('r')\n",
    )
    for _ in range(3):
        assert (
            main(
                [
                    "run-script",
                    "--script",
                    "s3://jobs/code/job.py",
                    "--output",
                    "s3://jobs/out/",
                    "--keep-runs",
                    "1",
                    "--endpoint-url",
                    moto_aws.endpoint_url,
                ]
            )
            == 0
        )
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="jobs", Prefix="out/")["Contents"])
    manifest = json.loads(s3.get_object(Bucket="jobs", Key="out/manifest.json")["Body"].read())
    root = "out/" + manifest["root"]
    assert keys == sorted(["out/manifest.json", root + "_COMMITTED", root + "output/r.txt", root + "profile.json"])
