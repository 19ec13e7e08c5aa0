"""Waiting in async tests for a condition that other tasks or threads bring about."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(predicate: Callable[[], object], timeout: float = 30.0, step: float = 0.02) -> None:
    """Return once ``predicate()`` is true; TimeoutError after ``timeout`` seconds (a bound for failures only)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(step)
