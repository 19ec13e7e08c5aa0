"""A job's bill on the moto server: DescribeJobs -> ECS container instance -> EC2 instance type,
Spot or on-demand from the compute environment, priced into the task log's last line and the XCom."""

from __future__ import annotations

import pytest
import structlog
from airflow.sdk.exceptions import TaskDeferred

from airflow_gpu.exceptions import GpuJobFailed
from airflow_gpu.jobs.aws.backend import AwsBatchBackend
from airflow_gpu.jobs.aws.usage import forget_cached_placements
from airflow_gpu.jobs.backend import BackendTarget
from airflow_gpu.jobs.blocking import run_blocking
from airflow_gpu.operators import GpuBatchOperator
from tests.support.gpu_batch_testing import (
    FakeTaskInstance,
    fire,
    make_context,
)

pytestmark = pytest.mark.airflow_behaviour


@pytest.fixture(autouse=True)
def _fresh_placements():
    forget_cached_placements()  # moto reuses cluster ARNs across tests
    yield
    forget_cached_placements()


def _operator(gpu_batch, task_id: str = "train", **kwargs) -> GpuBatchOperator:
    return GpuBatchOperator(
        task_id=task_id,
        job_queue=gpu_batch["job_queue"],
        job_definition=gpu_batch["job_definition"],
        command=["als"],
        gpus=1,
        poll_interval=0.1,
        deferrable=True,
        **kwargs,
    )


def _run_to_end(moto_aws, op, context, *, instance: str | None, status: str = "SUCCEEDED", queued_s=120.0, ran_s=151.0):
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    job_id = deferred.value.trigger.job_id
    if instance:
        moto_aws.batch.place(job_id, instance)
    moto_aws.batch.set_status(job_id, status)
    moto_aws.batch.backdate(job_id, queued_s=queued_s, ran_s=ran_s)
    return job_id, fire(deferred.value.trigger)


