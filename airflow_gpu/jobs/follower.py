"""Live logs while deferred: one shared log follower per backend target per event loop.

A deferred GPU task should show its container's output in its task log as the job
runs, not only when it fails. Asking each of thousands of triggers to read its own
log stream would cost one call per job per poll, and CloudWatch Logs answers
FilterLogEvents only about 5 times a second per account and region. So, like the
:class:`~airflow_gpu.jobs.watcher.JobWatcher` for job states, one
:class:`LogFollower` per target and loop reads for every trigger:

* every poll interval (the smallest any follow asked for, start to start) it
  sweeps all followed streams through the backend's :class:`LogReader` -- for
  AWS Batch, :class:`CloudWatchLogReader`: FilterLogEvents for up to 100 streams
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
import time
import weakref
from collections import Counter
from typing import Any, Callable, ClassVar, Protocol, Sequence

import botocore.exceptions

from airflow_gpu.jobs.backend import BackendTarget, JobBackend, JobState
from airflow_gpu.jobs.watcher import JobWatcher, detached_task

log = logging.getLogger(__name__)

#: Receives a job's new lines, oldest first.
LineSink = Callable[[list[str]], None]


class LogReader(Protocol):
    """Reads the new lines of many follows and delivers them through :meth:`LogFollow.deliver`."""

    async def read(self, follows: Sequence[LogFollow], *, urgent: bool = False) -> None: ...

    def needs_last_read(self, follow: LogFollow) -> bool:
        """Whether the follow's log is somewhere this reader reads (else there is nothing to wait for)."""
        ...

    def capacity(self, seconds: float) -> int:
        """How many follows urgent reads could serve within ``seconds``, given the rate limit."""
        ...


# -- one follow ------------------------------------------------------------------------------------


class StreamCursor:
    """How far one CloudWatch log stream has been read, robust to what FilterLogEvents does.

    FilterLogEvents interleaves the events of many streams by timestamp, pages with
    ``nextToken``, can put many events on one millisecond, and is eventually
    consistent: an event may become visible a few seconds after events with later
    timestamps were returned. A plain "last timestamp" cursor would then skip it
    (or, re-reading from that timestamp, repeat the events on it). So the cursor is:

    * ``mark``: a time (ms) up to which the stream has been read: the end of the
      last range read to its last page, or -- for a range cut short after some
      pages -- the last timestamp returned (results are sorted by timestamp, so
      everything before it in the range was on the pages read; ``partial`` is then
      set and the next read resumes exactly there);
    * ``seen``: the ids of delivered events whose timestamps are within ``late_ms``
      below the mark.

    After a complete read, the next one starts ``late_ms`` before the mark: events
    re-read from that window are recognised by id and dropped, and an event that
    showed up late in it is delivered (after lines already relayed: arrival order
    is the only order a live view can keep). Events older than the window are
    taken to be relayed already. An id leaves ``seen`` once the mark has moved
    ``late_ms`` past its timestamp, so memory stays proportional to a few seconds
    of output.
    """

    __slots__ = ("mark", "partial", "seen")

    def __init__(self) -> None:
        self.mark: int | None = None
        self.partial = False
        self.seen: dict[str, int] = {}

    def start(self, late_ms: int) -> int | None:
        if self.mark is None:
            return None  # a new stream is read from its beginning
        return self.mark if self.partial else max(0, self.mark - late_ms)

    def accept(self, event_id: str, timestamp: int, late_ms: int) -> bool:
        """True for an event not delivered before (and now marked delivered)."""
        if self.mark is not None and timestamp < self.mark - late_ms:
            return False
        if event_id in self.seen:
            return False
        self.seen[event_id] = timestamp
        return True

    def read_to(self, end: int, late_ms: int) -> None:
        """The range up to ``end`` was read to its last page."""
        if self.mark is None or end >= self.mark:
            self.mark = end
            self.partial = False
        self._prune(late_ms)

    def read_partly(self, last: int | None, late_ms: int) -> None:
        """The range was cut short after events up to ``last`` (None: no events)."""
        if last is not None and (self.mark is None or last >= self.mark):
            self.mark = last
            self.partial = True
        self._prune(late_ms)

    def _prune(self, late_ms: int) -> None:
        if self.seen and self.mark is not None:
            floor = self.mark - late_ms
            stale = [event_id for event_id, ts in self.seen.items() if ts < floor]
            for event_id in stale:
                del self.seen[event_id]


