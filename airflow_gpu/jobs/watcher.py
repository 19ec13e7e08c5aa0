"""JobWatcher: one polling loop per backend target per event loop, fanning states out to watches.

A triggerer may run thousands of ``GpuBatchJobTrigger`` s in one event loop.
Each of them asking Batch about its own job would cost one client and one
DescribeJobs call per job per poll; the account's API rate limit and one CPU
core run out long before the GPUs do. So every trigger on a loop registers a
:class:`JobWatch` with the loop's shared watcher for its target (backend,
connection, region), and the watcher:

* polls through the loop's one backend (one client) for that target, held by its
  :class:`~airflow_gpu.jobs.lease.ClientLease`, which the log follower shares;
* every cycle, describes all watched, non-terminal jobs in chunks of
  ``describe_batch_size`` (100 for Batch), a few chunks in flight at once;
* hands each watch the job's state only when it changed, by resolving the
  future the watch's owner awaits -- no per-trigger task, timer or queue;
* closes with its lease, ``ClientLease.grace_period`` seconds after the last
  watch, lease or follower leaves, so a burst of triggers ending and starting does
  not churn clients.

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

**Spread.** With more than one chunk, the chunks of a cycle start spread over its first
``spread`` share of the interval (half), in the same order every cycle, so each job is still
described once per interval, but the jobs that ended during one interval are not all seen in
one instant. Seen together, 2,000 ends fire 2,000 events at once, and Airflow's triggerer turns
them into task state one by one (its runner logs each event before it queues it, and its
supervisor writes each to the database between reads of the runner's socket): the last of the
burst fired up to 19 s after its job was seen (benchmarks/README.md, "Triggerer scale through
Airflow"). The second half of the interval stays free of calls, so cycles stay apart. The
offsets are shares of the interval, so a faster watch arriving mid-cycle brings the rest of the
cycle forward: its job is described in the next cycle, which need not wait out a slower spread.

**Queue time.** ``max_queued`` is checked once per cycle against the job's own
queue time (from Batch's timestamps, so it survives a triggerer restart); its
precision is therefore one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import replace
from typing import AsyncContextManager, Callable, ClassVar, Sequence

from airflow_gpu.jobs.backend import (
    FAILED,
    STOPPED_FOR_MAX_QUEUED,
    STOPPED_FOR_NEVER_STARTS,
    UNKNOWN,
    BackendTarget,
    JobBackend,
    JobState,
)
from airflow_gpu.jobs.backoff import RetryPolicy, SharedBackoff, StillFailing
from airflow_gpu.jobs.clock import wall_time
from airflow_gpu.jobs.lease import ClientLease, LeaseClosed
from airflow_gpu.jobs.placement import never_starts_reason
from airflow_gpu.jobs.poll_errors import JobIdsRejected, not_seen_reason, rejected_reason
from airflow_gpu.jobs.shared import DEFAULT_POLL_INTERVAL, Cadence, PerLoop, detached_task
from airflow_gpu.jobs.spec import JobSpecError

log = logging.getLogger(__name__)

DESCRIBE_ERROR_GRACE_ENV = "AIRFLOW_GPU_DESCRIBE_ERROR_GRACE"


def _retry_within_grace(exc: BaseException) -> bool:
    return not isinstance(exc, (StillFailing, LeaseClosed, JobSpecError))


def _seconds_from_env(text: str, default: float) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        log.warning(
            "Ignoring %s=%r (not a number of seconds >= 0); using %g s", DESCRIBE_ERROR_GRACE_ENV, text, default
        )
        return default
    return value


class WatcherClosed(LeaseClosed):
    """The watcher was closed while a watch still waited on it."""


class JobWatch:
    """One owner's interest in one job. Await :meth:`next_change`; :meth:`close` when done (idempotent)."""

    __slots__ = (
        "job_id",
        "poll_interval",
        "max_queued",
        "watcher",
        "queued_for",
        "_state",
        "_fresh",
        "_waiter",
        "_error",
        "_closed",
    )

    def __init__(self, watcher: JobWatcher, job_id: str, poll_interval: float, max_queued: float | None) -> None:
        self.watcher = watcher
        self.job_id = job_id
        self.poll_interval = poll_interval
        self.max_queued = max_queued
        #: Seconds the job had queued when it passed ``max_queued``; None until then.
        self.queued_for: float | None = None
        self._state: JobState | None = None
        self._fresh = False
        self._waiter: asyncio.Future[None] | None = None
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


