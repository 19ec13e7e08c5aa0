"""What a cancelled trigger does with its job, and what a later try does with an earlier try's job:
the decision table of docs/operator.md ("When a deferred task is cancelled"), in process, over the
in-memory backend.

Airflow 3.3.2 calls on_kill for a user's clear or mark, and also when a triggerer that stalled past
the health-check threshold resumes and finds its triggers given to another (apache/airflow PR
#73454): only the job and the task instance's state tell them apart.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from airflow_gpu.jobs.backend import BackendTarget, JobState
from airflow_gpu.jobs.blocking import claim, submit_or_reattach
from airflow_gpu.jobs.ownership import Action, TaskState, decide_on_kill, superseded
from airflow_gpu.jobs.spec import TAG_CANCELLED, TAG_DEFERRED_TRY, JobSpec, TaskIdentity
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.triggers import GpuBatchJobTrigger
from airflow_gpu.triggers.start import GpuBatchStartTrigger
from tests.support.memory_backend import InMemoryBackend

LOG = logging.getLogger("test")
IDENTITY = TaskIdentity("recs", "train", "manual__1", -1)
TARGET = BackendTarget(backend="memory")


def job(status: str = "RUNNING", **tags: str) -> JobState:
    return JobState("job-1", status, tags=tags)


# -- the table ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "seen_job", "task_state", "expected"),
    [
        ("stalled triggerer resumes: the trigger moved", job(**{TAG_DEFERRED_TRY: "1"}), "deferred", Action.KEEP),
        (
            "a later start_from_trigger try deferred before submitting",
            job(**{TAG_DEFERRED_TRY: "1"}),
            "deferred",
            Action.KEEP,
        ),
        ("clear, next try not started", job(**{TAG_DEFERRED_TRY: "1"}), None, Action.TERMINATE),
        ("clear, next try scheduled", job(**{TAG_DEFERRED_TRY: "1"}), "scheduled", Action.TERMINATE),
        ("clear, next try running", job(**{TAG_DEFERRED_TRY: "1"}), "running", Action.TERMINATE),
        ("mark failed", job(**{TAG_DEFERRED_TRY: "1"}), "failed", Action.TERMINATE),
        ("mark success", job(**{TAG_DEFERRED_TRY: "1"}), "success", Action.TERMINATE),
        ("the DAG run was deleted", job(**{TAG_DEFERRED_TRY: "1"}), TaskState.GONE, Action.TERMINATE),
        ("the state cannot be read", job(**{TAG_DEFERRED_TRY: "1"}), TaskState.UNKNOWN, Action.TERMINATE),
        (
            "the next try already ended the job",
            job(**{TAG_DEFERRED_TRY: "1", TAG_CANCELLED: "true"}),
            "running",
            Action.LEAVE,
        ),
        (
            "a later try owns the job (reattached without the tag)",
            job(**{TAG_DEFERRED_TRY: "2"}),
            "deferred",
            Action.LEAVE,
        ),
        (
            "the job ended while the triggerer stalled",
            job("SUCCEEDED", **{TAG_DEFERRED_TRY: "1"}),
            "success",
            Action.LEAVE,
        ),
        ("the job is gone from the backend", None, "failed", Action.LEAVE),
    ],
)
def test_decision_table(event, seen_job, task_state, expected):
    assert decide_on_kill(seen_job, task_state, try_number=1).action is expected, event


@pytest.mark.parametrize(
    ("seen_job", "try_number", "expected"),
    [
        (job(**{TAG_DEFERRED_TRY: "1"}), 2, True),  # a clear's next try: the earlier try deferred on it
        (job(**{TAG_DEFERRED_TRY: "1"}), 1, False),  # the same try (a moved start trigger runs again)
        (job(), 2, False),  # no try deferred on it: its worker died after SubmitJob, the retry reattaches
        (job(**{TAG_DEFERRED_TRY: "1", TAG_CANCELLED: "true"}), 2, False),  # already being ended
        (job("SUCCEEDED", **{TAG_DEFERRED_TRY: "1"}), 2, False),  # over: reused as before
        (job(**{TAG_DEFERRED_TRY: "garbled"}), 2, False),
    ],
)
def test_which_jobs_a_later_try_supersedes(seen_job, try_number, expected):
    assert superseded(seen_job, try_number) is expected


# -- a later try ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
async def memory_jobs():
    InMemoryBackend.reset()
    yield InMemoryBackend
    await JobWatcher.close_all()
    InMemoryBackend.reset()


def spec(**tags: str) -> JobSpec:
    base = JobSpec.build(identity=IDENTITY, job_queue="q", job_definition="d", command=["als"])
    return JobSpec(**{**base.__dict__, "tags": {**base.tags, **tags}})


async def test_a_retry_after_the_worker_died_before_deferring_reattaches(memory_jobs):
    backend = await InMemoryBackend.open(TARGET)
    first, _ = await submit_or_reattach(backend, spec(), reattach=True, log=LOG, try_number=1)  # then the worker dies
    again, reattached = await submit_or_reattach(backend, spec(), reattach=True, log=LOG, try_number=2)
    assert (again.job_id, reattached) == (first.job_id, True)
    assert memory_jobs.submitted_ids == [first.job_id] and memory_jobs.terminate_calls == []


async def test_a_clears_next_try_ends_the_earlier_trys_job_and_submits_anew(memory_jobs):
    backend = await InMemoryBackend.open(TARGET)
    first, _ = await submit_or_reattach(backend, spec(), reattach=True, log=LOG, try_number=1)
    await claim(backend, first, 1, LOG)  # try 1 deferred on it, then was cleared
    second, reattached = await submit_or_reattach(backend, spec(), reattach=True, log=LOG, try_number=2)
    assert second.job_id != first.job_id and not reattached
    assert memory_jobs.terminate_calls == [first.job_id]
    assert memory_jobs.jobs[first.job_id].status == "FAILED"


async def test_a_clears_next_try_finds_nothing_when_the_trigger_ended_the_job_first(memory_jobs):
    backend = await InMemoryBackend.open(TARGET)
    first, _ = await submit_or_reattach(backend, spec(), reattach=True, log=LOG, try_number=1)
    await claim(backend, first, 1, LOG)
    await backend.terminate(first.job_id, "cleared")  # the old trigger's on_kill came first
    second, reattached = await submit_or_reattach(backend, spec(), reattach=True, log=LOG, try_number=2)
    assert second.job_id != first.job_id and not reattached
    assert memory_jobs.terminate_calls == [first.job_id]  # once


async def test_a_moved_start_trigger_finds_its_own_trys_job(memory_jobs):
    backend = await InMemoryBackend.open(TARGET)
    claimed = spec(**{TAG_DEFERRED_TRY: "3"})  # the start trigger submits with its claim
    first, _ = await submit_or_reattach(backend, claimed, reattach=True, log=LOG, try_number=3)
    again, reattached = await submit_or_reattach(backend, claimed, reattach=True, log=LOG, try_number=3)
    assert (again.job_id, reattached) == (first.job_id, True)
    assert memory_jobs.submitted_ids == [first.job_id] and memory_jobs.terminate_calls == []


# -- on_kill --------------------------------------------------------------------------------------


class TaskStates:
    """Stands in for the Task SDK read of the task instance's state."""

    def __init__(self, monkeypatch, state, answer: asyncio.Event | None = None) -> None:
        self.state = state
        self.answer = answer
        self.asked = 0
        monkeypatch.setattr("airflow_gpu.triggers.watch.read_task_state", self.read)

    async def read(self, ti, log, **_):
        self.asked += 1
        if self.answer is not None:
            await self.answer.wait()
        return self.state


