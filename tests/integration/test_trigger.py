"""GpuBatchJobTrigger: serialization, events, unknown jobs, max_queued, on_kill and cleanup."""

from __future__ import annotations

import asyncio
import importlib
import json

import pytest

from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.triggers import GpuBatchJobTrigger
from tests.support.gpu_batch_testing import (
    SECRET_KEY,
    FakeTaskInstance,
    collect_events,
    submit_raw,
)
from tests.support.waiting import wait_until

# The trigger's life in a triggerer (events, on_kill, cleanup) is what differs between Airflow versions.
pytestmark = pytest.mark.airflow_behaviour


@pytest.fixture
async def closed_after():
    yield
    await JobWatcher.close_all()


@pytest.fixture
def task_state(monkeypatch):
    """The task instance's state as on_kill reads it through the Task SDK (set ``.value``)."""
    reading = type("Reading", (), {"value": "failed"})()

    async def read(ti, log, **_):
        return reading.value

    monkeypatch.setattr("airflow_gpu.triggers.watch.read_task_state", read)
    return reading


def watcher_for(trigger: GpuBatchJobTrigger) -> JobWatcher:
    return JobWatcher.shared(trigger.target)


def test_serialize_round_trips_and_holds_no_secrets(aws_conn):
    trigger = GpuBatchJobTrigger(
        "5b4e7d1c-job",
        aws_conn_id="aws_default",
        region_name="eu-west-1",
        poll_interval=12.5,
        max_queued=3600,
        stream_logs=False,
    )
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs == {
        "job_id": "5b4e7d1c-job",
        "aws_conn_id": "aws_default",
        "region_name": "eu-west-1",
        "poll_interval": 12.5,
        "max_queued": 3600,
        "stream_logs": False,
        "backend": "aws_batch",
    }
    # Ids, names and numbers only; nothing from the connection.
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in kwargs.values())
    text = json.dumps(kwargs)
    assert SECRET_KEY not in text and "testing" not in text


async def test_success_event_carries_the_job_facts(moto_aws, gpu_batch, aws_conn, closed_after):
    moto_aws.batch.hold("RUNNING")
    job_id = submit_raw(moto_aws, gpu_batch, "ok-job")
    trigger = GpuBatchJobTrigger(job_id, poll_interval=0.1)
    task = asyncio.create_task(collect_events(trigger))
    await wait_until(lambda: moto_aws.log.calls["describejobs"] >= 2)
    moto_aws.batch.set_status(job_id, "SUCCEEDED")
    [event] = await task
    assert event["job_id"] == job_id
    assert event["job_name"] == "ok-job"
    assert event["status"] == "SUCCEEDED"
    assert event["exit_code"] == 0
    assert event["attempts"] == 1
    assert event["log_stream"].endswith(job_id)
    assert event["log_group"] == "/aws/batch/job"
    assert event["job_url"].endswith(f"#jobs/detail/{job_id}")
    assert SECRET_KEY not in json.dumps(event)


async def test_failed_event_carries_reason_and_exit_code(moto_aws, gpu_batch, aws_conn, closed_after):
    moto_aws.batch.hold("RUNNING")
    job_id = submit_raw(moto_aws, gpu_batch)
    moto_aws.batch.set_status(job_id, "FAILED", reason="Essential container in task exited", exit_code=137)
    [event] = await collect_events(GpuBatchJobTrigger(job_id, poll_interval=0.1))
    assert event["status"] == "FAILED"
    assert event["status_reason"] == "Essential container in task exited"
    assert event["exit_code"] == 137


async def test_unknown_job_gives_a_failure_event_not_an_endless_wait(moto_aws, gpu_batch, aws_conn, closed_after):
    [event] = await collect_events(GpuBatchJobTrigger("00000000-no-such-job", poll_interval=0.05))
    assert event["status"] == "UNKNOWN"
    assert "does not know job 00000000-no-such-job" in event["status_reason"]
    assert "us-east-1" in event["status_reason"]
    assert moto_aws.log.calls["describejobs"] == JobWatcher.unknown_after


async def test_max_queued_terminates_only_jobs_still_queued(moto_aws, gpu_batch, aws_conn, closed_after):
    moto_aws.batch.hold("RUNNABLE")
    stuck = submit_raw(moto_aws, gpu_batch, "stuck")
    lucky = submit_raw(moto_aws, gpu_batch, "lucky")
    moto_aws.batch.set_status(lucky, "RUNNING")  # got a GPU in time
    stuck_task = asyncio.create_task(collect_events(GpuBatchJobTrigger(stuck, poll_interval=0.1, max_queued=1)))
    lucky_task = asyncio.create_task(collect_events(GpuBatchJobTrigger(lucky, poll_interval=0.1, max_queued=1)))
    [event] = await stuck_task
    assert event["status"] == "FAILED"
    assert event["status_reason"].startswith("no GPU capacity for ")
    assert "RUNNABLE" in event["status_reason"] and "max_queued=1 s" in event["status_reason"]
    assert [j for j, _ in moto_aws.log.terminated] == [stuck]
    assert moto_aws.batch.status(stuck) == "FAILED"
    moto_aws.batch.set_status(lucky, "SUCCEEDED")
    [lucky_event] = await lucky_task
    assert lucky_event["status"] == "SUCCEEDED"


