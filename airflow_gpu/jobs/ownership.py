"""Which try of a task instance owns a job, and what a cancelled trigger does with its job.

Airflow 3.3 calls a trigger's ``on_kill`` for a user's clear or mark, and also (apache/airflow
PR #73454) when a triggerer whose heartbeat lapsed resumes and finds its triggers given to another
triggerer: the cancel looks the same. What tells them apart is the task instance and the job:

* A try that deferred on a job tags it with its try number (``TAG_DEFERRED_TRY``). A deferred try
  ends with its trigger's event (the job is over), a deferral timeout or trigger failure (the
  operator terminates the job), or a user's clear or mark. So a *later* try that finds a live job
  tagged by an earlier try knows that try was cleared or marked: it ends the job itself (the job
  is *superseded*) and submits a new one; it never reattaches to a job a clear is ending. A try
  that never deferred on its job (its worker died after SubmitJob) left no tag: its retry
  reattaches, and no second job starts.
* A cancelled trigger reads its job and its task instance's state (:func:`decide_on_kill`): a
  task still DEFERRED means the trigger moved (or a later try that ends the job itself deferred);
  any other state means the try is over, and the job is terminated. A job already ended or being
  ended (cancelled tag) is left alone, so each job is terminated once.

Nothing here depends on the triggerer's bug: with PR #73454 merged, on_kill only comes for a
user's action, and the table gives the same answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from airflow_gpu.jobs.backend import JobState
from airflow_gpu.jobs.spec import TAG_CANCELLED, TAG_DEFERRED_TRY

DEFERRED = "deferred"


class TaskState(enum.Enum):
    """What a read of the task instance's state can give besides a state name."""

    UNKNOWN = "unknown"  # the Task SDK did not answer (no supervisor, an error, no answer in time)
    GONE = "gone"  # the task instance no longer exists (its DAG run was deleted)


def deferred_try(state: JobState) -> int | None:
    """The try number that deferred on the job, or None when no try did (or the tag is garbled)."""
    value = state.tags.get(TAG_DEFERRED_TRY)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def superseded(state: JobState, try_number: int) -> bool:
    """A live job that an earlier try deferred on: that try was cleared or marked, so try
    ``try_number`` must end the job rather than reattach to it."""
    owner = deferred_try(state)
    return state.is_live and owner is not None and owner < try_number and TAG_CANCELLED not in state.tags


class Action(enum.Enum):
    LEAVE = "leave"  # nothing to do: the job is over, being ended, or owned by someone else
    KEEP = "keep"  # the job lives on for the task that still waits for it
    TERMINATE = "terminate"


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str


def decide_on_kill(job: JobState | None, task_state: str | TaskState | None, try_number: int | None) -> Decision:
    """What a trigger of try ``try_number`` does with ``job`` when the triggerer cancels it with
    the user-action message. ``task_state`` is the task instance's state now (a lower-case state
    name, None for no state, or a :class:`TaskState`); ``job`` the job as described now."""
    if job is None:
        return Decision(Action.LEAVE, "the backend has no such job")
    if not job.is_live:
        return Decision(Action.LEAVE, f"the job is already {job.status}")
    if TAG_CANCELLED in job.tags:
        return Decision(Action.LEAVE, "the job is already being terminated")
    owner = deferred_try(job)
    if owner is not None and try_number is not None and owner > try_number:
        return Decision(Action.LEAVE, f"try {owner} of the task owns the job now")
    if task_state == DEFERRED:
        return Decision(Action.KEEP, "the task is still deferred: its trigger moved to another triggerer")
    if task_state is TaskState.UNKNOWN:
        # The triggerer reported a user's action and we could not check it: do as it says.
        return Decision(
            Action.TERMINATE, "the task's state could not be read, and the triggerer reported a user's action"
        )
    if task_state is TaskState.GONE:
        return Decision(Action.TERMINATE, "the task instance no longer exists")
    return Decision(Action.TERMINATE, f"the task was cleared or marked (its state is now {task_state or 'none'})")
