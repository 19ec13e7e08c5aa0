"""CloudWatch Logs for the log follower: FilterLogEvents over many streams per call, with per-stream cursors.

This is the AWS half of live logs; :mod:`airflow_gpu.jobs.follower` is the backend-neutral
half, and :meth:`AwsBatchBackend.log_reader` hands the follower a :class:`CloudWatchLogReader`.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any, ClassVar, Sequence

import botocore.exceptions

from airflow_gpu.faults import error_code
from airflow_gpu.jobs.logs import FollowedLog
from airflow_gpu.jobs.shared import gather_then_raise


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
    those are asked for again later (see :meth:`FollowedLog.missing`). Each log's
    :class:`StreamCursor` is the reader's own, kept beside the log, not in it.
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
        self._cursors: weakref.WeakKeyDictionary[FollowedLog, StreamCursor] = weakref.WeakKeyDictionary()

    def needs_last_read(self, follow: FollowedLog) -> bool:
        return bool(follow.log_group and follow.stream)

    def capacity(self, seconds: float) -> int:
        # Calls that can start in the first half of the time, so that they also end within it.
        limiter = self.backend.logs_limiter
        wait = limiter.expected_wait(urgent=True)
        if wait > seconds / 2:
            return 0
        return (int((seconds / 2 - wait) * limiter.rate) + 1) * self.streams_per_call

    async def read(self, follows: Sequence[FollowedLog], *, urgent: bool = False) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        by_group: dict[str, list[FollowedLog]] = {}
        for follow in follows:
            if follow.closed or not follow.log_group or not follow.stream:
                continue  # not logging to CloudWatch
            if not urgent and follow.retry_at > now:
                continue
            if follow not in self._cursors:
                self._cursors[follow] = StreamCursor()
            by_group.setdefault(follow.log_group, []).append(follow)
        end_ms = int(time.time() * 1000)
        gate = asyncio.Semaphore(self.max_concurrent_calls)
        cursors = self._cursors

        async def read_group(group: str, members: list[FollowedLog]) -> None:
            members.sort(key=lambda f: -1 if (mark := cursors[f].mark) is None else mark)
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

        await gather_then_raise(read_group(group, members) for group, members in by_group.items())

    async def _read_range(self, group: str, follows: list[FollowedLog], end_ms: int, urgent: bool) -> None:
        cursors = self._cursors
        by_stream: dict[str, list[FollowedLog]] = {}
        for follow in follows:
            assert follow.stream is not None  # read() passes on only the follows that have a stream
            by_stream.setdefault(follow.stream, []).append(follow)
        late = self.late_ms
        starts = [start for f in follows if (start := cursors[f].start(late)) is not None]
        kwargs: dict[str, Any] = {"logGroupName": group, "logStreamNames": list(by_stream), "endTime": end_ms}
        if len(starts) == len(follows):  # a stream never read is read from its beginning
            kwargs["startTime"] = min(starts)
        if self.page_limit:
            kwargs["limit"] = self.page_limit
        last_ts: int | None = None
        complete = False
        for page in range(self.max_pages):
            try:
                reply = await self.backend.filter_log_events(urgent=urgent, **kwargs)
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) != "ResourceNotFoundException":
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
            fresh: dict[FollowedLog, list[str]] = {}
            for event in reply.get("events") or ():
                timestamp = event["timestamp"]
                last_ts = timestamp
                for follow in by_stream.get(event.get("logStreamName"), ()):
                    if cursors[follow].accept(event["eventId"], timestamp, late):
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
                cursors[follow].read_to(end_ms, late)
            else:
                cursors[follow].read_partly(last_ts, late)

    async def _single_out_missing(self, group: str, follows: list[FollowedLog], end_ms: int, urgent: bool) -> None:
        streams = list(dict.fromkeys(f.stream for f in follows))
        if len(streams) == 1:
            now = asyncio.get_running_loop().time()
            for follow in follows:
                follow.missing(now)
            return
        half = set(streams[: len(streams) // 2])
        await self._read_range(group, [f for f in follows if f.stream in half], end_ms, urgent)
        await self._read_range(group, [f for f in follows if f.stream not in half], end_ms, urgent)
