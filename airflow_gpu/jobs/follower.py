"""Live logs while deferred: one shared log follower per backend target per event loop.

A deferred GPU task should show its container's output in its task log as the job
runs, not only when it fails. Asking each of thousands of triggers to read its own
log stream would cost one call per job per poll, and CloudWatch Logs answers
FilterLogEvents only about 5 times a second per account and region. So, like the
:class:`~airflow_gpu.jobs.watcher.JobWatcher` for job states, one
:class:`LogFollower` per target and loop reads for every trigger:

* every poll interval (the smallest any follow asked for, start to start) it
  sweeps all followed streams through the backend's :class:`LogReader` -- for
  AWS Batch, :class:`~airflow_gpu.jobs.aws.cloudwatch.CloudWatchLogReader`: FilterLogEvents for up to 100 streams
  of one log group per call, paced by one rate limiter per connection, so with
  many jobs the sweep takes longer (lines arrive later) instead of failing;
* it hands each follow its new lines in order, once, through the follow's sink,
  run in the trigger's own context (``contextvars``): the triggerer routes a
  trigger's log records to its task's log by context, and the follower's own
  task belongs to no trigger. The trigger writes one record per read, not one
  per line: a record costs 40-100 us in the triggerer whatever its length;
* when a job ends, its trigger asks for a last read of its stream
  (:meth:`LogFollow.finish`), urgent and batched with other jobs ending at the
  same time. It waits at most ``final_read_timeout`` seconds, and not at all
  when the rate limit could not serve it by then (thousands of jobs ending in
  one poll): the event is never held up by a busy log API. Its event then says
  the live log stopped short (``log_relayed_to_end``), and the triggerer's log
  gets one line per such burst.

Backends without a batched reader (the local backend) are read job by job
through ``JobBackend.read_logs(job, cursor=...)`` by :class:`CursorLogReader`.

A missing stream (not created yet, or deleted), a missing log group, or a job
that does not log to CloudWatch never fails a trigger: those streams are retried
later, with growing pauses, and the job's event is unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import weakref
from typing import Any, Callable, ClassVar, Sequence

from airflow_gpu.jobs.backend import BackendTarget, JobBackend, JobState
from airflow_gpu.jobs.lease import ClientLease
from airflow_gpu.jobs.logs import LogReader
from airflow_gpu.jobs.shared import DEFAULT_POLL_INTERVAL, Cadence, PerLoop, detached_task, gather_then_raise

log = logging.getLogger(__name__)

#: Receives a job's new lines, oldest first.
LineSink = Callable[[list[str]], None]


# -- one follow ------------------------------------------------------------------------------------


class LogFollow:
    """One owner's interest in one job's log. Lines go to ``sink``; :meth:`close` when done.

    What a reader sees of it is :class:`~airflow_gpu.jobs.logs.FollowedLog`."""

    __slots__ = (
        "follower",
        "job",
        "sink",
        "context",
        "poll_interval",
        "cursor",
        "retry_at",
        "misses",
        "lines",
        "finishing",
        "finish_by",
        "closed",
        "reading",
        "__weakref__",
    )

    def __init__(self, follower: LogFollower, job: JobState, sink: LineSink, poll_interval: float) -> None:
        self.follower = follower
        self.job = job
        self.sink = sink
        # The owner's context: a trigger's log records are routed to its task by context.
        self.context = contextvars.copy_context()
        self.poll_interval = poll_interval
        # Where CursorLogReader is in this job's log (a read_logs cursor); None before the first read.
        self.cursor: Any = None
        self.retry_at = 0.0  # loop time before which a missing stream is not asked for again
        self.misses = 0
        self.lines = 0  # relayed so far
        self.finishing: asyncio.Future[bool] | None = None
        self.finish_by = 0.0  # loop time by which the last read must be done, counted from the ask
        self.closed = False
        self.reading: asyncio.Lock | None = None

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def log_group(self) -> str | None:
        return self.job.log_group

    @property
    def stream(self) -> str | None:
        return self.job.log_stream

    def deliver(self, lines: list[str]) -> None:
        """Hand lines to the owner, in the owner's context; never raises into the reader."""
        if self.closed or not lines:
            return
        self.lines += len(lines)
        try:
            self.context.run(self.sink, lines)
        except Exception:
            log.exception("Relaying %d log lines of job %s failed", len(lines), self.job.job_id)

    def missing(self, now: float) -> None:
        """The stream is not there (yet): ask again later, less and less often."""
        self.misses += 1
        self.retry_at = now + min(self.follower.max_missing_pause, self.poll_interval * 2 ** min(self.misses - 1, 8))

    def found(self) -> None:
        self.misses = 0
        self.retry_at = 0.0

    async def finish(self, final: JobState | None = None, *, timeout: float | None = None) -> bool:
        """Read the stream one last time (the job ended), then stop following it.

        ``final`` is the job's last state: a reader may read an ended job's log differently
        (the local backend then also hands over a last line without its newline).
        Waits at most ``timeout`` seconds (default: the follower's ``final_read_timeout``);
        returns False when the last read did not happen in time, e.g. because the
        log API is busy with many other jobs.
        """
        if final is not None and final.log_stream == self.job.log_stream:
            self.job = final
        return await self.follower._finish(self, self.follower.final_read_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Stop following (idempotent). Lines read after this are dropped."""
        if not self.closed:
            self.closed = True
            self.follower._drop(self)


# -- readers ---------------------------------------------------------------------------------------


class CursorLogReader:
    """Job by job through ``JobBackend.read_logs(job, cursor=...)``: for backends without a batched
    log API, such as the local backend, whose reads are cheap (a file tail)."""

    max_concurrent_reads: ClassVar[int] = 16

    def __init__(self, backend: JobBackend) -> None:
        self.backend = backend
        self._warned: weakref.WeakSet[LogFollow] = weakref.WeakSet()

    def needs_last_read(self, follow: LogFollow) -> bool:
        return bool(follow.stream)

    def capacity(self, seconds: float) -> int:
        return 1 << 30  # no rate limit: a file tail is cheap

    async def read(self, follows: Sequence[LogFollow], *, urgent: bool = False) -> None:
        gate = asyncio.Semaphore(self.max_concurrent_reads)
        now = asyncio.get_running_loop().time()

        async def one(follow: LogFollow) -> None:
            if follow.reading is None:
                follow.reading = asyncio.Lock()
            async with gate, follow.reading:  # a sweep and a last read never read one cursor twice
                if follow.closed:
                    return
                try:
                    chunk = await self.backend.read_logs(follow.job, cursor=follow.cursor)
                except Exception as exc:
                    if follow not in self._warned:
                        self._warned.add(follow)
                        log.warning("Cannot read the log of job %s yet: %s", follow.job.job_id, exc)
                    follow.missing(asyncio.get_running_loop().time())
                    return
                follow.found()
                follow.cursor = chunk.cursor
                follow.deliver(chunk.lines)

        await gather_then_raise(one(f) for f in follows if urgent or f.retry_at <= now)


# -- the shared follower ---------------------------------------------------------------------------

_FOLLOWERS: PerLoop[BackendTarget, LogFollower] = PerLoop()

#: A backend's batched reader, or the follower's own job-by-job one.
Reader = LogReader | CursorLogReader


class LogFollower:
    """Sweeps the logs of every followed job of one backend target on one event loop."""

    #: Seconds a new follower waits before its first sweep, to batch follows starting together.
    gather_delay: ClassVar[float] = 0.05
    #: The longest a trigger waits for its job's last log lines before it fires.
    final_read_timeout: ClassVar[float] = 0.5
    #: The longest pause before asking again for a stream that does not exist.
    max_missing_pause: ClassVar[float] = 300.0

    def __init__(self, target: BackendTarget) -> None:
        self.target = target
        self._follows: dict[LogFollow, None] = {}
        self._cadence = Cadence()
        self._task: asyncio.Task[None] | None = None
        self._reader: Reader | None = None
        self._ready: asyncio.Future[Reader] | None = None
        self._drains: list[LogFollow] = []
        self._drain_task: asyncio.Task[None] | None = None
        self._last_reads: set[asyncio.Task[None]] = set()
        self._failing = False
        self._unreported = 0
        self.sweeps = 0
        self.unfinished = 0  # last reads given up on (the log API was busy)

    @classmethod
    def shared(cls, target: BackendTarget) -> LogFollower:
        return _FOLLOWERS.get(target, cls)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def followed(self) -> int:
        return len(self._follows)

    @property
    def reader(self) -> Reader | None:
        return self._reader

    @property
    def interval(self) -> float:
        return self._cadence.interval

    def follow(self, job: JobState, sink: LineSink, *, poll_interval: float = DEFAULT_POLL_INTERVAL) -> LogFollow:
        """Start relaying ``job``'s log lines to ``sink`` (called in the owner's context)."""
        follow = LogFollow(self, job, sink, float(poll_interval))
        self._follows[follow] = None
        faster = self._cadence.add(follow.poll_interval)
        if not self.running:
            self._ready = asyncio.get_running_loop().create_future()
            self._task = detached_task(self._run(), f"airflow-gpu log follower {self.target}")
        elif faster:
            self._cadence.wake()
        return follow

    def _drop(self, follow: LogFollow) -> None:
        if follow in self._follows:
            del self._follows[follow]
            self._cadence.remove(follow.poll_interval)
        if not self._follows:
            self._cadence.wake()  # let the sweep loop end and release the backend

    # -- sweeping ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        ready = self._ready
        try:
            # The lease the watcher uses too, so states and logs share one client per target.
            async with ClientLease.shared(self.target).backend() as backend:
                self._reader = backend.log_reader() or CursorLogReader(backend)
                if ready is not None and not ready.done():
                    ready.set_result(self._reader)
                await self._sweep_loop()
        except Exception as exc:
            log.error("Live logs for %s stopped: %s", self.target, exc)
            if ready is not None and not ready.done():
                ready.set_exception(exc)
                ready.exception()  # retrieved: waiters see it through _finish
        finally:
            self._reader = None

    async def _sweep_loop(self) -> None:
        await self._cadence.run(self._sweep, while_=lambda: bool(self._follows), first_delay=self.gather_delay)

    async def _sweep(self) -> None:
        follows = [f for f in self._follows if f.finishing is None]
        if follows:
            try:
                await self._reader.read(follows)  # type: ignore[union-attr]
            except Exception as exc:  # the next sweep tries again; a trigger never fails for logs
                if not self._failing:
                    log.warning("Reading live logs for %s failed (%s); trying again every poll", self.target, exc)
                self._failing = True
            else:
                if self._failing:
                    log.warning("Reading live logs for %s works again", self.target)
                self._failing = False
        self.sweeps += 1

    # -- last reads --------------------------------------------------------------------------------

    async def _finish(self, follow: LogFollow, timeout: float) -> bool:
        try:
            if follow.closed:
                return False
            if self._reader is None:  # the follower has not opened its backend yet
                if self._ready is None:
                    return self._gave_up()
                try:
                    await asyncio.wait_for(asyncio.shield(self._ready), timeout)
                except Exception:
                    return self._gave_up()
            reader = self._reader
            if reader is None:
                return self._gave_up()
            if not reader.needs_last_read(follow):
                return True  # nothing to read, nothing to wait for
            # Decided now, without waiting, when the log API could not serve it in time anyway:
            # when thousands of jobs end in one poll, most of them fire at once.
            if len(self._drains) >= reader.capacity(timeout):
                return self._gave_up()
            loop = asyncio.get_running_loop()
            done = follow.finishing = loop.create_future()
            follow.finish_by = loop.time() + timeout
            self._drains.append(follow)
            if self._drain_task is None or self._drain_task.done():
                self._drain_task = detached_task(self._drain(), f"airflow-gpu last log reads {self.target}")
            return await done or self._gave_up()
        finally:
            follow.close()

    def _gave_up(self) -> bool:
        self.unfinished += 1
        self._unreported += 1
        if self._unreported == 1:  # one record per burst, in the triggerer's log, not one per task
            asyncio.get_running_loop().call_soon(self._report_unfinished, context=contextvars.Context())
        return False

    def _report_unfinished(self) -> None:
        count, self._unreported = self._unreported, 0
        log.warning(
            "Not relaying the last log lines of %d job(s) that just ended on %s: the log API cannot serve them "
            "within %.1f s, and their triggers fire now (the full logs stay behind the tasks' log links)",
            count,
            self.target,
            self.final_read_timeout,
        )

    async def _drain(self) -> None:
        """Last reads for jobs that ended, batched. Each job's wait counts from its own ask, and a
        batch never waits for an earlier batch's reply: when thousands of jobs end in one poll and
        one reply is slow, the jobs that end meanwhile must not queue behind it (they did: their
        0.5 s limit only started with their own batch; tests/integration/test_logs.py holds a reply at the
        fault proxy to show it). The log API's rate limiter paces the calls in flight."""
        loop = asyncio.get_running_loop()
        while self._drains:
            await asyncio.sleep(self.gather_delay)  # jobs ending together share their calls
            batch, self._drains = [f for f in self._drains if not f.closed], []
            now = loop.time()
            due = [f for f in batch if f.finish_by > now]
            _settle_all([f for f in batch if f.finish_by <= now], False)
            reader = self._reader
            room = reader.capacity(min(f.finish_by for f in due) - now) if reader is not None and due else 0
            chosen, late = due[:room], due[room:]
            _settle_all(late, False)
            if chosen and reader is not None:  # room is 0 without a reader
                read = detached_task(self._last_read(reader, chosen), f"airflow-gpu last log read {self.target}")
                self._last_reads.add(read)
                read.add_done_callback(self._last_reads.discard)

    async def _last_read(self, reader: Reader, chosen: list[LogFollow]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.call_at(min(f.finish_by for f in chosen), _settle_all, chosen, False)  # one timer per batch
        try:
            await reader.read(chosen, urgent=True)
        except asyncio.CancelledError:
            _settle_all(chosen, False)
            raise
        except Exception as exc:
            log.warning("Reading the last log lines for %s failed: %s", self.target, exc)
            _settle_all(chosen, False)
        finally:
            deadline.cancel()
            _settle_all(chosen, True)

    async def aclose(self) -> None:
        """Stop following everything now (tests, a loop about to end)."""
        for follow in list(self._follows):
            follow.close()
        for task in (self._task, self._drain_task, *self._last_reads):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @classmethod
    async def close_all(cls) -> None:
        for follower in _FOLLOWERS.values():
            await follower.aclose()


def _settle_all(follows: Sequence[LogFollow], read: bool) -> None:
    for follow in follows:
        if follow.finishing is not None and not follow.finishing.done():
            follow.finishing.set_result(read)
