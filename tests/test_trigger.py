"""GpuBatchJobTrigger: serialization, events, unknown jobs, max_queued, on_kill and cleanup."""

from __future__ import annotations

import asyncio
import importlib
import json
import threading

import pytest

from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.triggers import GpuBatchJobTrigger
from gpu_batch_testing import (  # noqa: F401  (fixtures)
    SECRET_KEY,
    FakeTaskInstance,
    aws_conn,
    collect_events,
    fast_watcher,
    submit_raw,
)
from waiting import wait_until

# The trigger's life in a triggerer (events, on_kill, cleanup) is what differs between Airflow versions.
pytestmark = pytest.mark.airflow_behaviour


@pytest.fixture
async def closed_after():
    yield
    await JobWatcher.close_all()




def watcher_for(trigger: GpuBatchJobTrigger) -> JobWatcher:
    return JobWatcher.shared(trigger.target)


def test_serialize_round_trips_and_holds_no_secrets(aws_conn):
    trigger = GpuBatchJobTrigger(
        "5b4e7d1c-job", aws_conn_id="aws_default", region_name="eu-west-1", poll_interval=12.5, max_queued=3600, stream_logs=False
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


async def test_on_kill_terminates_with_a_reason_naming_the_task(moto_aws, gpu_batch, aws_conn, closed_after):
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


class TaskStates:
    """Stands in for the triggerer's supervisor behind the Task SDK's comms (SUPERVISOR_COMMS): answers
    GetTaskStates with one task instance's state, as the execution API does, and records each question."""

    def __init__(self, monkeypatch, state: str | None | Exception, *, on_kill_calls: bool, exists: bool = True,
                 answer_after: asyncio.Event | None = None) -> None:
        self.state = state
        self.exists = exists
        self.answer_after = answer_after  # a supervisor busy until this is set (a new triggerer's first call)
        self.asked: list[dict] = []
        monkeypatch.setattr("airflow.sdk.execution_time.task_runner.SUPERVISOR_COMMS", self, raising=False)
        monkeypatch.setattr("airflow_gpu.triggers.TRIGGERER_CALLS_ON_KILL", on_kill_calls)

    async def asend(self, msg):
        from airflow.sdk.execution_time.comms import GetTaskStates, TaskStatesResult

        assert isinstance(msg, GetTaskStates)
        self.asked.append({"dag_id": msg.dag_id, "map_index": msg.map_index, "task_ids": msg.task_ids, "run_ids": msg.run_ids})
        if self.state == "no answer":  # a stopping triggerer's supervisor
            await asyncio.Event().wait()
        if self.answer_after is not None:
            await self.answer_after.wait()
        if isinstance(self.state, Exception):
            raise self.state
        if not self.exists:
            return TaskStatesResult(task_states={})
        [task_id], [run_id] = msg.task_ids, msg.run_ids
        key = task_id if msg.map_index in (None, -1) else f"{task_id}_{msg.map_index}"
        return TaskStatesResult(task_states={run_id: {key: self.state}})


async def cancel_while_watched(moto_aws, gpu_batch, *, map_index: int = -1) -> tuple[str, GpuBatchJobTrigger, JobWatcher]:
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


async def test_a_second_cancel_during_on_kill_still_terminates_the_job(moto_aws, gpu_batch, aws_conn, monkeypatch, closed_after):
    # Airflow 3.3's triggerer cancels a trigger it dropped again on each pass until the trigger has
    # ended; that cancel can land inside on_kill, which must finish terminating the job all the same.
    states = TaskStates(monkeypatch, "deferred", on_kill_calls=True)
    job_id, trigger, _ = await cancel_while_watched(moto_aws, gpu_batch)
    killing = asyncio.create_task(trigger.on_kill())
    await asyncio.sleep(0)  # on_kill has started and waits on the backend
    killing.cancel()  # the triggerer's next pass
    with pytest.raises(asyncio.CancelledError):
        await killing
    await wait_until(lambda: moto_aws.log.terminated)
    [(terminated, reason)] = moto_aws.log.terminated
    assert terminated == job_id and "was cleared or marked failed/succeeded" in reason
    # A user's action needs no state read: asking would race the cleared task's next try deferring again.
    assert states.asked == []


@pytest.mark.parametrize("on_kill_calls", [False, True], ids=["airflow-3.2", "airflow-3.3"])
async def test_a_restart_or_move_releases_the_watch_and_leaves_the_job(moto_aws, gpu_batch, aws_conn, monkeypatch, closed_after, on_kill_calls):
    # The triggerer stops (restart) or another triggerer takes the trigger (move): the task stays DEFERRED.
    states = TaskStates(monkeypatch, "deferred", on_kill_calls=on_kill_calls)
    job_id, trigger, watcher = await cancel_while_watched(moto_aws, gpu_batch, map_index=3)
    await trigger.cleanup()
    await trigger.cleanup()  # idempotent
    assert watcher.watched == 0
    # Before 3.3 cleanup asks the task's state once; from 3.3 on, cleanup means a restart or a move and asks nothing.
    asked_once = [{"dag_id": "recs", "map_index": 3, "task_ids": ["train"], "run_ids": ["manual__1"]}]
    assert states.asked == ([] if on_kill_calls else asked_once)
    assert moto_aws.log.terminated == []
    assert moto_aws.batch.status(job_id) == "RUNNING"


@pytest.mark.parametrize("state", [None, "scheduled", "failed", "success"], ids=["cleared", "timed-out", "marked-failed", "marked-success"])
async def test_before_airflow_3_3_cleanup_terminates_the_job_of_a_task_that_left_deferred(moto_aws, gpu_batch, aws_conn, monkeypatch, closed_after, state):
    # Airflow 3.2 never calls on_kill: clearing or marking the task only cancels run() and calls cleanup().
    TaskStates(monkeypatch, state, on_kill_calls=False)
    job_id, trigger, _ = await cancel_while_watched(moto_aws, gpu_batch)
    await trigger.cleanup()
    [(terminated, reason)] = moto_aws.log.terminated
    assert terminated == job_id
    assert "recs.train run manual__1 was cleared or marked" in reason and f"state is now {state or 'none'}" in reason
    assert moto_aws.batch.status(job_id) == "FAILED"


async def test_before_airflow_3_3_cleanup_terminates_the_job_of_a_deleted_task(moto_aws, gpu_batch, aws_conn, monkeypatch, closed_after):
    TaskStates(monkeypatch, "deferred", on_kill_calls=False, exists=False)  # its DAG run was deleted
    job_id, trigger, _ = await cancel_while_watched(moto_aws, gpu_batch)
    await trigger.cleanup()
    [(terminated, reason)] = moto_aws.log.terminated
    assert terminated == job_id and "no longer exists" in reason


async def test_before_airflow_3_3_cleanup_leaves_the_job_when_the_state_cannot_be_read(moto_aws, gpu_batch, aws_conn, monkeypatch, closed_after):
    # E.g. a shutting-down triggerer whose supervisor no longer answers: never terminate on a guess.
    TaskStates(monkeypatch, ConnectionResetError("supervisor closed"), on_kill_calls=False)
    job_id, trigger, _ = await cancel_while_watched(moto_aws, gpu_batch)
    await trigger.cleanup()
    assert moto_aws.log.terminated == []
    assert moto_aws.batch.status(job_id) == "RUNNING"


async def test_before_airflow_3_3_a_stopping_triggerer_asks_nothing_and_leaves_the_job(moto_aws, gpu_batch, aws_conn, monkeypatch, closed_after):
    # Airflow 3.2's runner stops its comms reader, then cancels every trigger: a question could not be answered.
    states = TaskStates(monkeypatch, "success", on_kill_calls=False)
    states._reader_task = asyncio.get_running_loop().create_future()
    states._reader_task.cancel()
    job_id, trigger, _ = await cancel_while_watched(moto_aws, gpu_batch)
    await asyncio.wait_for(trigger.cleanup(), 5)
    assert states.asked == [] and moto_aws.log.terminated == []
    assert moto_aws.batch.status(job_id) == "RUNNING"


async def test_before_airflow_3_3_a_supervisor_that_never_answers_leaves_the_job_and_holds_nothing_up(moto_aws, gpu_batch, aws_conn, monkeypatch, closed_after):
    # A stopping triggerer: its supervisor no longer answers. The question gives up, in this loop (no
    # thread left blocked, which would keep the trigger runner from exiting), and the job lives on.
    TaskStates(monkeypatch, "no answer", on_kill_calls=False)
    monkeypatch.setattr("airflow_gpu.triggers._STATE_TIMEOUT", 0.2)
    job_id, trigger, _ = await cancel_while_watched(moto_aws, gpu_batch)
    threads = threading.active_count()
    await asyncio.wait_for(trigger.cleanup(), 5)
    assert threading.active_count() <= threads
    assert moto_aws.log.terminated == [] and moto_aws.batch.status(job_id) == "RUNNING"


@pytest.mark.parametrize("on_kill_calls", [False, True], ids=["airflow-3.2", "airflow-3.3"])
async def test_cleanup_after_the_event_asks_nothing_and_terminates_nothing(moto_aws, gpu_batch, aws_conn, monkeypatch, closed_after, on_kill_calls):
    states = TaskStates(monkeypatch, "success", on_kill_calls=on_kill_calls)
    job_id = submit_raw(moto_aws, gpu_batch)
    trigger = GpuBatchJobTrigger(job_id, poll_interval=0.1)
    trigger.task_instance = FakeTaskInstance()
    [event] = await collect_events(trigger)
    await trigger.cleanup()
    assert event["status"] == "SUCCEEDED"
    assert states.asked == [] and moto_aws.log.terminated == []


async def test_on_kill_terminates_without_asking_the_tasks_state(moto_aws, gpu_batch, aws_conn, monkeypatch, closed_after):
    # On 3.3 the triggerer calls on_kill only for a user's action, so it terminates at once.
    states = TaskStates(monkeypatch, "deferred", on_kill_calls=True)
    job_id, trigger, _ = await cancel_while_watched(moto_aws, gpu_batch)
    await trigger.on_kill()
    await trigger.cleanup()
    [(terminated, _)] = moto_aws.log.terminated
    assert terminated == job_id
    assert states.asked == []