async def deferred_on_a_job(memory_jobs, trigger_cls=GpuBatchJobTrigger, try_number: int = 1) -> GpuBatchJobTrigger:
    backend = await InMemoryBackend.open(TARGET)
    state, _ = await submit_or_reattach(backend, spec(), reattach=True, log=LOG, try_number=try_number)
    await claim(backend, state, try_number, LOG)
    if trigger_cls is GpuBatchJobTrigger:
        trigger = GpuBatchJobTrigger(state.job_id, backend="memory")
    else:
        trigger = GpuBatchStartTrigger(
            job_queue="q", job_definition="d", command=["als"], backend="memory", job_id=state.job_id
        )
    trigger.task_instance = SimpleNamespace(
        dag_id="recs", task_id="train", run_id="manual__1", map_index=-1, try_number=try_number
    )
    return trigger


@pytest.mark.parametrize(
    "trigger_cls", [GpuBatchJobTrigger, GpuBatchStartTrigger], ids=["worker", "start_from_trigger"]
)
async def test_a_resumed_stalled_triggerer_kills_nothing(memory_jobs, monkeypatch, trigger_cls):
    states = TaskStates(monkeypatch, "deferred")  # the trigger moved: the task still waits, same try
    trigger = await deferred_on_a_job(memory_jobs, trigger_cls)
    await trigger.on_kill()
    await trigger.cleanup()
    assert memory_jobs.terminate_calls == [] and memory_jobs.jobs[trigger.job_id].status == "RUNNING"
    assert states.asked == 1


