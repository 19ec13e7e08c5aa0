"""JobWatcher: one polling loop per backend target per event loop, fanning states out to watches.

A triggerer may run thousands of ``GpuBatchJobTrigger`` s in one event loop.
Each of them asking Batch about its own job would cost one client and one
DescribeJobs call per job per poll; the account's API rate limit and one CPU
core run out long before the GPUs do. So every trigger on a loop registers a
:class:`JobWatch` with the loop's shared watcher for its target (backend,
connection, region), and the watcher:

* holds the one backend (one client) for that target;
* every cycle, describes all watched, non-terminal jobs in chunks of
  ``describe_batch_size`` (100 for Batch), a few chunks in flight at once;
* hands each watch the job's state only when it changed, by resolving the
  future the watch's owner awaits -- no per-trigger task, timer or queue;
* closes the client ``grace_period`` seconds after the last user leaves, so a
  burst of triggers ending and starting does not churn clients.

**Poll interval.** When watches ask for different intervals, the watcher polls
every watched job at the *smallest* requested interval. Polling a job more
often than it asked costs nothing extra in API calls until its id needs a new
chunk -- a DescribeJobs call for 37 ids costs the same as one for 36 -- while
keeping per-job schedules would split one cycle into many partly-filled calls
and break the ``ceil(N / 100)`` calls-per-cycle bound that keeps 10,000 jobs
under the rate limit. Cycles start on a fixed cadence (start-to-start), so a
slow cycle does not stretch the interval. A newly created watcher waits
``gather_delay`` before its first cycle, so triggers that start together (a
triggerer restart) share their first calls too.

**Queue time.** ``max_queued`` is checked once per cycle against the job's own
queue time (from Batch's timestamps, so it survives a triggerer restart); its
precision is therefore one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import weakref
from collections import Counter
from dataclasses import replace
from typing import Any, AsyncIterator, Callable, ClassVar, Coroutine, Sequence

from airflow_gpu.jobs.backend import FAILED, UNKNOWN, BackendTarget, JobBackend, JobState, backend_class

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 30.0


class WatcherClosed(RuntimeError):
    """The watcher was closed while a watch still waited on it."""


class JobWatch:
    """One owner's interest in one job. Await :meth:`next_change`; :meth:`close` when done (idempotent)."""

    __slots__ = ("job_id", "poll_interval", "max_queued", "watcher", "queued_for", "_state", "_fresh", "_waiter", "_error", "_closed")

    def __init__(self, watcher: JobWatcher, job_id: str, poll_interval: float, max_queued: float | None) -> None:
        self.watcher = watcher
        self.job_id = job_id
        self.poll_interval = poll_interval
        self.max_queued = max_queued
        #: Seconds the job had queued when it passed ``max_queued``; None until then.
        self.queued_for: float | None = None
        self._state: JobState | None = None
        self._fresh = False
        self._waiter: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._closed = False

    @property
    def state(self) -> JobState | None:
        """The latest state seen (None before the first poll)."""
        return self._state

    @property
    def closed(self) -> bool:
        return self._closed

    async def next_change(self) -> JobState:
        """The job's state once it differs from the last one returned, or once ``max_queued`` has passed.

        Only the latest state is kept: a caller that is slow to come back sees
        the newest state, never a backlog.
        """
        while not self._fresh:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise WatcherClosed(f"the watch on job {self.job_id} is closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._fresh = False
        assert self._state is not None
        return self._state

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wake()
            self.watcher._release_watch(self)

    async def __aenter__(self) -> JobWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- called by the watcher --------------------------------------------------------------------
    def _deliver(self, state: JobState) -> None:
        self._state = state
        self._fresh = True
        self._wake()

    def _expire(self, queued_for: float) -> None:
        if self.queued_for is None and self._state is not None:
            self.queued_for = queued_for
            self._fresh = True
            self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def detached_task(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
    """A task in an empty context. Work shared by all triggers belongs to none of them: in the
    triggerer a record's context decides which task log it goes to, and a plain task would
    inherit the context of whichever trigger happened to start it."""
    loop = asyncio.get_running_loop()
    return contextvars.Context().run(loop.create_task, coro, name=name)


_WATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[BackendTarget, JobWatcher]] = (
    weakref.WeakKeyDictionary()
)


class JobWatcher:
    #: Seconds the client stays open after the last watch or lease ends.
    grace_period: ClassVar[float] = 5.0
    #: Seconds a new watcher waits before its first cycle, to batch triggers starting together.
    gather_delay: ClassVar[float] = 0.05
    #: DescribeJobs calls in flight at once within a cycle.
    max_concurrent_calls: ClassVar[int] = 8
    #: Consecutive polls a job may be missing before it is reported UNKNOWN (Batch is
    #: eventually consistent right after SubmitJob).
    unknown_after: ClassVar[int] = 3

    def __init__(self, target: BackendTarget) -> None:
        self.target = target
        self._watches: dict[str, list[JobWatch]] = {}
        self._latest: dict[str, JobState] = {}
        self._pending: dict[str, None] = {}  # ids still polled (not terminal), in watch order
        self._misses: dict[str, int] = {}
        self._intervals: Counter[float] = Counter()
        self._users = 0
        self._backend_task: asyncio.Task[JobBackend] | None = None
        self._poll_task: asyncio.Task | None = None
        self._closer: asyncio.Task | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self.cycles = 0

    # -- entry points -----------------------------------------------------------------------------

    @classmethod
    def shared(cls, target: BackendTarget) -> JobWatcher:
        """The running loop's watcher for ``target``, created on first use."""
        loop = asyncio.get_running_loop()
        for other in [lp for lp in _WATCHERS if lp.is_closed()]:
            _WATCHERS.pop(other, None)
        per_loop = _WATCHERS.setdefault(loop, {})
        watcher = per_loop.get(target)
        if watcher is None or watcher._closed:
            watcher = per_loop[target] = cls(target)
        return watcher

    @classmethod
    def active(cls) -> list[JobWatcher]:
        """Watchers open on the running loop (for tests and diagnostics)."""
        return list(_WATCHERS.get(asyncio.get_running_loop(), {}).values())

    @classmethod
    async def close_all(cls) -> None:
        """Close every watcher of the running loop now (a worker's loop is about to end)."""
        for watcher in cls.active():
            await watcher.aclose()

    def watch(self, job_id: str, *, poll_interval: float = DEFAULT_POLL_INTERVAL, max_queued: float | None = None) -> JobWatch:
        if self._closed:
            raise WatcherClosed("this watcher is closed; get a fresh one with JobWatcher.shared()")
        self._acquire()
        watch = JobWatch(self, job_id, float(poll_interval), max_queued)
        faster = not self._intervals or watch.poll_interval < min(self._intervals)
        self._intervals[watch.poll_interval] += 1
        entry = self._watches.get(job_id)
        if entry is None:
            self._watches[job_id] = [watch]
        else:
            entry.append(watch)
        latest = self._latest.get(job_id)
        if latest is not None:
            watch._deliver(latest)
        if latest is None or not latest.is_terminal:
            self._pending[job_id] = None
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = detached_task(self._poll_loop(), f"airflow-gpu watcher {self.target}")
        elif faster:
            self._wake.set()
        return watch

    @contextlib.asynccontextmanager
    async def backend(self) -> AsyncIterator[JobBackend]:
        """Lease the shared backend (terminate, read logs); the watcher stays open while leased."""
        self._acquire()
        try:
            yield await self._get_backend()
        finally:
            self._release()

    @property
    def interval(self) -> float:
        return min(self._intervals) if self._intervals else DEFAULT_POLL_INTERVAL

    @property
    def watched(self) -> int:
        return len(self._watches)

    @property
    def idle(self) -> bool:
        """No watch and no lease: closing now takes nothing from anyone."""
        return self._users == 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def backend_instance(self) -> JobBackend | None:
        """The backend if it is open (for tests)."""
        task = self._backend_task
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            return task.result()
        return None

    async def aclose(self) -> None:
        """Close now: stop polling, fail remaining watches, close the client."""
        if self._closed:
            return
        self._closed = True
        per_loop = _WATCHERS.get(asyncio.get_running_loop(), {})
        if per_loop.get(self.target) is self:
            del per_loop[self.target]
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._poll_task is not None and not self._poll_task.done():
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        for watches in self._watches.values():
            for watch in watches:
                watch._fail(WatcherClosed(f"the watcher for {self.target} closed"))
        task = self._backend_task
        if task is not None:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            elif not task.cancelled() and task.exception() is None:
                await task.result().aclose()

    # -- reference counting -----------------------------------------------------------------------

    def _acquire(self) -> None:
        self._users += 1
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def _release(self) -> None:
        self._users -= 1
        if self._users == 0 and not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # released after its loop stopped: nothing left to schedule on
                return
            self._close_timer = loop.call_later(self.grace_period, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._close_timer = None
        if self._users == 0 and not self._closed:
            self._closer = detached_task(self.aclose(), f"airflow-gpu close {self.target}")

    def _release_watch(self, watch: JobWatch) -> None:
        entry = self._watches.get(watch.job_id)
        if entry is not None and watch in entry:
            entry.remove(watch)
            if not entry:
                del self._watches[watch.job_id]
                self._latest.pop(watch.job_id, None)
                self._pending.pop(watch.job_id, None)
                self._misses.pop(watch.job_id, None)
        self._intervals[watch.poll_interval] -= 1
        if self._intervals[watch.poll_interval] <= 0:
            del self._intervals[watch.poll_interval]
        self._release()

    # -- polling ----------------------------------------------------------------------------------

    async def _get_backend(self) -> JobBackend:
        if self._closed:
            raise WatcherClosed(f"the watcher for {self.target} is closed")
        task = self._backend_task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            opener = backend_class(self.target.backend).open(self.target)
            task = self._backend_task = detached_task(opener, f"airflow-gpu open {self.target}")
        return await asyncio.shield(task)

    async def _poll_loop(self) -> None:
        try:
            backend = await self._get_backend()
        except Exception as exc:
            log.error("Cannot open %s for %s: %s", self.target.backend, self.target, exc)
            for watches in list(self._watches.values()):
                for watch in watches:
                    watch._fail(exc)
            return
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.gather_delay
        last_start: float | None = None
        while self._pending:
            wait = next_at - loop.time()
            if wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                else:  # a faster watch arrived: bring the next cycle forward
                    if last_start is not None:
                        next_at = min(next_at, last_start + self.interval)
                continue
            last_start = loop.time()
            await self._poll_once(backend)
            self.cycles += 1
            next_at = last_start + self.interval

    async def _poll_once(self, backend: JobBackend) -> None:
        ids = list(self._pending)
        size = backend.describe_batch_size
        gate = asyncio.Semaphore(self.max_concurrent_calls)

        async def describe(chunk: list[str]) -> None:
            async with gate:
                try:
                    states = await backend.describe(chunk)
                except Exception as exc:  # not transient: the backend already retried those
                    log.error("Describing %d jobs on %s failed: %s", len(chunk), backend.location, exc)
                    self._fail_jobs(chunk, exc)
                    return
            self._apply(backend, chunk, states)

        await asyncio.gather(*(describe(ids[i : i + size]) for i in range(0, len(ids), size)))

    def _apply(self, backend: JobBackend, chunk: Sequence[str], states: Sequence[JobState]) -> None:
        now = time.time()
        watches_of = self._watches
        seen = 0
        for state in states:
            job_id = state.job_id
            watches = watches_of.get(job_id)
            if not watches:
                continue  # released while the call was in flight
            seen += 1
            self._misses.pop(job_id, None)
            previous = self._latest.get(job_id)
            if (
                previous is None
                or previous.status != state.status
                or previous.attempts != state.attempts
                or previous.log_stream != state.log_stream
            ):
                self._latest[job_id] = state
                for watch in watches:
                    watch._deliver(state)
            if state.is_terminal:
                self._pending.pop(job_id, None)
            elif state.queued_since is not None:
                queued_for = now - state.queued_since
                for watch in watches:
                    if watch.max_queued is not None and queued_for > watch.max_queued:
                        watch._expire(queued_for)
        if seen < len(chunk):
            self._count_missing(backend, chunk, {s.job_id for s in states})

    def _count_missing(self, backend: JobBackend, chunk: Sequence[str], found: set[str]) -> None:
        for job_id in chunk:
            if job_id in found or job_id not in self._watches:
                continue
            misses = self._misses.get(job_id, 0) + 1
            self._misses[job_id] = misses
            if misses >= self.unknown_after:
                state = JobState(
                    job_id=job_id,
                    status=UNKNOWN,
                    status_reason=(
                        f"{backend.location} does not know job {job_id} (missing from {misses} polls in a row); "
                        f"check the job id and that the connection points at the job's account and region"
                    ),
                )
                self._latest[job_id] = state
                self._pending.pop(job_id, None)
                for watch in self._watches[job_id]:
                    watch._deliver(state)

    def _fail_jobs(self, chunk: Sequence[str], exc: BaseException) -> None:
        for job_id in chunk:
            for watch in self._watches.get(job_id, ()):
                watch._fail(exc)


# -- following one job to its end -----------------------------------------------------------------


def queued_too_long_reason(queued_for: float, status: str, max_queued: float | None) -> str:
    return (
        f"no GPU capacity for {int(queued_for)} s: the job stayed {status} longer than "
        f"max_queued={max_queued:g} s, so airflow-gpu terminated it"
    )


async def follow_job(watch: JobWatch, *, on_change: Callable[[JobState], None] | None = None) -> JobState:
    """Wait for the watched job's final state; terminate it if it queues past ``max_queued``.

    Returns a terminal state (SUCCEEDED, FAILED) or UNKNOWN. Shared by the
    trigger (in the triggerer) and the operator's blocking path (in a worker),
    so both behave the same.
    """
    while True:
        state = await watch.next_change()
        if watch.queued_for is not None and not state.is_terminal:
            reason = queued_too_long_reason(watch.queued_for, state.status, watch.max_queued)
            async with watch.watcher.backend() as backend:
                await backend.terminate(watch.job_id, reason)
            return replace(state, status=FAILED, status_reason=reason, exit_code=None)
        if on_change is not None:
            on_change(state)
        if state.is_terminal:
            return state
