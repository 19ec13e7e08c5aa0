"""The synchronous facade the operator (and a terminal) calls, as a provider's operator calls its hook.

Each method is one I/O step on the same backend and watcher the triggerer uses, so both
paths behave alike: submit or reattach, wait, read a log's tail, describe, terminate.
Each runs on a short-lived event loop of its own and closes that loop's watchers (and so
its clients) before returning: nothing outlives the call.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from airflow_gpu.jobs.backend import SUCCEEDED, BackendTarget, JobBackend, JobState
from airflow_gpu.jobs.cost import JobUsage
from airflow_gpu.jobs.interrupt import INTERRUPTED, terminate_interrupted, wait_unless_interrupted
from airflow_gpu.jobs.ownership import deferred_try, superseded
from airflow_gpu.jobs.placement import waiting_line
from airflow_gpu.jobs.spec import TAG_DEFERRED_TRY, JobSpec
from airflow_gpu.jobs.watcher import JobWatcher, follow_job

T = TypeVar("T")

#: Log lines quoted in the error of a failed job.
TAIL_LINES = 20


class TaskLog(Protocol):
    """Where a caller's progress goes: a stdlib logger, or Airflow's task logger (which is not one)."""

    def info(self, msg: str, /, *args: Any) -> None: ...

    def warning(self, msg: str, /, *args: Any) -> None: ...


def run_blocking(fn: Callable[[], Awaitable[T]], *, in_thread: bool = False, timeout: float | None = None) -> T:
    """Run ``fn()`` to completion on a fresh event loop and return its result.

    ``in_thread=True`` runs the loop in a new thread; ``on_kill`` needs that, since
    it may run in a signal handler while this thread's own loop is suspended.
    A thread is also used when the calling thread already runs a loop.
    """

    async def main() -> T:
        try:
            if timeout is None:
                return await fn()
            return await asyncio.wait_for(fn(), timeout)
        finally:
            await JobWatcher.close_all()

    if not in_thread:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())

    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = asyncio.run(main())
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="airflow-gpu-blocking", daemon=True)
    thread.start()
    thread.join(None if timeout is None else timeout + 5)
    if thread.is_alive():
        raise TimeoutError(f"gave up waiting {timeout} s for the job backend")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


@dataclass(frozen=True)
class JobView:
    """A job as one call left it: its state, its web pages, and (for a failure) its last log lines."""

    state: JobState
    job_url: str | None = None
    log_url: str | None = None
    reattached: bool = False
    log_lines: tuple[str, ...] = ()
    #: Found, not submitted: a job an earlier try of this task instance submitted.
    earlier: bool = False


async def submit_or_reattach(
    backend: JobBackend, spec: JobSpec, *, reattach: bool, log: TaskLog, try_number: int | None = None
) -> tuple[JobState, bool]:
    """This task instance's live or succeeded job when ``reattach`` finds one (by its idempotency
    key), else a new job; and whether it was a live one reattached to. The one rule for every
    submitter: a worker (:class:`BlockingJobs`) and the triggerer (``start_from_trigger``).

    With ``try_number``, a live job that an earlier try deferred on is superseded: that try was
    cleared or marked, so the job is terminated here (unless its trigger did so already) and never
    reattached to (airflow_gpu/jobs/ownership.py)."""
    state, reattached, _ = await _submit_or_find(backend, spec, reattach=reattach, log=log, try_number=try_number)
    return state, reattached


async def _submit_or_find(
    backend: JobBackend, spec: JobSpec, *, reattach: bool, log: TaskLog, try_number: int | None = None
) -> tuple[JobState, bool, bool]:
    """:func:`submit_or_reattach`, and whether the job was found (an earlier try's) rather than submitted."""
    state, reattached = None, False
    found = await backend.find(spec) if reattach or try_number is not None else []
    if try_number is not None:  # also without reattach: nobody else may end a superseded job
        found = [s for s in found if not await _ended_if_superseded(backend, s, spec, try_number, log)]
    if reattach:
        state = next((s for s in found if s.is_live), None) or next((s for s in found if s.status == SUCCEEDED), None)
        if state is not None and state.is_live:
            reattached = True
            log.info(
                "Reattaching to job %s (%s), already %s for this task instance", state.job_id, spec.name, state.status
            )
        elif found:
            log.info("Earlier jobs for this task instance failed; submitting a new one")
    if state is not None:
        return state, reattached, True
    state = await backend.submit(spec)
    log.info(
        "Submitted job %s (%s) to %s, queue %s, %d GPU(s)",
        state.job_id,
        spec.name,
        backend.location,
        spec.queue,
        spec.gpus,
    )
    return state, reattached, False


async def _ended_if_superseded(
    backend: JobBackend, state: JobState, spec: JobSpec, try_number: int, log: TaskLog
) -> bool:
    if not superseded(state, try_number):
        return False
    reason = (
        f"Airflow task {spec.identity.describe()} was cleared or marked while try {deferred_try(state)} waited "
        f"for this job; try {try_number} runs a new one"
    )
    log.warning("Terminating job %s: %s", state.job_id, reason)
    await backend.terminate(state.job_id, reason)
    return True


async def claim(backend: JobBackend, state: JobState, try_number: int, log: TaskLog) -> None:
    """Tag the job with the try that defers on it, so that a later try never reattaches to it
    after a clear. Best effort: without the tag, a clear's next try may reattach to the job its
    clear is ending, and then resubmits when it sees that (GpuBatchOperator.execute_complete)."""
    if deferred_try(state) == try_number:
        return
    try:
        await backend.add_tags(state.job_id, {TAG_DEFERRED_TRY: str(try_number)})
    except Exception as exc:
        log.warning(
            "Could not tag job %s with the try that waits for it (%s); a clear's next try may reattach to it",
            state.job_id,
            exc,
        )


class BlockingJobs:
    """One backend target, reached synchronously. ``log`` is the caller's logger (the task log)."""

    def __init__(self, target: BackendTarget, log: TaskLog) -> None:
        self.target = target
        self.log = log

    def _view(self, backend: JobBackend, state: JobState, **more: Any) -> JobView:
        return JobView(state, backend.job_url(state.job_id), backend.log_url(state), **more)

    def submit_or_reattach(
        self, spec: JobSpec, *, reattach: bool, try_number: int | None = None, claim_for_deferral: bool = False
    ) -> JobView:
        """This task instance's live or succeeded job when ``reattach`` finds one; else a new job.
        ``claim_for_deferral``: tag a live job with ``try_number`` (see :func:`claim`), in the same
        session, so the backend knows the job's address from the submit or the search."""

        async def call() -> JobView:
            async with JobWatcher.shared(self.target).backend() as backend:
                state, reattached, earlier = await _submit_or_find(
                    backend, spec, reattach=reattach, log=self.log, try_number=try_number
                )
                if claim_for_deferral and try_number is not None and state.is_live:
                    await claim(backend, state, try_number, self.log)
                return self._view(backend, state, reattached=reattached, earlier=earlier)

        return run_blocking(call)

    def wait(self, job_id: str, *, poll_interval: float, max_queued: float | None, who: str) -> JobView:
        """Follow the job here, as the trigger would, to its final state (with the log's tail on failure).

        Ctrl-C (``airflow dags test``, ``airflow tasks test``) ends the wait and terminates the job,
        naming ``who`` waited: this process is the job's only watcher, so nobody else would stop it.
        """

        async def call() -> JobView:
            watcher = JobWatcher.shared(self.target)
            async with watcher.watch(job_id, poll_interval=poll_interval, max_queued=max_queued) as watch:
                final = await wait_unless_interrupted(
                    follow_job(watch, on_change=lambda s: self.log.info(waiting_line(s.job_id, s.status, s.blocked)))
                )
            if final is INTERRUPTED:
                final = await terminate_interrupted(watcher, job_id, who)
                self.log.warning("Ctrl-C: terminated job %s", job_id)
            async with watcher.backend() as backend:
                lines = () if final.status == SUCCEEDED else await self._tail(backend, final)
                return self._view(backend, final, log_lines=lines)

        return run_blocking(call)

    def tail(self, state: JobState) -> JobView:
        """The job's last log lines; none (with a warning) when the log cannot be read."""
        if not state.log_stream:
            return JobView(state)

        async def call() -> JobView:
            async with JobWatcher.shared(self.target).backend() as backend:
                return self._view(backend, state, log_lines=await self._tail(backend, state))

        try:
            return run_blocking(call, timeout=60)
        except Exception as exc:
            self.log.warning("Could not read the last log lines of job %s: %s", state.job_id, exc)
            return JobView(state)

    async def _tail(self, backend: JobBackend, state: JobState) -> tuple[str, ...]:
        try:
            return tuple((await backend.read_logs(state, tail=TAIL_LINES)).lines)
        except Exception as exc:  # the failure matters more than its log
            self.log.warning("Could not read the last log lines of job %s: %s", state.job_id, exc)
            return ()

    def describe(self, job_id: str, *, timeout: float = 60) -> JobState | None:
        """The job's current state, or None when the backend does not know it."""

        async def call() -> JobState | None:
            async with JobWatcher.shared(self.target).backend() as backend:
                found = await backend.describe([job_id])
                return found[0] if found else None

        return run_blocking(call, timeout=timeout)

    def usage(self, job_id: str, *, timeout: float = 60) -> JobUsage | None:
        """Where and how long the job ran, for its bill; None when the backend cannot tell."""

        async def call() -> JobUsage | None:
            async with JobWatcher.shared(self.target).backend() as backend:
                found = await backend.usage([job_id])
                return found[0] if found else None

        return run_blocking(call, timeout=timeout)

    def terminate(
        self,
        job_id: str | None,
        reason: str,
        *,
        find: JobSpec | None = None,
        in_thread: bool = False,
        timeout: float = 60,
    ) -> str | None:
        """Stop ``job_id`` (or, without one, the live job ``find`` identifies); the id stopped, or None.

        ``in_thread=True`` for ``on_kill``, which may run in a signal handler while this
        thread's own loop is suspended.
        """

        async def call() -> str | None:
            async with JobWatcher.shared(self.target).backend() as backend:
                target_id = job_id
                if not target_id and find is not None:  # the job id is lost: find it by its idempotency key
                    live = [s for s in await backend.find(find) if s.is_live]
                    target_id = live[0].job_id if live else None
                if target_id:
                    await backend.terminate(target_id, reason)
                return target_id

        return run_blocking(call, in_thread=in_thread, timeout=timeout)
