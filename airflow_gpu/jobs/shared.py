"""What the two shared pollers (JobWatcher for states, LogFollower for logs) have in common.

Both keep one instance per backend target per event loop, shared by every trigger on
that loop, and both run rounds start to start at the smallest interval any of their
users asked for. That mechanism is written once here, in the shape of a coalescer whose
fetch is a parameter: each poller passes its own round.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import weakref
from collections import Counter
from typing import Any, Awaitable, Callable, Coroutine, Generic, Hashable, Iterable, TypeVar

#: Seconds between polls when nobody asked for another interval (states and logs alike).
DEFAULT_POLL_INTERVAL = 30.0

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def detached_task(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """A task in an empty context. Work shared by all triggers belongs to none of them: in the
    triggerer a record's context decides which task log it goes to, and a plain task would
    inherit the context of whichever trigger happened to start it."""
    loop = asyncio.get_running_loop()
    return contextvars.Context().run(loop.create_task, coro, name=name)


class PerLoop(Generic[K, T]):
    """One instance per key per event loop; a closed loop's instances are forgotten."""

    def __init__(self) -> None:
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[K, T]] = weakref.WeakKeyDictionary()

    def get(self, key: K, make: Callable[[K], T], *, stale: Callable[[T], bool] = lambda _: False) -> T:
        """The running loop's instance for ``key``; a new one when there is none or it is ``stale``."""
        loop = asyncio.get_running_loop()
        for other in [lp for lp in self._loops if lp.is_closed()]:
            self._loops.pop(other, None)
        per_loop = self._loops.setdefault(loop, {})
        found = per_loop.get(key)
        if found is None or stale(found):
            found = per_loop[key] = make(key)
        return found

    def values(self) -> list[T]:
        """The running loop's instances."""
        return list(self._loops.get(asyncio.get_running_loop(), {}).values())

    def forget(self, key: K, instance: T) -> None:
        """Drop ``instance`` from the running loop's registry (if it is still the one for ``key``)."""
        per_loop = self._loops.get(asyncio.get_running_loop(), {})
        if per_loop.get(key) is instance:
            del per_loop[key]


class Cadence:
    """Rounds start to start at the smallest interval asked for; a faster ask brings the next one forward."""

    def __init__(self) -> None:
        self._intervals: Counter[float] = Counter()
        self._wake = asyncio.Event()
        # Resolved by wake(): sleepers inside a round (sleep_until) re-read their deadline.
        self._woken: asyncio.Future[None] | None = None

    @property
    def interval(self) -> float:
        return min(self._intervals) if self._intervals else DEFAULT_POLL_INTERVAL

    def add(self, interval: float) -> bool:
        """Count a user's interval; True when it is faster than every other one."""
        faster = not self._intervals or interval < min(self._intervals)
        self._intervals[interval] += 1
        return faster

    def remove(self, interval: float) -> None:
        self._intervals[interval] -= 1
        if self._intervals[interval] <= 0:
            del self._intervals[interval]

    def wake(self) -> None:
        """Look again now: a faster user came, or the last one left."""
        self._wake.set()
        if self._woken is not None and not self._woken.done():
            self._woken.set_result(None)

    async def sleep_until(self, deadline: Callable[[], float]) -> None:
        """Sleep until loop time ``deadline()``, read again on each wake(): a deadline that is a share
        of the interval comes forward when a faster user arrives mid-round."""
        loop = asyncio.get_running_loop()
        while (wait := deadline() - loop.time()) > 0:
            if self._woken is None or self._woken.done():
                self._woken = loop.create_future()
            await asyncio.wait([self._woken], timeout=wait)

    async def run(
        self, round_: Callable[[], Awaitable[None]], *, while_: Callable[[], bool], first_delay: float
    ) -> None:
        """Run ``round_`` every ``interval`` seconds, start to start, as long as ``while_()`` holds.

        The first round waits ``first_delay``, so that users starting together share it.
        """
        loop = asyncio.get_running_loop()
        next_at = loop.time() + first_delay
        last_start: float | None = None
        while while_():
            wait = next_at - loop.time()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                if last_start is not None:
                    next_at = min(next_at, last_start + self.interval)
                continue
            last_start = loop.time()
            await round_()
            next_at = last_start + self.interval


async def gather_then_raise(aws: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run all to the end, then raise the first error: one failing group must not orphan the others.

    (The worker's ``storage.gather_or_cancel`` is the other policy: cancel the rest on the first error.)
    """
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
