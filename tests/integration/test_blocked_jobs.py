"""Jobs AWS Batch cannot place: a misconfiguration fails at once, a capacity wait is logged per change.

moto never blocks a queue, so the tests write AWS Batch's blocked reasons into a RUNNABLE
job's statusReason (tests/support/moto_aws.py ``set_status(..., reason=...)``), as Batch does.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_gpu.exceptions import GpuJobFailed
from airflow_gpu.jobs.aws.backend import parse_job
from airflow_gpu.jobs.backend import STOPPED_FOR_NEVER_STARTS, JobState
from airflow_gpu.jobs.placement import parse_blocked
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.operators import GpuBatchOperator
from airflow_gpu.triggers import GpuBatchJobTrigger
from tests.support.gpu_batch_testing import (
    LineLog,
    collect_events,
    fire,
    make_context,
    submit_raw,
)
from tests.support.waiting import wait_until

RESOURCES = (
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement (vCPU/memory/GPU) is higher "
    "than that can be met by the CE(s) attached to the job queue."
)
MAX_RESOURCE = (
    "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE - CE(s) associated with the job queue cannot meet "
    "the CPU requirement of the job."
)
NO_G5 = "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity requested for instance type [g5.xlarge]"
NO_G6 = "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - Service cannot fulfill the capacity requested for instance type [g6.xlarge]"


@pytest.fixture
async def closed_after():
    yield
    await JobWatcher.close_all()


def test_blocked_reasons_are_parsed_into_a_field_only_for_runnable_jobs():
    blocked = parse_blocked("RUNNABLE", RESOURCES)
    assert (blocked.category, blocked.code, blocked.key) == (
        "MISCONFIGURATION",
        "JOB_RESOURCE_REQUIREMENT",
        "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
    )
    assert blocked.never_starts and blocked.message == RESOURCES
    capacity = parse_blocked("RUNNABLE", "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY \u2013 no g5")  # AWS's en dash
    assert capacity.key == "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY" and not capacity.never_starts
    assert parse_blocked("FAILED", RESOURCES) is None  # a reason on an ended job is not a block
    assert parse_blocked("RUNNABLE", "Essential container in task exited") is None
    assert parse_blocked("RUNNABLE", None) is None
    job = {"jobId": "j-1", "status": "RUNNABLE", "statusReason": MAX_RESOURCE, "createdAt": 1}
    assert parse_job(job).blocked == parse_blocked("RUNNABLE", MAX_RESOURCE)


@pytest.mark.parametrize(
    "reason, fix",
    [(RESOURCES, "lower gpus/vcpus/memory_mib"), (MAX_RESOURCE, "raise maxvCpus")],
    ids=["resources", "max-vcpus"],
)
async def test_a_misconfigured_job_fails_at_once_with_the_reason_and_the_fix(
    moto_aws, gpu_batch, aws_conn, closed_after, reason, fix
):
    moto_aws.batch.hold("RUNNABLE")
    job_id = submit_raw(moto_aws, gpu_batch)
    moto_aws.batch.set_status(job_id, "RUNNABLE", reason=reason)
    # No max_queued: without the check this trigger would wait for ever (collect_events' timeout).
    [event] = await collect_events(GpuBatchJobTrigger(job_id, poll_interval=0.1, max_queued=None), timeout=20)
    assert event["status"] == "FAILED"
    assert event["stopped_for"] == STOPPED_FOR_NEVER_STARTS
    assert reason in event["status_reason"] and fix in event["status_reason"]
    assert [j for j, _ in moto_aws.log.terminated] == [job_id]
    assert moto_aws.batch.status(job_id) == "FAILED"


async def test_a_capacity_wait_is_logged_once_per_change_of_reason_and_keeps_waiting(
    moto_aws, gpu_batch, aws_conn, closed_after
):
    moto_aws.batch.hold("RUNNABLE")
    job_id = submit_raw(moto_aws, gpu_batch)
    moto_aws.batch.set_status(job_id, "RUNNABLE", reason=NO_G5)
    trigger = GpuBatchJobTrigger(job_id, poll_interval=0.05, stream_logs=False)
    trigger._log = recorder = LineLog()
    task = asyncio.create_task(collect_events(trigger))
    watcher_cycles = lambda: next((w.cycles for w in JobWatcher.active()), 0)  # noqa: E731
    await wait_until(lambda: watcher_cycles() >= 5)
    moto_aws.batch.set_status(job_id, "RUNNABLE", reason=NO_G6)
    start = watcher_cycles()
    await wait_until(lambda: watcher_cycles() >= start + 5)
    moto_aws.batch.set_status(job_id, "RUNNING")
    await wait_until(lambda: any("RUNNING" in r for r in recorder.records))
    moto_aws.batch.set_status(job_id, "SUCCEEDED")
    [event] = await task
    assert event["status"] == "SUCCEEDED" and moto_aws.log.terminated == []
    assert [r for r in recorder.records if "CAPACITY:" in r] == [
        f"Job {job_id} is RUNNABLE, waiting: AWS Batch reports {NO_G5}",
        f"Job {job_id} is RUNNABLE, waiting: AWS Batch reports {NO_G6}",
    ]


def _operator(gpu_batch, **kwargs) -> GpuBatchOperator:
    return GpuBatchOperator(
        task_id="train",
        job_queue=gpu_batch["job_queue"],
        job_definition=gpu_batch["job_definition"],
        command=["als"],
        gpus=1,
        poll_interval=0.1,
        **kwargs,
    )


def test_a_reattached_try_fails_on_a_never_starts_event_instead_of_submitting_again(moto_aws, gpu_batch, aws_conn):
    # A job airflow-gpu terminated carries the cancelled tag, like one an earlier try's on_kill stopped;
    # only stopped_for tells this try's own stop apart, so the try must fail, not resubmit.
    moto_aws.batch.hold("RUNNABLE")
    context = make_context()
    with pytest.raises(TaskDeferred) as deferred:
        _operator(gpu_batch, deferrable=True).execute(context)
    job_id = deferred.value.trigger.job_id
    moto_aws.batch.set_status(job_id, "RUNNABLE", reason=RESOURCES)
    event = fire(deferred.value.trigger)
    assert JobState.from_event(event).stopped_for == STOPPED_FOR_NEVER_STARTS
    with pytest.raises(GpuJobFailed, match="can never start"):
        _operator(gpu_batch, deferrable=True).execute_complete(context, event, reattached=True)
    assert len(moto_aws.log.submitted) == 1


def test_the_blocking_path_fails_a_misconfigured_job_at_once(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNABLE")
    outcome: dict = {}

    def run() -> None:
        try:
            _operator(gpu_batch, deferrable=False).execute(make_context())
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    job_id = moto_aws.batch.wait_for_jobs(1, status="RUNNABLE")[0]
    moto_aws.batch.set_status(job_id, "RUNNABLE", reason=MAX_RESOURCE)
    worker.join(30)
    assert not worker.is_alive()
    assert isinstance(outcome.get("error"), GpuJobFailed)
    assert "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE" in str(outcome["error"])
    assert [j for j, _ in moto_aws.log.terminated] == [job_id]
