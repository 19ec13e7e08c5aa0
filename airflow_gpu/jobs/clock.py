"""Time in the jobs layer: the running event loop is the clock.

Every interval, deadline and pause of the watcher, the follower, the backoff and the rate
limiter reads the running loop's clock: ``loop.time()``, ``asyncio.sleep``, ``wait_for``,
``call_later``. None of them reads ``time.monotonic()`` or sleeps on its own. So a loop whose
clock is virtual (tests/support/virtual_clock.py: it moves its clock to the next timer whenever
every task waits) drives all of them at once, without a second clock to keep in step with the
loop's timers.

The one other time read is the wall clock, for epoch times that come from the job system (how
long a job has queued, from Batch's timestamps): :func:`wall_time` asks the running loop first,
so a loop with a clock of its own keeps both in step.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """What a loop with a clock of its own offers besides asyncio's ``time()`` (monotonic seconds)."""

    def time(self) -> float: ...

    def wall_time(self) -> float:
        """Epoch seconds, moving with ``time()``."""
        ...


def wall_time() -> float:
    """Epoch seconds: the running loop's, when it keeps a clock of its own; else the system's."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return time.time()
    own = getattr(loop, "wall_time", None)  # a Clock
    return own() if own is not None else time.time()
