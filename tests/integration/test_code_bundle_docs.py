"""docs/custom_jobs.md's code-bundle examples, read from the page and run on the local backend with
S3 on the moto server: the operator running ``run-script --code`` on a prefix synced from git, and
``@task.gpu_batch(code=...)`` importing from a folder beside its DAG file. Only where they run changes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_gpu.jobs.local.backend import ENTRYPOINT_ENV, STATE_DIR_ENV
from tests.support.gpu_batch_testing import FakeTaskInstance, fire, make_context
from tests.support.local_jobs_testing import kill_leftover_local_jobs
from tests.support.moto_aws import upload_folder

pytestmark = pytest.mark.timeout(300)

PAGE = Path(__file__).resolve().parents[2] / "docs" / "custom_jobs.md"
SECTION = "## 3. A whole project: code bundles"


def python_blocks() -> list[str]:
    text = PAGE.read_text()
    assert SECTION in text, f"{PAGE.name} has no section {SECTION!r}"
    return re.findall(r"```python\n(.*?)```", text.split(SECTION, 1)[1], re.S)


def recsys_project(root: Path) -> Path:
    """The project the pages describe: a package whose modules import each other."""
    package = root / "recsys"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data.py").write_text("def load(day):\n    return {'day': day, 'rows': 3}\n")
    (package / "features.py").write_text(
        "from recsys.data import load\n\ndef build(day):\n    return {**load(day), 'features': 8}\n"
    )
    (package / "train.py").write_text(
        "import json, os, sys\nfrom recsys.data import load\n"
        "day = sys.argv[sys.argv.index('--day') + 1]\n"
        "json.dump(load(day), open(os.path.join(os.environ['OUTPUT_DIR'], 'trained.json'), 'w'))\n"
    )
    return root


@pytest.fixture
def local_jobs(moto_aws, tmp_path, monkeypatch):
    state = tmp_path / "local-jobs"
    monkeypatch.setenv(STATE_DIR_ENV, str(state))
    monkeypatch.delenv(ENTRYPOINT_ENV, raising=False)  # airflow-gpu-worker, as in the image
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_aws.endpoint_url)
    monkeypatch.setenv("AIRFLOW_GPU_REQUIREMENTS_CACHE", str(tmp_path / "requirements"))
    moto_aws.client("s3").create_bucket(Bucket="lake")
    yield
    kill_leftover_local_jobs(state)


def run_task(task, context):
    task.backend, task.poll_interval = "local", 0.2
    task.render_template_fields(context)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    event = fire(deferred.value.trigger, timeout=240)
    return task.execute_complete(context, event)


def test_the_operator_example_runs_a_module_of_a_synced_prefix(moto_aws, aws_conn, local_jobs, tmp_path):
    [operator_block] = [b for b in python_blocks() if "GpuBatchOperator(" in b]
    upload_folder(moto_aws.client("s3"), recsys_project(tmp_path / "repo"), "lake", "repos/recsys")
    namespace: dict = {}
    exec(compile(operator_block, str(PAGE), "exec"), namespace)
    [train] = namespace["dag"].tasks
    context = {
        **make_context(FakeTaskInstance(dag_id="recsys_training", task_id="train", run_id="manual__1")),
        "ds": "2026-12-01",
    }
    result = run_task(train, context)
    assert result["status"] == "SUCCEEDED", result
    s3 = moto_aws.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix="recsys/manual__1/")["Contents"]]
    [trained] = [k for k in keys if k.endswith("/output/trained.json")]
    assert json.loads(s3.get_object(Bucket="lake", Key=trained)["Body"].read()) == {"day": "2026-12-01", "rows": 3}


def test_the_decorator_example_imports_from_the_folder_beside_its_dag(moto_aws, aws_conn, local_jobs, tmp_path):
    [decorated_block] = [b for b in python_blocks() if "@task.gpu_batch" in b]
    dags = tmp_path / "dags"
    recsys_project(dags / "projects" / "recsys")
    dag_file = dags / "recsys_features.py"
    dag_file.write_text(decorated_block)
    namespace: dict = {"__file__": str(dag_file)}
    exec(compile(decorated_block, str(dag_file), "exec"), namespace)
    [features] = namespace["dag"].tasks
    context = make_context(FakeTaskInstance(dag_id="recsys_features", task_id="features", run_id="manual__1"))
    assert run_task(features, context) == {"day": "2026-12-01", "rows": 3, "features": 8}
    staged = [
        o["Key"]
        for o in moto_aws.client("s3").list_objects_v2(Bucket="lake", Prefix="airflow-gpu-staging/code/")["Contents"]
    ]
    assert len(staged) == 1 and staged[0].endswith(".tar.gz")