class LogFollow:
    """One owner's interest in one job's log. Lines go to ``sink``; :meth:`close` when done."""

    __slots__ = (
        "follower",
        "job",
        "sink",
        "context",
        "poll_interval",
        "cursor",
        "token",
        "retry_at",
        "misses",
        "lines",
        "finishing",
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
        self.cursor = StreamCursor()  # batched readers (CloudWatch)
        self.token: str | None = None  # per-job readers: the backend's read_logs cursor
        self.retry_at = 0.0  # loop time before which a missing stream is not asked for again
        self.misses = 0
        self.lines = 0  # relayed so far
        self.finishing: asyncio.Future | None = None
        self.closed = False
        self.reading: asyncio.Lock | None = None

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


class GroupMissing(Exception):
    """The log group does not exist (yet)."""


class CloudWatchLogReader:
    """FilterLogEvents for up to 100 streams of one log group per call, with per-stream cursors.

    Streams are grouped by log group and, within a group, ordered by cursor, so the
    streams of one call start from about the same time and a call never re-reads
    one stream's history for the sake of another's. Each call covers a fixed range
    ``[min start, now]`` and pages through it with ``nextToken``; a range with more
    than ``max_pages`` pages is continued by the next sweep from where it stopped.

    FilterLogEvents fails the whole call when one named stream does not exist; the
    call is then split in halves until the missing streams are singled out, and
    those are asked for again later (see :meth:`LogFollow.missing`).
    """

    streams_per_call: ClassVar[int] = 100
    #: Calls of one sweep in flight at once (the rate limiter sets the pace; this bounds memory).
    max_concurrent_calls: ClassVar[int] = 4
    #: Pages read per range before the rest waits for the next sweep (which resumes where this stopped).
    max_pages: ClassVar[int] = 50
    #: Events per page; None lets CloudWatch fill a page (up to 10,000 events or 1 MB).
    page_limit: ClassVar[int | None] = None
    #: How late (ms) an event may appear after events with later timestamps and still be relayed.
    late_ms: ClassVar[int] = 10_000

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.calls = 0

    def needs_last_read(self, follow: LogFollow) -> bool:
        return bool(follow.job.log_group and follow.stream)

    def capacity(self, seconds: float) -> int:
        # Calls that can start in the first half of the time, so that they also end within it.
        limiter = self.backend.logs_limiter
        wait = limiter.expected_wait(urgent=True)
        if wait > seconds / 2:
            return 0
        return (int((seconds / 2 - wait) * limiter.rate) + 1) * self.streams_per_call

    async def read(self, follows: Sequence[LogFollow], *, urgent: bool = False) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        by_group: dict[str, list[LogFollow]] = {}
        for follow in follows:
            if follow.closed or not follow.job.log_group or not follow.stream:
                continue  # not logging to CloudWatch
            if not urgent and follow.retry_at > now:
                continue
            by_group.setdefault(follow.job.log_group, []).append(follow)
        end_ms = int(time.time() * 1000)
        gate = asyncio.Semaphore(self.max_concurrent_calls)

        async def read_group(group: str, members: list[LogFollow]) -> None:
            members.sort(key=lambda f: -1 if f.cursor.mark is None else f.cursor.mark)
            size = self.streams_per_call
            for i in range(0, len(members), size):
                async with gate:
                    try:
                        await self._read_range(group, members[i : i + size], end_ms, urgent)
                    except GroupMissing:
                        when = loop.time()
                        for follow in members:
                            follow.missing(when)
                        return

        await _gather_all(read_group(group, members) for group, members in by_group.items())

    async def _read_range(self, group: str, follows: list[LogFollow], end_ms: int, urgent: bool) -> None:
        by_stream: dict[str, list[LogFollow]] = {}
        for follow in follows:
            by_stream.setdefault(follow.stream, []).append(follow)  # type: ignore[arg-type]
        late = self.late_ms
        starts = [f.cursor.start(late) for f in follows]
        kwargs: dict[str, Any] = {"logGroupName": group, "logStreamNames": list(by_stream), "endTime": end_ms}
        if None not in starts:
            kwargs["startTime"] = min(starts)  # type: ignore[type-var]
        if self.page_limit:
            kwargs["limit"] = self.page_limit
        last_ts: int | None = None
        complete = False
        for page in range(self.max_pages):
            try:
                self.calls += 1
                reply = await self.backend.filter_log_events(urgent=urgent, **kwargs)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                    raise
                if page:  # a stream vanished mid-range: continue from where we are next time
                    break
                if "stream" not in str(exc).lower():
                    raise GroupMissing(group) from exc
                await self._single_out_missing(group, follows, end_ms, urgent)
                return
            if page == 0:
                for follow in follows:
                    follow.found()
            fresh: dict[LogFollow, list[str]] = {}
            for event in reply.get("events") or ():
                timestamp = event["timestamp"]
                last_ts = timestamp
                for follow in by_stream.get(event.get("logStreamName"), ()):
                    if follow.cursor.accept(event["eventId"], timestamp, late):
                        lines = fresh.get(follow)
                        if lines is None:
                            fresh[follow] = [event["message"]]
                        else:
                            lines.append(event["message"])
            for follow, lines in fresh.items():
                follow.deliver(lines)
            token = reply.get("nextToken")
            if not token:
                complete = True
                break
            kwargs["nextToken"] = token
        for follow in follows:
            if complete:
                follow.cursor.read_to(end_ms, late)
            else:
                follow.cursor.read_partly(last_ts, late)

    async def _single_out_missing(self, group: str, follows: list[LogFollow], end_ms: int, urgent: bool) -> None:
        streams = list(dict.fromkeys(f.stream for f in follows))
        if len(streams) == 1:
            now = asyncio.get_running_loop().time()
            for follow in follows:
                follow.missing(now)
            return
        half = set(streams[: len(streams) // 2])
        await self._read_range(group, [f for f in follows if f.stream in half], end_ms, urgent)
        await self._read_range(group, [f for f in follows if f.stream not in half], end_ms, urgent)


class CursorLogReader:
    """Job by job through ``JobBackend.read_logs(job, cursor=...)``: for backends without a batched
    log API, such as the local backend, whose reads are cheap (a file tail)."""

    max_concurrent_reads: ClassVar[int] = 16

    def __init__(self, backend: JobBackend) -> None:
        self.backend = backend
        self.calls = 0
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
                    self.calls += 1
                    chunk = await self.backend.read_logs(follow.job, cursor=follow.token)
                except Exception as exc:
                    if follow not in self._warned:
                        self._warned.add(follow)
                        log.warning("Cannot read the log of job %s yet: %s", follow.job.job_id, exc)
                    follow.missing(asyncio.get_running_loop().time())
                    return
                follow.found()
                follow.token = chunk.cursor
                follow.deliver(chunk.lines)

        await _gather_all(one(f) for f in follows if urgent or f.retry_at <= now)


# -- the shared follower ---------------------------------------------------------------------------

_FOLLOWERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[BackendTarget, LogFollower]] = (
    weakref.WeakKeyDictionary()
)


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
        self._intervals: Counter[float] = Counter()
        self._task: asyncio.Task | None = None
        self._reader: LogReader | None = None
        self._ready: asyncio.Future | None = None
        self._drains: list[LogFollow] = []
        self._drain_task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._failing = False
        self._unreported = 0
        self.sweeps = 0
        self.unfinished = 0  # last reads given up on (the log API was busy)

    @classmethod
    def shared(cls, target: BackendTarget) -> LogFollower:
        loop = asyncio.get_running_loop()
        for other in [lp for lp in _FOLLOWERS if lp.is_closed()]:
            _FOLLOWERS.pop(other, None)
        per_loop = _FOLLOWERS.setdefault(loop, {})
        follower = per_loop.get(target)
        if follower is None:
            follower = per_loop[target] = cls(target)
        return follower

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def followed(self) -> int:
        return len(self._follows)

    @property
    def reader(self) -> LogReader | None:
        return self._reader

    @property
    def interval(self) -> float:
        return min(self._intervals) if self._intervals else 30.0

    def follow(self, job: JobState, sink: LineSink, *, poll_interval: float = 30.0) -> LogFollow:
        """Start relaying ``job``'s log lines to ``sink`` (called in the owner's context)."""
        follow = LogFollow(self, job, sink, float(poll_interval))
        faster = not self._intervals or follow.poll_interval < min(self._intervals)
        self._follows[follow] = None
        self._intervals[follow.poll_interval] += 1
        if not self.running:
            self._ready = asyncio.get_running_loop().create_future()
            self._task = detached_task(self._run(), f"airflow-gpu log follower {self.target}")
        elif faster:
            self._wake.set()
        return follow

    def _drop(self, follow: LogFollow) -> None:
        if follow in self._follows:
            del self._follows[follow]
            self._intervals[follow.poll_interval] -= 1
            if self._intervals[follow.poll_interval] <= 0:
                del self._intervals[follow.poll_interval]
        if not self._follows:
            self._wake.set()  # let the sweep loop end and release the backend

    # -- sweeping ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        ready = self._ready
        try:
            # The watcher owns the backend, so states and logs share one client per target.
            async with JobWatcher.shared(self.target).backend() as backend:
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
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.gather_delay
        last_start: float | None = None
        while self._follows:
            wait = next_at - loop.time()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                if last_start is not None:
                    next_at = min(next_at, last_start + self.interval)
                continue
            last_start = loop.time()
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
            next_at = last_start + self.interval

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
            done = follow.finishing = asyncio.get_running_loop().create_future()
            self._drains.append(follow)
            if self._drain_task is None or self._drain_task.done():
                self._drain_task = detached_task(self._drain(timeout), f"airflow-gpu last log reads {self.target}")
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
            count, self.target, self.final_read_timeout,
        )

    async def _drain(self, within: float) -> None:
        """Last reads for jobs that ended, batched; each batch is given ``within`` seconds."""
        loop = asyncio.get_running_loop()
        while self._drains:
            await asyncio.sleep(self.gather_delay)  # jobs ending together share their calls
            batch, self._drains = [f for f in self._drains if not f.closed], []
            reader = self._reader
            room = reader.capacity(within) if reader is not None else 0
            chosen, late = batch[:room], batch[room:]
            _settle_all(late, False)
            if not chosen:
                continue
            deadline = loop.call_later(within, _settle_all, chosen, False)  # one timer per batch
            try:
                await reader.read(chosen, urgent=True)  # type: ignore[union-attr]
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
        for task in (self._task, self._drain_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @classmethod
    async def close_all(cls) -> None:
        for follower in list(_FOLLOWERS.get(asyncio.get_running_loop(), {}).values()):
            await follower.aclose()


def _settle_all(follows: Sequence[LogFollow], read: bool) -> None:
    for follow in follows:
        if follow.finishing is not None and not follow.finishing.done():
            follow.finishing.set_result(read)


async def _gather_all(coros: Any) -> None:
    """Run all to the end, then raise the first error: one failing group must not orphan the others."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result