@pytest.mark.parametrize("task_state", [None, "scheduled", "queued", "running", "failed", "success", TaskState.UNKNOWN])
@pytest.mark.parametrize(
    "trigger_cls", [GpuBatchJobTrigger, GpuBatchStartTrigger], ids=["worker", "start_from_trigger"]
)
async def test_a_clear_or_mark_terminates_the_job_once(memory_jobs, monkeypatch, trigger_cls, task_state):
    TaskStates(monkeypatch, task_state)
    trigger = await deferred_on_a_job(memory_jobs, trigger_cls)
    await trigger.on_kill()
    await trigger.on_kill()  # the triggerer cancels a dropped trigger again on its next pass
    assert memory_jobs.terminate_calls == [trigger.job_id]
    assert memory_jobs.jobs[trigger.job_id].status == "FAILED"


async def test_a_second_cancel_during_the_state_read_does_not_cut_the_decision_off(memory_jobs, monkeypatch):
    answer = asyncio.Event()
    TaskStates(monkeypatch, "failed", answer=answer)
    trigger = await deferred_on_a_job(memory_jobs)
    killing = asyncio.create_task(trigger.on_kill())
    for _ in range(5):
        await asyncio.sleep(0)  # on_kill has described the job and waits for the state
    killing.cancel()  # the triggerer's next pass
    with pytest.raises(asyncio.CancelledError):
        await killing
    answer.set()
    await trigger._killing
    assert memory_jobs.terminate_calls == [trigger.job_id]


async def test_on_kill_leaves_a_job_the_next_try_already_ended_without_asking_the_state(memory_jobs, monkeypatch):
    states = TaskStates(monkeypatch, "running")
    trigger = await deferred_on_a_job(memory_jobs)
    backend = await InMemoryBackend.open(TARGET)
    await submit_or_reattach(backend, spec(), reattach=True, log=LOG, try_number=2)  # the clear's next try came first
    await trigger.on_kill()
    assert memory_jobs.terminate_calls == [trigger.job_id]  # by the next try only
    assert states.asked == 0


async def test_a_later_try_that_deferred_while_the_state_was_read_ended_the_job_itself(memory_jobs, monkeypatch):
    # The race that made an earlier version leave jobs running: the state reads DEFERRED because
    # the clear's next try has deferred already; that try superseded this job before deferring.
    answer = asyncio.Event()
    TaskStates(monkeypatch, "deferred", answer=answer)
    trigger = await deferred_on_a_job(memory_jobs)
    killing = asyncio.create_task(trigger.on_kill())
    for _ in range(5):
        await asyncio.sleep(0)
    backend = await InMemoryBackend.open(TARGET)
    fresh, reattached = await submit_or_reattach(backend, spec(), reattach=True, log=LOG, try_number=2)
    answer.set()
    await killing
    assert not reattached and fresh.job_id != trigger.job_id
    assert memory_jobs.terminate_calls == [trigger.job_id]  # once, by the next try
    assert memory_jobs.jobs[fresh.job_id].status == "RUNNING"


async def test_a_start_trigger_cancelled_mid_submit_decides_on_its_own_trys_job_only(memory_jobs, monkeypatch):
    TaskStates(monkeypatch, "success")  # marked success while try 2 was submitting
    backend = await InMemoryBackend.open(TARGET)
    older, _ = await submit_or_reattach(backend, spec(**{TAG_DEFERRED_TRY: "1"}), reattach=True, log=LOG, try_number=1)
    await backend.terminate(older.job_id, "cleared")
    mine, _ = await submit_or_reattach(backend, spec(**{TAG_DEFERRED_TRY: "2"}), reattach=True, log=LOG, try_number=2)
    memory_jobs.terminate_calls.clear()
    trigger = GpuBatchStartTrigger(job_queue="q", job_definition="d", command=["als"], backend="memory")
    trigger.task_instance = SimpleNamespace(
        dag_id="recs", task_id="train", run_id="manual__1", map_index=-1, try_number=2
    )
    await trigger.on_kill()
    assert memory_jobs.terminate_calls == [mine.job_id]
