"""``@task.gpu_batch`` under dag.test(), in a fresh process: deferred, resumed, the function's value
in XCom (multiple_outputs unrolled) and passed on downstream; on the local backend, and on moto's
Batch with the test playing the container."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.airflow_e2e import seed_airflow_home
from tests.support.container_testing import play_container
from tests.support.gpu_batch_testing import SECRET_KEY
from tests.support.local_jobs_testing import kill_leftover_local_jobs

SUPPORT = Path(__file__).resolve().parents[1] / "support"
pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    return seed_airflow_home(tmp_path_factory.mktemp("decorated-airflow-home"))


def run_driver(home: Path, env: dict[str, str], *args: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, str(SUPPORT / "decorated_dag_driver.py"), str(home), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=360,
    )
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-6000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :]), logs


def clean_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(more)
    return env


def check_result(result: dict) -> None:
    assert result["state"] == "success", result
    assert result["tasks"] == {"sizes": "success", "squares": "success", "report": "success"}
    assert result["resumed"] == ["SUCCEEDED"]  # deferred, then resumed once by the trigger's event
    xcoms = result["xcoms"]
    assert xcoms["squares.total"] == 25 and xcoms["squares.label"] == "dag-test"  # unrolled: multiple_outputs
    assert xcoms["report.return_value"] == "total=25"
    assert "squares.gpu_batch_job_id" in xcoms


def test_decorated_task_on_the_local_backend(airflow_home, tmp_path):
    jobs = tmp_path / "jobs"
    try:
        result, logs = run_driver(
            airflow_home,
            clean_env(AIRFLOW_GPU_LOCAL_JOBS_DIR=str(jobs)),
            "local",
            "local",
            "local",
            str(tmp_path / "staging"),
        )
    finally:
        kill_leftover_local_jobs(jobs)
    check_result(result)
    [log] = jobs.glob("*/output.log")  # the function ran in the local job's process
    assert "squaring [3, 4]" in log.read_text()
    assert list((tmp_path / "staging" / "functions").glob("*/function.json"))


def test_decorated_task_on_moto_batch(airflow_home, moto_aws, gpu_batch):
    moto_aws.client("s3").create_bucket(Bucket="staging")
    moto_aws.batch.hold("RUNNABLE")
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": SECRET_KEY,
        "extra": {"endpoint_url": moto_aws.endpoint_url, "region_name": moto_aws.region},
    }
    codes: list[int] = []

    def play():
        [job_id] = moto_aws.batch.wait_for_jobs(1, timeout=300)
        codes.append(play_container(moto_aws, job_id, moto_aws.log.submitted[-1]["containerOverrides"]["command"]))

    player = threading.Thread(target=play, daemon=True)
    player.start()
    result, logs = run_driver(
        airflow_home,
        clean_env(AIRFLOW_CONN_AWS_DEFAULT=json.dumps(conn)),
        "aws_batch",
        gpu_batch["job_queue"],
        gpu_batch["job_definition"],
        "s3://staging/fn/",
    )
    player.join(30)
    assert codes == [0]
    check_result(result)
    assert SECRET_KEY not in json.dumps(result)
