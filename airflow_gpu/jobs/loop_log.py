"""Log records of triggers written off the event loop: in order, each in its writer's context.

In `airflow triggerer`, a log record is a synchronous write into a socket that the triggerer's
supervisor (another process) drains. Written on the event loop, a record blocks the loop while
that socket is full; and a supervisor that is itself blocked sending to the runner, whose loop
cannot read, never drains it: both wait for ever. That deadlock was seen with 2000 GPU triggers
starting at once (benchmarks/README.md, "Triggerer scale through Airflow"). Airflow's own runner
writes its per-trigger records with ``await log.ainfo(...)``, off the loop, for the same reason.

Here one writer thread per event loop keeps the records of every trigger in the order they were
made (``ainfo`` would hand each to any thread of a pool), and each record carries a copy of its
writer's context, by which the triggerer routes it to its task's log.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Executor] = weakref.WeakKeyDictionary()


def use_writer(loop: asyncio.AbstractEventLoop, writer: Executor) -> None:
    """Write ``loop``'s records through ``writer`` instead of a thread of its own: a test's loop in
    virtual time writes them inline, since a thread finishing at a real moment would race its clock."""
    _writers[loop] = writer


def _writer(loop: asyncio.AbstractEventLoop) -> Executor:
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="airflow-gpu-log")
    return writer


def log_off_loop(write: Callable[[str], object], message: str) -> None:
    """``write(message)`` on this loop's writer thread; at once where no loop runs."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        write(message)
        return
    _writer(loop).submit(contextvars.copy_context().run, write, message)


async def logs_written() -> None:
    """Return once every record handed over on this loop so far is written (before a trigger fires,
    so that its lines come before its event)."""
    writer = _writers.get(asyncio.get_running_loop())
    if writer is not None:
        await asyncio.wrap_future(writer.submit(lambda: None))
