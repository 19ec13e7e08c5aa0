"""End to end through a real Airflow: ``@task.gpu_batch`` tasks deferred, resumed, and their values in XCom.

An upstream task's list goes, as an XCom, into two decorated functions:

* ``squares`` (``multiple_outputs``, a templated argument) is staged to moto's S3, submitted to moto's
  Batch, DEFERRED while its job waits and runs, and resumed on a worker when the job ends: each key of
  its dict is an XCom, one of them goes on to a downstream task, and its print reached the task log
  through the trigger's live log;
* ``explode`` raises inside the job: its task fails with the remote exception and traceback in its log.

The test plays the GPU container (tests/support/container_testing.py): it runs each job's command with
``airflow-gpu-worker`` against the moto server and ends the job with the command's exit code.
Airflow runs as `airflow standalone` (tests/e2e/test_e2e_airflow.py's running_airflow), stopped whatever happens.
"""

from __future__ import annotations

import json

import pytest

from tests.support.airflow_e2e import Airflow, running_airflow, wait_for
from tests.support.container_testing import play_container
from tests.support.moto_aws import MotoAws

pytestmark = [pytest.mark.timeout(600), pytest.mark.airflow_behaviour]

DAG_ID = "e2e_decorated"
POLL = 1.0
STAGING = "s3://staging/airflow-gpu/"

# Placeholders rather than str.format: the DAG has its own braces (a template, f-strings).
DAG_FILE = """
from datetime import datetime

from airflow.sdk import DAG, task

GPU = dict(job_queue="@QUEUE@", job_definition="@DEFINITION@", aws_conn_id="aws_default", staging_prefix="@STAGING@",
           poll_interval=@POLL@, retries=0, vcpus=2, memory_mib=2048)

with DAG("@DAG_ID@", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    @task
    def sizes() -> list[int]:
        return [3, 4]

    @task.gpu_batch(multiple_outputs=True, **GPU)
    def squares(ns: list[int], label: str) -> dict:
        import platform

        print("squaring", ns, flush=True)
        return {"total": sum(n * n for n in ns), "label": label, "python": platform.python_version()}

    @task.gpu_batch(**GPU)
    def explode(ns: list[int]) -> int:
        raise ValueError(f"cannot take {len(ns)} sizes")

    @task
    def report(total: int) -> str:
        return f"total={total}"

    ns = sizes()
    report(squares(ns, label="{{ run_id }}")["total"])
    explode(ns)
"""


def dag_file(gpu_batch: dict) -> str:
    text = DAG_FILE
    for key, value in {
        "@QUEUE@": gpu_batch["job_queue"],
        "@DEFINITION@": gpu_batch["job_definition"],
        "@STAGING@": STAGING,
        "@POLL@": str(POLL),
        "@DAG_ID@": DAG_ID,
    }.items():
        text = text.replace(key, value)
    return text


@pytest.fixture
def airflow(tmp_path, moto_aws: MotoAws, gpu_batch) -> Airflow:
    moto_aws.client("s3").create_bucket(Bucket="staging")
    with running_airflow(tmp_path, moto_aws, {"e2e_decorated.py": dag_file(gpu_batch)}, (DAG_ID,)) as instance:
        yield instance


def tasks(airflow: Airflow, run_id: str) -> dict[str, dict]:
    reply = airflow.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
    return {ti["task_id"]: ti for ti in reply["task_instances"]}


def xcom(airflow: Airflow, run_id: str, task_id: str, key: str = "return_value"):
    path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}?deserialize=true"
    return airflow.call("GET", path)["value"]


def task_log(airflow: Airflow, run_id: str, task_id: str) -> str:
    """The text of the task's log files (the worker's tries and the trigger's part), read from
    AIRFLOW_HOME: every string in their JSON records (messages, error details), one per line."""
    folder = airflow.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
    texts: list[str] = []

    def strings(value) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                strings(item)
        elif isinstance(value, list):
            for item in value:
                strings(item)

    for path in sorted(folder.glob("attempt=*.log*")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                strings(json.loads(line))
            except ValueError:
                texts.append(line)
    return "\n".join(texts)


def test_decorated_tasks_defer_resume_and_return_through_a_real_scheduler_and_triggerer(
    airflow: Airflow, moto_aws: MotoAws
):
    batch = moto_aws.batch
    batch.hold("RUNNABLE")  # the GPU jobs wait for capacity until the test plays their container
    run_id = airflow.trigger(DAG_ID)

    def both_deferred() -> bool:
        states = {task: ti["state"] for task, ti in tasks(airflow, run_id).items()}
        return states.get("squares") == "deferred" and states.get("explode") == "deferred"

    wait_for("both decorated tasks to be deferred", both_deferred, timeout=240, interval=1, alive=airflow.check_alive)
    airflow.wait_deferrals_recorded(DAG_ID, run_id)  # before a job ends: see Airflow.deferrals_recorded
    assert moto_aws.log.calls["submitjob"] == 2
    job_of = {task: xcom(airflow, run_id, task, key="gpu_batch_job_id") for task in ("squares", "explode")}
    command_of = {entry["jobName"]: entry["containerOverrides"]["command"] for entry in moto_aws.log.submitted}
    commands = {task: command_of[batch.job(job_id).job_name] for task, job_id in job_of.items()}
    for command in commands.values():
        assert command[:2] == ["run-function", "--payload"] and command[2].startswith(STAGING + "functions/")

    # squares: its print reaches the task log while the job is still RUNNING (the live log), then it ends.
    def relayed_while_running() -> None:
        wait_for(
            "the job's print in the task log while it runs",
            lambda: "squaring [3, 4]" in task_log(airflow, run_id, "squares"),
            timeout=60,
            interval=1,
            alive=airflow.check_alive,
        )
        assert tasks(airflow, run_id)["squares"]["state"] == "deferred"

    squares_job = job_of["squares"]
    assert play_container(moto_aws, squares_job, commands["squares"], before_end=relayed_while_running) == 0

    assert play_container(moto_aws, job_of["explode"], commands["explode"]) == 1  # the function raises

    def finished() -> str | None:
        state = airflow.run_state(DAG_ID, run_id)
        return state if state in ("success", "failed") else None

    assert wait_for("the DAG run to finish", finished, timeout=240, interval=1, alive=airflow.check_alive) == "failed"
    final = tasks(airflow, run_id)
    assert {task: ti["state"] for task, ti in final.items()} == {
        "sizes": "success",
        "squares": "success",
        "report": "success",
        "explode": "failed",
    }
    assert final["squares"]["try_number"] == 1  # resumed from its deferral, not retried

    # The function's dict, key by key (multiple_outputs), with its templated argument rendered on the worker.
    assert xcom(airflow, run_id, "squares", "total") == 25
    assert xcom(airflow, run_id, "squares", "label") == run_id
    assert xcom(airflow, run_id, "report") == "total=25"
    log = task_log(airflow, run_id, "squares")
    assert f"Job {squares_job} SUCCEEDED; squares() returned" in log  # written by the resumed execute_complete

    log = task_log(airflow, run_id, "explode")
    assert "The GPU function raised: ValueError: cannot take 2 sizes" in log
    assert "Remote traceback:" in log and 'raise ValueError(f"cannot take {len(ns)} sizes")' in log
    assert moto_aws.log.calls["submitjob"] == 2 and moto_aws.log.terminated == []