_WATCHERS: PerLoop[BackendTarget, JobWatcher] = PerLoop()


class JobWatcher:
    #: Seconds a new watcher waits before its first cycle, to batch triggers starting together.
    gather_delay: ClassVar[float] = 0.05
    #: DescribeJobs calls in flight at once within a cycle.
    max_concurrent_calls: ClassVar[int] = 8
    #: Share of the interval over which a cycle's chunks start (see "Spread" above); 0 starts them together.
    spread: ClassVar[float] = 0.5
    #: Consecutive polls a job may be missing before it is reported UNKNOWN (Batch is
    #: eventually consistent right after SubmitJob).
    unknown_after: ClassVar[int] = 3
    #: Seconds a chunk of jobs may stay undescribable (AccessDenied, another 4xx, credentials that
    #: stay bad) before its triggers end with the reason; the jobs are never terminated for it.
    #: Long enough for a permission to be fixed; set AIRFLOW_GPU_DESCRIBE_ERROR_GRACE (seconds) in the
    #: triggerer's environment to change it. See docs/operator.md.
    describe_error_grace: float = 900.0  # not a ClassVar: the environment sets it per instance
    #: Backoff between those retries (shared by all chunks of one watcher).
    describe_error_policy: ClassVar[RetryPolicy] = RetryPolicy(base=1.0, cap=60.0)

    def __init__(self, target: BackendTarget) -> None:
        self.target = target
        self._watches: dict[str, list[JobWatch]] = {}
        self._latest: dict[str, JobState] = {}
        self._pending: dict[str, None] = {}  # ids still polled (not terminal), in watch order
        self._misses: dict[str, int] = {}
        self._cadence = Cadence()
        self._lease = ClientLease.shared(target)
        self._lease.on_close(self.aclose)  # the watcher lives as long as its client
        self._poll_task: asyncio.Task[None] | None = None
        self._closed = False
        self.cycles = 0
        grace = os.environ.get(DESCRIBE_ERROR_GRACE_ENV)
        if grace:
            self.describe_error_grace = _seconds_from_env(grace, type(self).describe_error_grace)
        self._describe_errors = SharedBackoff(
            f"Describing jobs on {target.backend}", _retry_within_grace, self.describe_error_policy, log
        )

    # -- entry points -----------------------------------------------------------------------------

    @classmethod
    def shared(cls, target: BackendTarget) -> JobWatcher:
        """The running loop's watcher for ``target``, created on first use."""
        return _WATCHERS.get(target, cls, stale=lambda watcher: watcher._closed)

    @classmethod
    def active(cls) -> list[JobWatcher]:
        """Watchers open on the running loop (for tests and diagnostics)."""
        return _WATCHERS.values()

    @classmethod
    async def close_all(cls) -> None:
        """Close every watcher and client of the running loop now (a worker's loop is about to end)."""
        for watcher in cls.active():
            await watcher.aclose()
        await ClientLease.close_all()  # a follower's, where no watcher was asked for

    def watch(
        self, job_id: str, *, poll_interval: float = DEFAULT_POLL_INTERVAL, max_queued: float | None = None
    ) -> JobWatch:
        if self._closed:
            raise WatcherClosed("this watcher is closed; get a fresh one with JobWatcher.shared()")
        self._lease.acquire()
        watch = JobWatch(self, job_id, float(poll_interval), max_queued)
        faster = self._cadence.add(watch.poll_interval)
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
            self._cadence.wake()
        return watch

    def backend(self) -> AsyncContextManager[JobBackend]:
        """Lease the shared backend (terminate, read logs); the watcher stays open while leased."""
        return self._lease.backend()

    @property
    def interval(self) -> float:
        return self._cadence.interval

    @property
    def watched(self) -> int:
        return len(self._watches)

    @property
    def idle(self) -> bool:
        """No watch, no lease and no follower: closing now takes nothing from anyone."""
        return self._lease.idle

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def backend_instance(self) -> JobBackend | None:
        """The backend if it is open (for tests)."""
        return self._lease.instance

    async def aclose(self) -> None:
        """Close now: stop polling, fail remaining watches, close the client."""
        if self._closed:
            return
        self._closed = True
        _WATCHERS.forget(self.target, self)
        if self._poll_task is not None and not self._poll_task.done():
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        for watches in self._watches.values():
            for watch in watches:
                watch._fail(WatcherClosed(f"the watcher for {self.target} closed"))
        await self._lease.aclose()

    def _release_watch(self, watch: JobWatch) -> None:
        entry = self._watches.get(watch.job_id)
        if entry is not None and watch in entry:
            entry.remove(watch)
            if not entry:
                del self._watches[watch.job_id]
                self._latest.pop(watch.job_id, None)
                self._pending.pop(watch.job_id, None)
                self._misses.pop(watch.job_id, None)
        self._cadence.remove(watch.poll_interval)
        self._lease.release()

    # -- polling ----------------------------------------------------------------------------------

    async def _open_backend(self) -> JobBackend | None:
        """The backend, its opening retried like a failed poll (a connection or role lookup that
        fails for a while fails no job); a connection the user set up wrong fails the watches at once."""
        try:
            return await self._lease.open_retrying(self._describe_errors, give_up_after=self.describe_error_grace)
        except StillFailing as blind:
            log.error(
                "Cannot open %s for %s after %.0f s: %s", self.target.backend, self.target, blind.seconds, blind.error
            )
            where = f"{self.target.backend} (connection {self.target.conn_id!r})"
            seconds, error = blind.seconds, blind.error  # the except clause unbinds ``blind`` when it ends
            self._report(list(self._watches), lambda job_id: not_seen_reason(job_id, where, seconds, error))
        except Exception as exc:
            log.error("Cannot open %s for %s: %s", self.target.backend, self.target, exc)
            for watches in list(self._watches.values()):
                for watch in watches:
                    watch._fail(exc)
        return None

    async def _poll_loop(self) -> None:
        backend = await self._open_backend()
        if backend is None:
            return

        async def cycle() -> None:
            await self._poll_once(backend)
            self.cycles += 1

        await self._cadence.run(cycle, while_=lambda: bool(self._pending), first_delay=self.gather_delay)

    async def _poll_once(self, backend: JobBackend) -> None:
        ids = list(self._pending)
        size = backend.describe_batch_size
        chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
        step = self.spread / len(chunks) if len(chunks) > 1 else 0.0
        gate = asyncio.Semaphore(self.max_concurrent_calls)
        started = asyncio.get_running_loop().time()
        await asyncio.gather(
            *(
                self._describe_chunk(backend, chunk, gate, started=started, share=k * step)
                for k, chunk in enumerate(chunks)
            )
        )

    async def _describe_chunk(
        self, backend: JobBackend, chunk: list[str], gate: asyncio.Semaphore, *, started: float, share: float
    ) -> None:
        """Describe one chunk, ``share`` of the interval after the cycle ``started``. A failed poll
        decides no job's fate: it is retried with backoff for ``describe_error_grace`` seconds, and
        even then the jobs are reported unseen, never failed."""
        if share > 0:
            # In shares, not seconds: a faster watch arriving mid-cycle brings the rest of the cycle
            # forward, so its own first describe (next cycle) is not held up by a slower interval's spread.
            await self._cadence.sleep_until(lambda: started + share * self.interval)

        async def attempt() -> tuple[list[str], Sequence[JobState], list[str], BaseException | None]:
            asked = [job_id for job_id in chunk if job_id in self._watches]  # some may have left meanwhile
            if not asked:
                return asked, [], [], None
            states, rejected, error = await self._bisect(backend, asked, gate)
            if rejected and len(rejected) == len(asked):
                assert error is not None  # _bisect returns its error with every rejected id
                raise error  # nothing in the batch was accepted: not proven to be the ids' fault
            return asked, states, rejected, error

        try:
            asked, states, rejected, error = await self._describe_errors.call_within(
                attempt, grace=self.describe_error_grace
            )
        except StillFailing as blind:
            log.error(
                "Describing %d jobs on %s failed for %.0f s: %s",
                len(chunk),
                backend.location,
                blind.seconds,
                blind.error,
            )
            seconds, failure = blind.seconds, blind.error  # the except clause unbinds ``blind`` when it ends
            self._report(
                [j for j in chunk if j in self._watches],
                lambda job_id: not_seen_reason(job_id, backend.location, seconds, failure),
            )
            return
        if rejected:
            assert error is not None  # _bisect returns its error with every rejected id
            self._report(rejected, lambda job_id: rejected_reason(job_id, backend.location, error))
        self._apply(backend, [j for j in asked if j not in rejected], states)

    async def _bisect(
        self, backend: JobBackend, ids: list[str], gate: asyncio.Semaphore
    ) -> tuple[list[JobState], list[str], BaseException | None]:
        """Describe ``ids``; when the request is refused for its ids, split it to find the ones refused alone."""
        try:
            async with gate:
                return list(await backend.describe(ids)), [], None
        except JobIdsRejected as exc:
            if len(ids) == 1:
                return [], list(ids), exc
        middle = len(ids) // 2
        (left, left_bad, left_error), (right, right_bad, right_error) = await asyncio.gather(
            self._bisect(backend, ids[:middle], gate), self._bisect(backend, ids[middle:], gate)
        )
        return left + right, left_bad + right_bad, left_error or right_error

    def _report(self, job_ids: Sequence[str], reason: Callable[[str], str]) -> None:
        """End the watches of jobs the watcher cannot follow, as UNKNOWN with a reason: the job itself is left alone."""
        for job_id in job_ids:
            watches = self._watches.get(job_id)
            if not watches:
                continue
            state = JobState(job_id=job_id, status=UNKNOWN, status_reason=reason(job_id))
            self._latest[job_id] = state
            self._pending.pop(job_id, None)
            for watch in watches:
                watch._deliver(state)

    def _apply(self, backend: JobBackend, chunk: Sequence[str], states: Sequence[JobState]) -> None:
        now = wall_time()  # queued_since is epoch seconds, from the job system
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
                or previous.blocked != state.blocked  # a blocked reason appears, changes or clears
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


