"""Pacing for every call on one connection: exponential backoff with full jitter, and a rate limit.

When Batch throttles, it throttles the account, not one job: if each of 10,000
triggers backed off on its own, their retries would keep the rate up. So one
``SharedBackoff`` lives per backend client. A transient fault on any call pushes
back every call on that client, the delay grows with consecutive faults and
resets on the first success, and the log gets one line when an episode starts
and one when it ends -- not one per job.

Some APIs have quotas low enough that one should not even reach them: CloudWatch
Logs answers FilterLogEvents about 5 times a second per account and region. A
:class:`RateLimiter` per connection keeps a steady pace below that, so reading
the logs of a thousand jobs takes longer instead of failing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from airflow_gpu.faults import jittered_delay

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 0.25  # first delay ceiling, seconds
    cap: float = 20.0  # largest delay ceiling, seconds
    attempts: int = 8  # per call, for calls that may give up (None-able per call)


class StillFailing(Exception):
    """A call kept failing for its whole grace time: ``error`` is its last fault, ``seconds`` how long it failed."""

    def __init__(self, error: BaseException, seconds: float) -> None:
        super().__init__(str(error))
        self.error = error
        self.seconds = seconds


class SharedBackoff:
    def __init__(
        self,
        what: str,
        is_transient: Callable[[BaseException], bool],
        policy: RetryPolicy = RetryPolicy(),
        log: logging.Logger | None = None,
    ) -> None:
        self.what = what
        self.is_transient = is_transient
        self.policy = policy
        self.log = log or logging.getLogger(__name__)
        self._level = 0  # consecutive faults, shared
        self._resume_at = 0.0  # loop time before which no call starts
        self._episode_started: float | None = None
        self._episode_faults = 0
        self.episodes = 0  # for tests and metrics

    async def call(self, fn: Callable[[], Awaitable[T]], *, attempts: int | None = -1) -> T:
        """Run ``fn`` until it succeeds, retrying transient faults.

        ``attempts=None`` retries for ever (the watcher: a trigger must outlive
        throttling); the default takes the policy's limit, then re-raises.
        """
        limit = self.policy.attempts if attempts == -1 else attempts
        loop = asyncio.get_running_loop()
        tries = 0
        while True:
            wait = self._resume_at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                result = await fn()
            except Exception as exc:
                if isinstance(exc, StillFailing) or not self.is_transient(exc):
                    raise
                tries += 1
                self._fault(exc, loop.time())
                if limit is not None and tries >= limit:
                    raise
                continue
            self._success(loop.time())
            return result

    async def call_within(self, fn: Callable[[], Awaitable[T]], *, grace: float) -> T:
        """Run ``fn`` until it succeeds, retrying transient faults for ever -- until they have lasted
        ``grace`` seconds in a row: then :class:`StillFailing`, carrying the last fault."""
        loop = asyncio.get_running_loop()
        first_failure: float | None = None

        async def attempt() -> T:
            nonlocal first_failure
            try:
                return await fn()
            except Exception as exc:
                if not self.is_transient(exc):
                    raise
                now = loop.time()
                first_failure = now if first_failure is None else first_failure
                if now - first_failure >= grace:
                    raise StillFailing(exc, now - first_failure) from exc
                raise

        return await self.call(attempt, attempts=None)

    def _fault(self, exc: BaseException, now: float) -> None:
        if self._episode_started is None:
            self._episode_started = now
            self._episode_faults = 0
            self.episodes += 1
            self.log.warning(
                "%s: transient fault (%s); backing off with jitter until it clears", self.what, _short(exc)
            )
        self._episode_faults += 1
        self._level = min(self._level + 1, 30)
        delay = jittered_delay(self._level, self.policy.base, self.policy.cap)
        self._resume_at = max(self._resume_at, now + delay)

    def _success(self, now: float) -> None:
        if self._episode_started is not None:
            self.log.warning(
                "%s: recovered after %.1f s and %d retried calls",
                self.what,
                now - self._episode_started,
                self._episode_faults,
            )
            self._episode_started = None
        self._level = 0


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class RateLimiter:
    """A token bucket for one event loop: ``rate`` calls per second on average, ``burst`` at once.

    Waiters are served first in, first out, urgent ones before the rest: a trigger
    waiting on its job's last log lines before it fires should not queue behind a
    routine sweep of a thousand streams. The bucket is shared by everything that
    calls one API on one connection, so the pace holds however many jobs there are.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"RateLimiter needs rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None
        self._urgent: collections.deque[asyncio.Future[None]] = collections.deque()
        self._normal: collections.deque[asyncio.Future[None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self.granted = 0  # for tests and metrics

    @property
    def waiting(self) -> int:
        return len(self._urgent) + len(self._normal)

    def expected_wait(self, *, urgent: bool = False) -> float:
        """Seconds a call asking now would wait, if nobody else came: how far behind the limiter is."""
        self._refill(asyncio.get_running_loop().time())
        ahead = len(self._urgent) + (0 if urgent else len(self._normal))
        missing = ahead + 1 - self._tokens
        return max(0.0, missing / self.rate)

    async def acquire(self, *, urgent: bool = False) -> None:
        """Wait for a turn."""
        loop = asyncio.get_running_loop()
        self._refill(loop.time())
        if self._tokens >= 1 and not self._urgent and (urgent or not self._normal):
            self._tokens -= 1
            self.granted += 1
            return
        waiter = loop.create_future()
        (self._urgent if urgent else self._normal).append(waiter)
        self._schedule(loop)
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.done() or waiter.cancelled():
                self._forget(waiter)
            raise

    def _refill(self, now: float) -> None:
        if self._stamp is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and (self._urgent or self._normal):
            delay = max(0.0, (1 - self._tokens) / self.rate)
            self._timer = loop.call_later(delay, self._release)

    def _release(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        self._refill(loop.time())
        while self._tokens >= 1 and (self._urgent or self._normal):
            waiter = (self._urgent or self._normal).popleft()
            if waiter.done():  # cancelled while queued
                continue
            waiter.set_result(None)
            self._tokens -= 1
            self.granted += 1
        self._schedule(loop)

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        for queue in (self._urgent, self._normal):
            try:
                queue.remove(waiter)
            except ValueError:
                pass