async def test_on_kill_terminates_with_a_reason_naming_the_task(
    moto_aws, gpu_batch, aws_conn, closed_after, task_state
):
    moto_aws.batch.hold("RUNNING")
    job_id = submit_raw(moto_aws, gpu_batch)
    trigger = GpuBatchJobTrigger(job_id, poll_interval=0.1)
    trigger.task_instance = FakeTaskInstance(dag_id="recs", task_id="train", run_id="manual__1")
    task = asyncio.create_task(collect_events(trigger))
    await wait_until(lambda: moto_aws.log.calls["describejobs"] >= 1)
    # What the triggerer does on clear / mark-failed: cancel run(), then on_kill(), then cleanup().
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await trigger.on_kill()
    await trigger.cleanup()
    [(terminated, reason)] = moto_aws.log.terminated
    assert terminated == job_id
    assert "recs.train run manual__1" in reason
    assert moto_aws.batch.status(job_id) == "FAILED"


async def cancel_while_watched(
    moto_aws, gpu_batch, *, map_index: int = -1
) -> tuple[str, GpuBatchJobTrigger, JobWatcher]:
    """A trigger watching a RUNNING job, cancelled as the triggerer cancels it (user action, restart or move)."""
    moto_aws.batch.hold("RUNNING")
    job_id = submit_raw(moto_aws, gpu_batch)
    trigger = GpuBatchJobTrigger(job_id, poll_interval=0.1)
    trigger.task_instance = FakeTaskInstance(dag_id="recs", task_id="train", run_id="manual__1", map_index=map_index)
    watcher = watcher_for(trigger)
    step = asyncio.create_task(trigger.run().__anext__())
    await wait_until(lambda: watcher.watched == 1 and moto_aws.log.calls["describejobs"] >= 1)
    step.cancel()  # then the triggerer calls on_kill() (3.3, for a user's action) and cleanup()
    with pytest.raises(asyncio.CancelledError):
        await step
    return job_id, trigger, watcher


async def test_a_second_cancel_during_on_kill_still_terminates_the_job(
    moto_aws, gpu_batch, aws_conn, closed_after, task_state
):
    # Airflow 3.3's triggerer cancels a trigger it dropped again on each pass until the trigger has
    # ended; that cancel can land inside on_kill, which must finish terminating the job all the same.
    job_id, trigger, _ = await cancel_while_watched(moto_aws, gpu_batch)
    killing = asyncio.create_task(trigger.on_kill())
    await asyncio.sleep(0)  # on_kill has started and waits on the backend
    killing.cancel()  # the triggerer's next pass
    with pytest.raises(asyncio.CancelledError):
        await killing
    await wait_until(lambda: moto_aws.log.terminated)
    [(terminated, reason)] = moto_aws.log.terminated
    assert terminated == job_id and "was cleared or marked failed/succeeded" in reason


async def test_a_restart_or_move_releases_the_watch_and_leaves_the_job(moto_aws, gpu_batch, aws_conn, closed_after):
    # The triggerer stops (restart) or another triggerer takes the trigger (move): the task stays
    # DEFERRED, and the triggerer calls cleanup() alone, never on_kill().
    job_id, trigger, watcher = await cancel_while_watched(moto_aws, gpu_batch, map_index=3)
    await trigger.cleanup()
    await trigger.cleanup()  # idempotent
    assert watcher.watched == 0
    assert moto_aws.log.terminated == []
    assert moto_aws.batch.status(job_id) == "RUNNING"


async def test_on_kill_from_a_resumed_stalled_triggerer_leaves_the_job(
    moto_aws, gpu_batch, aws_conn, closed_after, task_state
):
    # Airflow 3.3.2 cancels a trigger that moved to another triggerer with the user-action message
    # when the first one resumes from a stall (apache/airflow PR #73454): the task is still DEFERRED.
    task_state.value = "deferred"
    job_id, trigger, watcher = await cancel_while_watched(moto_aws, gpu_batch)
    await trigger.on_kill()
    await trigger.cleanup()
    assert watcher.watched == 0
    assert moto_aws.log.terminated == []
    assert moto_aws.batch.status(job_id) == "RUNNING"


async def test_cleanup_after_the_event_terminates_nothing(moto_aws, gpu_batch, aws_conn, closed_after):
    job_id = submit_raw(moto_aws, gpu_batch)
    trigger = GpuBatchJobTrigger(job_id, poll_interval=0.1)
    trigger.task_instance = FakeTaskInstance()
    [event] = await collect_events(trigger)
    await trigger.cleanup()
    assert event["status"] == "SUCCEEDED"
    assert moto_aws.log.terminated == []
