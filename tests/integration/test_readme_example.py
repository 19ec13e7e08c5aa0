"""The README's operator example, read from README.md and run on the local backend.

The block is taken from the README itself, so the test fails when the README drifts from what
runs: the same command (the argv of the image's entrypoint) must work as a local process.
Only where it runs changes: backend="local", a short poll, and S3 on the moto server.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards
from airflow_gpu.jobs.local.backend import ENTRYPOINT_ENV, STATE_DIR_ENV
from tests.support.gpu_batch_testing import FakeTaskInstance, fire, make_context
from tests.support.local_jobs_testing import kill_leftover_local_jobs
from tests.support.moto_aws import upload_folder

pytestmark = pytest.mark.timeout(300)

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Using the operator in your own DAG"


def readme_operator_example() -> str:
    text = README.read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    block = re.search(r"```python\n(.*?)```", text.split(SECTION, 1)[1], re.S)
    assert block, f"no python block under {SECTION!r}"
    return block.group(1)


def operator_call(source: str) -> ast.Call:
    calls = [
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "GpuBatchOperator"
    ]
    assert len(calls) == 1, "the README's example should build one GpuBatchOperator"
    return calls[0]


def test_the_readmes_command_is_the_entrypoints_argv():
    call = operator_call(readme_operator_example())
    command = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "command"))
    assert command[0] == "als", f"command must be the entrypoint's argv (as on AWS Batch), got {command[:2]}"


def test_the_readmes_example_runs_on_the_local_backend(moto_aws, aws_conn, tmp_path, monkeypatch):  # noqa: F811
    state_dir = tmp_path / "local-jobs"
    monkeypatch.setenv(STATE_DIR_ENV, str(state_dir))
    monkeypatch.delenv(ENTRYPOINT_ENV, raising=False)  # the default: airflow-gpu-worker, as in the image
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_aws.endpoint_url)  # the job's S3 is the moto server
    table = synthetic_interactions(20_000, n_users=800, n_items=200, seed=5)  # user_id, item_id, plays
    write_shards(table, tmp_path / "export", "parquet", objects=2)
    upload_folder(moto_aws.client("s3"), tmp_path / "export", "lake", "interactions")

    namespace: dict = {}
    exec(compile(readme_operator_example(), str(README), "exec"), namespace)
    [train] = [t for t in namespace["dag"].tasks if t.task_id == "train_on_gpu"]
    train.backend, train.poll_interval = "local", 0.2

    ti = FakeTaskInstance(dag_id="recommendations", task_id="train_on_gpu", run_id="manual__2026-11-28")
    context = make_context(ti)
    try:
        train.render_template_fields(context)
        with pytest.raises(TaskDeferred) as deferred:
            train.execute(context)
        event = fire(deferred.value.trigger, timeout=240)
        result = train.execute_complete(context, event)
    finally:
        kill_leftover_local_jobs(state_dir)
    assert result["status"] == "SUCCEEDED", result
    assert result["manifest"]["manifest_uri"] == "s3://lake/recommendations/manual__2026-11-28/manifest.json"
