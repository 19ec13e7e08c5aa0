"""Virtual time for the unit tier: an event loop whose clock moves only when every task waits on it.

The jobs layer reads all its time from the running loop (airflow_gpu/jobs/clock.py). This loop
keeps that clock virtual: when no callback is ready and no thread works for the loop, it does not
block in ``select()`` until its next timer is due; it moves its clock to that timer at once (the
"autojump" of trio's MockClock). So a 30 s poll interval passes in microseconds, in the order real
time would bring, and a test can read how much virtual time a behaviour took.

A loop that waits with no timer left and no thread working for it would wait for ever in real
time: it raises :class:`Deadlock` instead. Log records the triggers write off the loop are written
inline here (no thread to race the clock).

Use :func:`run` for a coroutine, or :func:`virtual_loops` around synchronous code that makes loops
of its own (the operator's ``asyncio.run``): every loop made inside runs in virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import selectors
from concurrent.futures import Executor, Future
from typing import Any, Awaitable, Callable, Iterator, TypeVar

from airflow_gpu.jobs.follower import LogFollower
from airflow_gpu.jobs.loop_log import use_writer
from airflow_gpu.jobs.watcher import JobWatcher

T = TypeVar("T")

#: The wall clock at virtual time 0 (epoch seconds: 2027-01-15 08:00 UTC), the same in every test.
WALL_START = 1_800_000_000.0
#: Real seconds a loop waits for a thread that works for it before it calls the test stuck.
THREAD_PATIENCE = 10.0


class Deadlock(RuntimeError):
    """Every task waits, and nothing (no timer, no thread) will ever wake one."""


class VirtualTimeUp(AssertionError):
    """A scenario still ran when its virtual time ran out."""


class _InlineWriter(Executor):
    """Runs what it is given at once, on the caller's thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        done: Future = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            done.set_exception(exc)
        return done


class _AutoJump:
    """The loop's selector: instead of blocking until the next timer, it moves the clock there."""

    def __init__(self, real: selectors.BaseSelector, loop: VirtualClockLoop) -> None:
        self._real = real
        self._loop = loop

    def select(self, timeout: float | None = None) -> list:
        events = self._real.select(0)
        if events or timeout == 0:
            return events
        if self._loop.threads:  # a thread works for the loop and will call back: wait for it, for real
            events = self._real.select(THREAD_PATIENCE)
            if not events:
                raise Deadlock(f"a thread working for the loop gave no sign for {THREAD_PATIENCE} s")
            return events
        if timeout is None:
            raise Deadlock("every task waits, and no timer or thread will wake any of them")
        if self._loop.limit is not None and self._loop.time() + timeout > self._loop.limit:
            self._loop.limit = None  # what follows (cancelling the tasks left) may take its time
            raise VirtualTimeUp(f"still running after {self._loop.time():g} s of virtual time")
        self._loop.advance(timeout)
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop in virtual time, starting at 0 (``wall_time()`` at :data:`WALL_START`)."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self.threads = 0  # run_in_executor calls in flight
        self.limit: float | None = None  # the loop time past which a test is stuck (see run)
        self._selector = _AutoJump(self._selector, self)  # type: ignore[has-type]
        use_writer(self, _InlineWriter())

    def time(self) -> float:
        return self._now

    def wall_time(self) -> float:
        return WALL_START + self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def call_later(
        self, delay: float, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        # A positive delay always lets some time pass, as it does on a real clock: a delay below the
        # float resolution of ``now`` would otherwise fire at ``now`` again and again (a rate limiter
        # short of its token by a rounding error reschedules itself like that).
        when = self._now + delay
        if delay > 0 and when <= self._now:
            when = math.nextafter(self._now, math.inf)
        return self.call_at(when, callback, *args, context=context)

    def run_in_executor(self, executor: Any, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.threads += 1

        def landed(_: asyncio.Future) -> None:
            self.threads -= 1

        future.add_done_callback(landed)
        return future

    async def shutdown_default_executor(self, *args: Any) -> None:
        self.threads += 1  # its thread calls back when the executor's threads have ended
        try:
            await super().shutdown_default_executor(*args)
        finally:
            self.threads -= 1


class _Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return VirtualClockLoop()


@contextlib.contextmanager
def virtual_loops() -> Iterator[None]:
    """Every event loop made inside (``asyncio.run``, ``asyncio.new_event_loop``) runs in virtual time."""
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_Policy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


def run(main: Callable[[], Awaitable[T]], *, within: float = 86400.0) -> T:
    """``main()`` to its end on a fresh loop in virtual time; then the loop's followers and watchers close.

    ``main`` gets ``within`` virtual seconds (a day): a behaviour that never ends (a job never
    stopped, a wait never woken while polls go on) fails the test instead of polling for ever.
    """

    async def body() -> T:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        loop.limit = loop.time() + within
        try:
            return await main()
        finally:
            await LogFollower.close_all()
            await JobWatcher.close_all()

    with virtual_loops():
        return asyncio.run(body())


def now() -> float:
    """The running loop's (virtual) time."""
    return asyncio.get_running_loop().time()
