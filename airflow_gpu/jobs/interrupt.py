"""Ctrl-C while this process itself waits on a job: the wait ends, so the job can be terminated.

A terminal that waits on a job (``airflow dags test`` running the trigger inline, a task with
``deferrable=False``) is the job's only watcher: when the user presses Ctrl-C there, nobody else
will stop the GPU job. Python would raise KeyboardInterrupt wherever the loop happens to be (or
asyncio would cancel the whole run), leaving a traceback and the job running. Instead, for the
length of one wait, SIGINT ends just that wait and the caller terminates the job and says so.

Only the main thread receives signals, and only a process that left Ctrl-C to Python (not a
triggerer, which handles SIGINT itself and must never terminate jobs when it stops) is taken
over; elsewhere the wait is a plain await.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import signal
import threading
from typing import TYPE_CHECKING, Awaitable, TypeVar

from airflow_gpu.jobs.backend import FAILED, JobState

if TYPE_CHECKING:
    from airflow_gpu.jobs.watcher import JobWatcher

T = TypeVar("T")
#: The reason a job stopped by Ctrl-C carries (Batch's statusReason, the task's error).
CTRL_C_REASON = "interrupted (Ctrl-C) while {where} waited for it"


class _Interrupted(enum.Enum):
    # A one-member enum, so that a type checker narrows ``result is INTERRUPTED`` (a plain object would not).
    INTERRUPTED = "INTERRUPTED"

    def __repr__(self) -> str:
        return "INTERRUPTED"


#: What :func:`wait_unless_interrupted` returns when SIGINT ended the wait.
INTERRUPTED = _Interrupted.INTERRUPTED


def _ctrl_c_unclaimed() -> bool:
    """Is SIGINT still Python's KeyboardInterrupt (or asyncio.run's, which raises it)? A process
    that installed its own handler (a triggerer, a supervisor) decides itself what Ctrl-C means."""
    handler = signal.getsignal(signal.SIGINT)
    runner = getattr(asyncio, "Runner", ())  # Python 3.11+; 3.10's asyncio.run leaves the default
    bound = getattr(handler, "func", handler)  # asyncio.run installs a partial of Runner._on_sigint
    return handler is signal.default_int_handler or isinstance(getattr(bound, "__self__", None), runner)


async def wait_unless_interrupted(awaitable: Awaitable[T]) -> T | _Interrupted:
    """``await awaitable``, unless SIGINT arrives first: then it is cancelled and INTERRUPTED returned.

    The SIGINT handler in force before (Python's, or asyncio.run's) is put back afterwards.
    """
    work = asyncio.ensure_future(awaitable)
    loop = asyncio.get_running_loop()
    if threading.current_thread() is not threading.main_thread() or not _ctrl_c_unclaimed():
        return await work
    interrupted = asyncio.Event()
    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    except (NotImplementedError, RuntimeError, ValueError):  # no signal support on this loop
        return await work
    stop = asyncio.ensure_future(interrupted.wait())
    try:
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)
        if not work.done():
            work.cancel()
    if interrupted.is_set() and not (work.done() and not work.cancelled() and work.exception() is None):
        try:
            await work  # let it unwind (close its watch) before the caller terminates the job
        except asyncio.CancelledError:
            pass
        except Exception:  # a failure while unwinding matters less than the stop the user asked for
            pass
        return INTERRUPTED
    return work.result()


async def terminate_interrupted(watcher: JobWatcher, job_id: str, where: str) -> JobState:
    """Terminate the job the user stopped waiting for; its state, FAILED with the reason.

    Batch takes a while to move a terminated job to FAILED; the state returned says FAILED
    at once (the job is on its way there), with what Batch reported still in the reason.
    """
    reason = CTRL_C_REASON.format(where=where)
    async with watcher.backend() as backend:
        await backend.terminate(job_id, reason)
        found = await backend.describe([job_id])
    state = found[0] if found else JobState(job_id=job_id, status=FAILED)
    if state.is_terminal:
        return dataclasses.replace(state, status_reason=reason)
    return dataclasses.replace(state, status=FAILED, status_reason=f"{reason}; terminated (it was {state.status})")


__all__ = ["CTRL_C_REASON", "INTERRUPTED", "terminate_interrupted", "wait_unless_interrupted"]