def test_a_job_on_an_on_demand_g5_ends_with_its_cost_line_in_the_task_log_and_the_xcom(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    instance = moto_aws.register_container_instance(gpu_batch["compute_environment"], "g5.xlarge")
    op, context = _operator(gpu_batch), make_context()
    job_id, event = _run_to_end(moto_aws, op, context, instance=instance)
    with structlog.testing.capture_logs() as records:
        result = op.execute_complete(context, event)
    cost = result["cost"]
    assert cost["instance_type"] == "g5.xlarge" and cost["market"] == "on-demand"
    assert cost["run_s"] == pytest.approx(151, abs=0.01) and cost["queue_s"] == pytest.approx(120, abs=0.01)
    assert cost["wall_s"] == pytest.approx(271, abs=0.01)
    assert cost["share_of_instance"] == 1.0
    assert cost["gpu_hours"] == pytest.approx(151 / 3600, abs=1e-4)
    assert cost["cost_usd"] == pytest.approx(151 / 3600 * 1.006, abs=1e-4)
    last = [r["event"] for r in records if job_id in r["event"]][-1]
    assert last.startswith(
        f"Job {job_id} SUCCEEDED: wall 4 min 31 s (queued 2 min 0 s, ran 2 min 31 s) on g5.xlarge (on-demand)"
    )
    assert "~$0.04" in last and "1/1 of the instance" in last
    print(last)


def test_a_spot_compute_environment_bills_at_the_spot_share(moto_aws, aws_conn):
    spot = moto_aws.create_gpu_batch_environment("spotgpu", compute_type="SPOT")
    moto_aws.batch.hold("RUNNING")
    instance = moto_aws.register_container_instance(spot["compute_environment"], "g6.xlarge")
    op, context = _operator(spot), make_context()
    _, event = _run_to_end(moto_aws, op, context, instance=instance, ran_s=3600)
    cost = op.execute_complete(context, event)["cost"]
    assert cost["market"] == "spot" and cost["instance_type"] == "g6.xlarge"
    assert cost["cost_usd"] == pytest.approx(0.8048 * 0.4, abs=1e-4)
    assert "spot at 40% of on-demand" in cost["cost_basis"]


def test_an_unpriced_instance_type_says_cost_unknown(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    instance = moto_aws.register_container_instance(gpu_batch["compute_environment"], "g5.2xlarge")
    op, context = _operator(gpu_batch), make_context()
    job_id, event = _run_to_end(moto_aws, op, context, instance=instance)
    with structlog.testing.capture_logs() as records:
        cost = op.execute_complete(context, event)["cost"]
    assert cost["instance_type"] == "g5.2xlarge" and cost["cost_usd"] is None
    assert "no price for g5.2xlarge" in cost["cost_basis"]
    assert any("cost unknown" in r["event"] and job_id in r["event"] for r in records)


def test_a_failed_job_still_logs_its_bill_before_the_error(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    instance = moto_aws.register_container_instance(gpu_batch["compute_environment"], "g5.xlarge")
    op, context = _operator(gpu_batch, task_id="score"), make_context(FakeTaskInstance(task_id="score"))
    job_id, event = _run_to_end(moto_aws, op, context, instance=instance, status="FAILED")
    with structlog.testing.capture_logs() as records, pytest.raises(GpuJobFailed):
        op.execute_complete(context, event)
    assert any(r["event"].startswith(f"Job {job_id} FAILED: wall") and "g5.xlarge" in r["event"] for r in records)


def test_instance_types_are_asked_once_per_cluster_and_then_cached(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    first = moto_aws.register_container_instance(gpu_batch["compute_environment"], "g5.xlarge")
    second = moto_aws.register_container_instance(gpu_batch["compute_environment"], "g6e.xlarge")
    ids = []
    for n, instance in enumerate((first, second, first)):
        op, context = _operator(gpu_batch, task_id=f"t{n}"), make_context(FakeTaskInstance(task_id=f"t{n}"))
        job_id, _ = _run_to_end(moto_aws, op, context, instance=instance)
        ids.append(job_id)
    moto_aws.log.reset()

    async def usage():
        backend = await AwsBatchBackend.open(BackendTarget(conn_id="aws_default"))
        try:
            return await backend.usage(ids), await backend.usage(ids)
        finally:
            await backend.aclose()

    first_round, second_round = run_blocking(usage)
    assert [u.instance_type for u in first_round] == ["g5.xlarge", "g6e.xlarge", "g5.xlarge"]
    assert second_round == first_round
    assert moto_aws.log.aws_calls["ecs:describecontainerinstances"] == 1  # one cluster, one call; then the cache


def test_the_asset_event_carries_the_bill_beside_the_manifest_summary(moto_aws, gpu_batch, aws_conn):
    from airflow.sdk import Asset

    class OutletEvents(dict):  # Airflow's context["outlet_events"]: an accessor per asset, made on first use
        def __missing__(self, asset):
            self[asset] = type("Accessor", (), {"extra": {}})()
            return self[asset]

    moto_aws.batch.hold("RUNNING")
    instance = moto_aws.register_container_instance(gpu_batch["compute_environment"], "p5.48xlarge")
    asset = Asset("s3://lake/recommendations/")
    op = _operator(gpu_batch, output_uri="s3://lake/recommendations/", outlets=[asset])
    context = make_context()
    _, event = _run_to_end(moto_aws, op, context, instance=instance, ran_s=3600)
    summary = {
        "run_id": "w-1",
        "output_uri": "s3://lake/recommendations/",
        "manifest_uri": "s3://lake/recommendations/manifest.json",
        "summary": {"users": 3, "items": 2, "interactions": 5, "recommendations": 6},
    }
    context["outlet_events"] = OutletEvents()
    op.execute_complete(context, {**event, "manifest": summary})  # as the trigger read it
    extra = context["outlet_events"][asset].extra
    assert extra["run_id"] == "w-1"
    assert extra["cost"]["instance_type"] == "p5.48xlarge" and extra["cost"]["share_of_instance"] == 0.125
    assert extra["cost"]["cost_usd"] == pytest.approx(55.04 / 8, abs=1e-3)


async def test_a_task_ending_on_the_triggerer_logs_and_returns_the_same_bill(moto_aws, gpu_batch, aws_conn):
    from airflow_gpu.jobs.billing import job_bill_async
    from airflow_gpu.jobs.watcher import JobWatcher
    from tests.support.gpu_batch_testing import LineLog

    moto_aws.batch.hold("RUNNING")
    instance = moto_aws.register_container_instance(gpu_batch["compute_environment"], "g6.xlarge")
    job_id = moto_aws.client("batch").submit_job(
        jobName="t", jobQueue=gpu_batch["job_queue"], jobDefinition=gpu_batch["job_definition"]
    )["jobId"]
    moto_aws.batch.place(job_id, instance)
    moto_aws.batch.set_status(job_id, "SUCCEEDED")
    moto_aws.batch.backdate(job_id, queued_s=5, ran_s=3600)
    log = LineLog()
    async with JobWatcher.shared(BackendTarget(conn_id="aws_default")).backend() as backend:
        [state] = await backend.describe([job_id])
        cost = await job_bill_async(backend, state, log)
    await JobWatcher.close_all()
    assert cost["instance_type"] == "g6.xlarge" and cost["cost_usd"] == pytest.approx(0.8048, abs=1e-4)
    assert log.records[-1].startswith(f"Job {job_id} SUCCEEDED: wall 1 h 0 min") and "~$0.80" in log.records[-1]


def test_a_retry_that_reuses_a_succeeded_job_logs_the_same_bill_marked_reused_and_the_week_counts_it_once(
    moto_aws, gpu_batch, aws_conn
):
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    moto_aws.batch.hold("RUNNING")
    instance = moto_aws.register_container_instance(gpu_batch["compute_environment"], "g5.xlarge")
    op, context = _operator(gpu_batch), make_context()
    job_id, event = _run_to_end(moto_aws, op, context, instance=instance, ran_s=3600)
    fresh = op.execute_complete(context, event)["cost"]

    retry = FakeTaskInstance()
    retry.try_number = 2  # the next try of the same task instance (its worker died after the job ended)
    with structlog.testing.capture_logs() as records:
        result = _operator(gpu_batch).execute(make_context(retry))  # no TaskDeferred: the job is reused at once
    assert result["job_id"] == job_id and moto_aws.log.calls["submitjob"] == 1
    reused = result["cost"]
    assert "reused" not in fresh and reused["reused"] is True
    assert {k: v for k, v in reused.items() if k != "reused"} == fresh
    assert reused["cost_usd"] == pytest.approx(1.006, abs=1e-4)
    last = [r["event"] for r in records if job_id in r["event"]][-1]
    assert last.startswith(f"Job {job_id} SUCCEEDED: wall") and "~$1.01" in last
    assert last.endswith("[reused: an earlier try ran this job; count it once]")

    # The weekly sum lists jobs, not tries: the job both tries logged is one job, billed once.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = "/nonexistent/airflow-home"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("airflow-gpu")), "jobs", "--queue", gpu_batch["job_queue"]]
        + ["--since", "7d", "--cost", "--endpoint-url", moto_aws.endpoint_url, "--region", moto_aws.region],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert done.stdout.count(job_id) == 1
    assert re.search(r"gpu_dag\s+1\s+1\.000\s+\$1\.01\s", done.stdout)
