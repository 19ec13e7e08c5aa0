"""Run the async job machinery from a blocking worker, on a short-lived event loop.

The operator's worker side (submit, reattach, the non-deferrable wait, on_kill,
the log tail on failure) uses the same backend and watcher as the triggerer, so
both paths behave alike. Each call gets its own loop and closes that loop's
watchers (and so its clients) before returning: nothing outlives the call.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Callable, TypeVar

from airflow_gpu.jobs.watcher import JobWatcher

T = TypeVar("T")


def run_blocking(fn: Callable[[], Awaitable[T]], *, in_thread: bool = False, timeout: float | None = None) -> T:
    """Run ``fn()`` to completion on a fresh event loop and return its result.

    ``in_thread=True`` runs the loop in a new thread; ``on_kill`` needs that, since
    it may run in a signal handler while this thread's own loop is suspended.
    A thread is also used when the calling thread already runs a loop.
    """

    async def main() -> T:
        try:
            if timeout is None:
                return await fn()
            return await asyncio.wait_for(fn(), timeout)
        finally:
            await JobWatcher.close_all()

    if not in_thread:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())

    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = asyncio.run(main())
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="airflow-gpu-blocking", daemon=True)
    thread.start()
    thread.join(None if timeout is None else timeout + 5)
    if thread.is_alive():
        raise TimeoutError(f"gave up waiting {timeout} s for the job backend")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]
