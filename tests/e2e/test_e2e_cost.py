"""A GPU job run through a real Airflow on moto ends with its bill as the task log's last line for the
job, and in the task's XCom: the instance type from ECS, its market from the compute environment."""

from __future__ import annotations

import pytest

from tests.support.airflow_e2e import Airflow, running_airflow, wait_for
from tests.support.moto_aws import MotoAws

pytestmark = [pytest.mark.timeout(900), pytest.mark.airflow_behaviour]

DAG_ID = "e2e_gpu_cost"
DAG_FILE = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_gpu.operators import GpuBatchOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    GpuBatchOperator(task_id="train", job_queue={queue!r}, job_definition={definition!r}, command=["als"],
                     gpus=1, poll_interval=1.0, aws_conn_id="aws_default", retries=0)
"""


@pytest.fixture
def airflow(tmp_path, moto_aws: MotoAws, gpu_batch) -> Airflow:
    from airflow_gpu.jobs.aws.usage import forget_cached_placements

    forget_cached_placements()
    dag_file = DAG_FILE.format(dag_id=DAG_ID, queue=gpu_batch["job_queue"], definition=gpu_batch["job_definition"])
    with running_airflow(tmp_path, moto_aws, {"e2e_cost.py": dag_file}, (DAG_ID,)) as instance:
        yield instance


def test_a_job_ends_with_its_cost_line_in_the_task_log_and_the_xcom(airflow: Airflow, moto_aws: MotoAws, gpu_batch):
    batch = moto_aws.batch
    batch.hold("RUNNING")
    instance = moto_aws.register_container_instance(gpu_batch["compute_environment"], "g5.xlarge")
    run_id = airflow.trigger(DAG_ID)
    wait_for(
        "the task to defer",
        lambda: airflow.states(DAG_ID, run_id).get(-1) == "deferred",
        timeout=420,  # a hang guard: beside a CPU burner a resume took over 240 s
        interval=1,
        alive=airflow.check_alive,
    )
    airflow.wait_deferrals_recorded(DAG_ID, run_id)  # before the job ends: see Airflow.deferrals_recorded
    [job_id] = [j for j, job in batch.jobs().items() if job.status == "RUNNING"]
    batch.place(job_id, instance)
    batch.set_status(job_id, "SUCCEEDED")
    batch.backdate(job_id, queued_s=120, ran_s=151)
    wait_for(
        "the task to succeed",
        lambda: airflow.states(DAG_ID, run_id).get(-1) == "success",
        timeout=420,  # a hang guard: beside a CPU burner a resume took over 240 s
        interval=1,
        alive=airflow.check_alive,
    )

    cost = airflow.xcom(DAG_ID, run_id, -1)["cost"]
    assert cost["instance_type"] == "g5.xlarge" and cost["market"] == "on-demand"
    assert cost["run_s"] == pytest.approx(151, abs=0.01) and cost["cost_usd"] == pytest.approx(
        151 / 3600 * 1.006, abs=1e-4
    )

    logs = [
        p.read_text(errors="replace")
        for p in (airflow.home / "logs").rglob("attempt=*.log")
        if f"dag_id={DAG_ID}" in str(p)
    ]
    text = "\n".join(logs)
    expected = f"Job {job_id} SUCCEEDED: wall 4 min 31 s (queued 2 min 0 s, ran 2 min 31 s) on g5.xlarge (on-demand)"
    assert expected in text, text[-3000:]
    mentions = [line for line in text.splitlines() if job_id in line]
    assert expected in mentions[-1]  # the last line about the job
    print(next(line for line in text.splitlines() if expected in line))
