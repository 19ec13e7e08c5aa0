"""Exponential backoff with full jitter, shared by every call on one connection.

When Batch throttles, it throttles the account, not one job: if each of 10,000
triggers backed off on its own, their retries would keep the rate up. So one
``SharedBackoff`` lives per backend client. A transient fault on any call pushes
back every call on that client, the delay grows with consecutive faults and
resets on the first success, and the log gets one line when an episode starts
and one when it ends -- not one per job.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 0.25  # first delay ceiling, seconds
    cap: float = 20.0  # largest delay ceiling, seconds
    attempts: int = 8  # per call, for calls that may give up (None-able per call)


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
                if not self.is_transient(exc):
                    raise
                tries += 1
                self._fault(exc, loop.time())
                if limit is not None and tries >= limit:
                    raise
                continue
            self._success(loop.time())
            return result

    def _fault(self, exc: BaseException, now: float) -> None:
        if self._episode_started is None:
            self._episode_started = now
            self._episode_faults = 0
            self.episodes += 1
            self.log.warning("%s: transient fault (%s); backing off with jitter until it clears", self.what, _short(exc))
        self._episode_faults += 1
        self._level = min(self._level + 1, 30)
        delay = random.uniform(0, min(self.policy.cap, self.policy.base * (2**self._level)))
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
