"""Every shell and Python example in README.md and docs/*.md, run as it is written.

Shell examples run in bash (-e) in a scratch folder, on the local backend (AIRFLOW_GPU_BACKEND=local),
with a stand-in ``train.py`` there and AWS pointed at a moto server. Python examples run in a fresh
interpreter with the imports a DAG file would have (a fragment such as ``GpuBatchOperator(...)``
needs them): a DAG example is thereby parsed, with the operator's parse-time checks. An example
the doc marks ``<!-- docs-example: skip (why) -->`` is skipped by name; the test prints how many
ran and how many were skipped, and why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards
from tests.support.doc_examples import all_examples
from tests.support.local_jobs_testing import kill_leftover_local_jobs
from tests.support.moto_aws import upload_folder

pytestmark = pytest.mark.timeout(600)

PREAMBLE = """\
from datetime import datetime, timedelta
from airflow.sdk import DAG, task
from airflow_gpu.operators import GpuBatchOperator
"""
STAND_IN_TRAIN = """\
import sys
epochs = int(sys.argv[sys.argv.index("--epochs") + 1]) if "--epochs" in sys.argv else 1
for epoch in range(epochs):
    print(f"epoch {epoch} loss 0.5", flush=True)
"""


def _env(tmp: Path, moto_aws) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        HOME=str(tmp),
        AIRFLOW_HOME=str(tmp / "airflow"),
        AIRFLOW_GPU_BACKEND="local",
        AIRFLOW_GPU_LOCAL_JOBS_DIR=str(tmp / "jobs"),
        AWS_ENDPOINT_URL=moto_aws.endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=moto_aws.region,
    )
    return env


def _the_docs_data(moto_aws, tmp_path: Path) -> Path:
    """What the examples read: s3://lake/ (interactions, a script, data) on the moto server, and a
    local export to copy beside each example as ./interactions/."""
    table = synthetic_interactions(20_000, n_users=800, n_items=200, seed=5)  # user_id, item_id, plays
    export = tmp_path / "export"
    write_shards(table, export, "parquet", objects=2)
    s3 = moto_aws.client("s3")
    upload_folder(s3, export, "lake", "interactions")
    s3.put_object(Bucket="lake", Key="jobs/train.py", Body=STAND_IN_TRAIN.encode())
    s3.put_object(Bucket="lake", Key="data/rows.csv", Body=b"a,b\n1,2\n")
    return export


def test_every_doc_example_runs_or_says_why_not(moto_aws, tmp_path, capsys):
    export = _the_docs_data(moto_aws, tmp_path)
    ran, skipped, failed = [], [], []
    for number, example in enumerate(all_examples()):
        if example.skip:
            skipped.append(f"{example.name} ({example.skip})")
            continue
        scratch = tmp_path / f"example-{number}"
        scratch.mkdir()
        (scratch / "train.py").write_text(STAND_IN_TRAIN)
        shutil.copytree(export, scratch / "interactions")
        (scratch / "data").mkdir()
        (scratch / "data" / "rows.csv").write_text("a,b\n1,2\n")
        env = _env(scratch, moto_aws)
        if example.language == "shell":
            argv = ["bash", "-e", "-o", "pipefail", "-c", example.code]
        else:
            argv = [sys.executable, "-c", PREAMBLE + example.code]
        try:
            done = subprocess.run(argv, cwd=scratch, env=env, capture_output=True, text=True, timeout=240)
        finally:
            kill_leftover_local_jobs(scratch / "jobs")
        if done.returncode != 0 or "Traceback" in done.stderr:
            failed.append(f"{example.name}: exit {done.returncode}\n{(done.stdout + done.stderr)[-1500:]}")
        else:
            ran.append(example.name)
    with capsys.disabled():
        print(f"\ndoc examples: {len(ran)} ran, {len(skipped)} skipped, {len(failed)} failed")
        for line in skipped:
            print(f"  skipped {line}")
    assert not failed, "\n\n".join(failed)
    assert ran  # the harness found and ran examples