# -- following one job to its end -----------------------------------------------------------------


def queued_too_long_reason(queued_for: float, status: str, max_queued: float | None) -> str:
    return (
        f"no GPU capacity for {int(queued_for)} s: the job stayed {status} longer than "
        f"max_queued={max_queued:g} s, so airflow-gpu terminated it"
    )


async def follow_job(watch: JobWatch, *, on_change: Callable[[JobState], None] | None = None) -> JobState:
    """Wait for the watched job's final state; terminate it if it queues past ``max_queued``,
    or at once if the backend says it can never start (a misconfigured queue).

    Returns a terminal state (SUCCEEDED, FAILED) or UNKNOWN. Shared by the
    trigger (in the triggerer) and the operator's blocking path (in a worker),
    so both behave the same. ``on_change`` sees every other change, a blocked
    reason's included, once.
    """
    while True:
        state = await watch.next_change()
        stop: tuple[str, str] | None = None
        if state.blocked is not None and state.blocked.never_starts:
            stop = (STOPPED_FOR_NEVER_STARTS, never_starts_reason(state.blocked))
        elif watch.queued_for is not None and not state.is_terminal:
            stop = (STOPPED_FOR_MAX_QUEUED, queued_too_long_reason(watch.queued_for, state.status, watch.max_queued))
        if stop is not None:
            why, reason = stop
            async with watch.watcher.backend() as backend:
                await backend.terminate(watch.job_id, reason)
            return replace(state, status=FAILED, status_reason=reason, exit_code=None, blocked=None, stopped_for=why)
        if on_change is not None:
            on_change(state)
        if state.is_terminal:
            return state
