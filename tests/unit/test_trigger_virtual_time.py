"""GpuBatchJobTrigger and the start trigger over the in-memory backend, in virtual time: their events,
the log lines they relay, the jobs they stop (and the ones they must leave alone), and what they release."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from airflow.triggers.base import TaskFailedEvent, TaskSuccessEvent, TriggerEvent

from airflow_gpu.jobs.follower import LogFollower
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.operators import JOB_ID_XCOM_KEY
from airflow_gpu.triggers import GpuBatchJobTrigger
from airflow_gpu.triggers.start import GpuBatchStartTrigger
from tests.support.gpu_batch_testing import FakeTaskInstance, LineLog
from tests.support.memory_backend import TARGET, submit_jobs
from tests.support.virtual_clock import now, run

GATHER = JobWatcher.gather_delay
MISCONFIGURED = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement is higher than can be met."


def trigger_for(job_id: str, ti: FakeTaskInstance | None = None, **kwargs: Any) -> GpuBatchJobTrigger:
    """A trigger as a triggerer runs it (its task instance set), its log captured."""
    trigger = GpuBatchJobTrigger(job_id, backend="memory", **{"poll_interval": 30, **kwargs})
    trigger.task_instance = ti or FakeTaskInstance()
    trigger._log = LineLog()
    return trigger


async def events_of(trigger: GpuBatchJobTrigger) -> list[dict[str, Any]]:
    try:
        return [event.payload async for event in trigger.run()]
    finally:
        await trigger.cleanup()


def test_success_fires_one_event_with_the_job_facts_after_its_log_lines(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        loop = asyncio.get_running_loop()
        loop.call_later(10, memory_jobs.write, job, ["loading", "epoch 1"])
        loop.call_later(70, memory_jobs.finish, job, ["epoch 2", "saved"])
        trigger = trigger_for(job)
        [event] = await events_of(trigger)
        assert now() == pytest.approx(GATHER + 90, abs=1)  # the first poll after the end, plus the last read
        assert event == {
            "job_id": job,
            "job_name": memory_jobs.jobs[job].name,
            "status": "SUCCEEDED",
            "status_reason": None,
            "exit_code": 0,
            "attempts": 1,
            "log_stream": job,
            "log_group": None,
            "stopped_for": None,
            "log_relayed_to_end": True,
            "job_url": None,
            "log_url": None,
        }
        assert trigger.log.relayed(job) == ["loading", "epoch 1", "epoch 2", "saved"]  # in order, each once
        assert f"Job {job} is RUNNING" in trigger.log.records
        watcher, follower = JobWatcher.shared(TARGET), LogFollower.shared(TARGET)
        assert watcher.watched == 0 and follower.followed == 0  # released before the event
        assert memory_jobs.terminated == []

    run(main)


def test_a_failed_job_fires_with_its_reason_and_exit_code(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        asyncio.get_running_loop().call_later(
            45, memory_jobs.fail, job, "Essential container in task exited", 3, ["CUDA error: out of memory"]
        )
        trigger = trigger_for(job)
        [event] = await events_of(trigger)
        assert (event["status"], event["status_reason"], event["exit_code"]) == (
            "FAILED",
            "Essential container in task exited",
            3,
        )
        assert trigger.log.relayed(job) == ["CUDA error: out of memory"]

    run(main)


def test_an_unknown_job_fires_a_failure_instead_of_waiting_for_ever(memory_jobs):
    async def main() -> None:
        [event] = await events_of(trigger_for("mem-never-submitted"))
        assert event["status"] == "UNKNOWN" and "does not know job mem-never-submitted" in event["status_reason"]
        assert now() < GATHER + 3 * 30  # three polls, not a deferral timeout

    run(main)


def test_each_change_of_a_waiting_job_is_logged_once_not_once_per_poll(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1, status="RUNNABLE")
        loop = asyncio.get_running_loop()
        loop.call_later(100, lambda: memory_jobs.set_state(job, "STARTING"))
        loop.call_later(200, lambda: memory_jobs.set_state(job, "RUNNING"))
        loop.call_later(400, memory_jobs.finish, job)
        trigger = trigger_for(job, stream_logs=False)
        [event] = await events_of(trigger)
        assert event["status"] == "SUCCEEDED" and "log_relayed_to_end" not in event
        assert trigger.log.records == [f"Job {job} is RUNNABLE", f"Job {job} is STARTING", f"Job {job} is RUNNING"]
        assert len(memory_jobs.describes) > 10  # many polls, three lines

    run(main)


def test_max_queued_stops_a_job_that_waits_too_long_for_a_gpu(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1, status="RUNNABLE")
        [event] = await events_of(trigger_for(job, max_queued=3600, poll_interval=60))
        assert (event["status"], event["stopped_for"]) == ("FAILED", "max_queued")
        assert event["status_reason"].startswith("no GPU capacity for 3600 s: the job stayed RUNNABLE")
        assert now() == pytest.approx(GATHER + 3600, abs=1)  # the first poll past it
        assert [j for j, _ in memory_jobs.terminated] == [job]

    run(main)


def test_a_misconfigured_job_fails_at_the_first_poll_with_the_reason(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        memory_jobs.set_state(job, "RUNNABLE", status_reason=MISCONFIGURED)
        [event] = await events_of(trigger_for(job, max_queued=3600))
        assert (event["status"], event["stopped_for"]) == ("FAILED", "never_starts")
        assert "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT" in event["status_reason"]
        assert now() < 1
        assert memory_jobs.jobs[job].status == "FAILED"

    run(main)


def test_a_restart_or_move_releases_the_watch_and_leaves_the_job_running(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        trigger = trigger_for(job)
        step = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(GATHER + 60)
        watcher = JobWatcher.shared(TARGET)
        assert watcher.watched == 1 and LogFollower.shared(TARGET).followed == 1
        step.cancel()  # the triggerer stops, or hands the trigger over: cleanup() alone, never on_kill()
        with pytest.raises(asyncio.CancelledError):
            await step
        await trigger.cleanup()
        await trigger.cleanup()  # idempotent
        assert watcher.watched == 0 and LogFollower.shared(TARGET).followed == 0
        assert memory_jobs.terminated == [] and memory_jobs.jobs[job].status == "RUNNING"

    run(main)


def test_on_kill_terminates_the_job_with_a_reason_naming_the_task(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        trigger = trigger_for(job, FakeTaskInstance(dag_id="recs", task_id="train", run_id="manual__1", map_index=2))
        step = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(GATHER + 1)
        step.cancel()  # a user's clear or mark: cancel run(), then on_kill(), then cleanup()
        with pytest.raises(asyncio.CancelledError):
            await step
        await trigger.on_kill()
        await trigger.cleanup()
        [(terminated, reason)] = memory_jobs.terminated
        assert terminated == job and "recs.train run manual__1 map index 2" in reason
        assert memory_jobs.jobs[job].status == "FAILED"

    run(main)


def test_run_inline_it_closes_its_clients_as_it_fires(memory_jobs):
    """``airflow dags test`` runs the trigger without a triggerer: the loop ends with the event, so the
    watcher and follower must not wait out their grace period."""

    async def main() -> None:
        [job] = await submit_jobs(1)
        asyncio.get_running_loop().call_later(20, memory_jobs.finish, job)
        trigger = trigger_for(job)
        trigger.task_instance = None
        watcher = JobWatcher.shared(TARGET)
        [event] = await events_of(trigger)
        assert event["status"] == "SUCCEEDED"
        assert watcher.closed  # at once, not ClientLease.grace_period later

    run(main)


# -- the start trigger (start_from_trigger=True) ------------------------------------------------------


def start_trigger(**kwargs: Any) -> GpuBatchStartTrigger:
    trigger = GpuBatchStartTrigger(
        job_queue="q", job_definition="d", command=["als"], backend="memory", poll_interval=30, **kwargs
    )
    trigger.task_instance = FakeTaskInstance(map_index=4)
    trigger._log = LineLog()
    return trigger


async def start_events(trigger: GpuBatchStartTrigger) -> list[TriggerEvent]:
    try:
        return [event async for event in trigger.run()]
    finally:
        await trigger.cleanup()


def test_the_start_trigger_submits_once_and_a_rerun_finds_the_same_job(memory_jobs):
    async def main() -> None:
        first = start_trigger()
        step = asyncio.ensure_future(start_events(first))
        await asyncio.sleep(GATHER + 30)
        step.cancel()  # the triggerer restarts: the job lives on
        with pytest.raises(asyncio.CancelledError):
            await step
        [spec] = memory_jobs.submitted
        assert spec.tags["airflow:map_index"] == "4" and memory_jobs.terminated == []
        second = start_trigger()
        again = asyncio.ensure_future(start_events(second))
        await asyncio.sleep(1)
        assert second.job_id == first.job_id
        memory_jobs.finish(first.job_id)
        [event] = await again
        assert len(memory_jobs.submitted) == 1
        assert isinstance(event, TaskSuccessEvent)
        assert event.xcoms[JOB_ID_XCOM_KEY] == first.job_id
        assert event.xcoms["return_value"]["status"] == "SUCCEEDED"

    run(main)


def test_the_start_trigger_hands_a_failed_job_to_a_worker_and_refuses_bad_fields_before_submitting(memory_jobs):
    async def main() -> None:
        trigger = start_trigger()
        running = asyncio.ensure_future(start_events(trigger))
        await asyncio.sleep(1)
        memory_jobs.fail(trigger.job_id, "Essential container in task exited", 3)
        [event] = await running
        assert type(event) is TriggerEvent  # resumes on a worker, which raises with the log's tail
        assert (event.payload["status"], event.payload["exit_code"], event.payload["reattached"]) == (
            "FAILED",
            3,
            False,
        )

        [refused] = await start_events(start_trigger(gpus=99))
        assert isinstance(refused, TaskFailedEvent)
        assert len(memory_jobs.submitted) == 1

    run(main)
