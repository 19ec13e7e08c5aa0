"""A trigger's read of its task instance's current state, through the Task SDK (the triggerer's
supervisor and the execution API: a trigger has no database access)."""

from __future__ import annotations

import asyncio
from typing import Any

from airflow_gpu.jobs.ownership import TaskState

#: Reads are tried until this many seconds have passed: a triggerer that just resumed from a stall
#: (the case that matters) may answer its first calls slowly.
READ_PATIENCE = 60.0
_ONE_READ = 15.0


async def read_task_state(ti: Any, log: Any, *, patience: float = READ_PATIENCE) -> str | TaskState | None:
    """The task instance's state (a lower-case name, or None when it has none), TaskState.GONE when
    it no longer exists, or TaskState.UNKNOWN when no read succeeded within ``patience`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    pause = 0.5
    while True:
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(_read, ti), timeout=min(_ONE_READ, max(0.1, deadline - loop.time()))
            )
        except NameError as exc:  # no supervisor at all (run inline): asking again will not help
            log.warning(
                "Could not read the state of task %s.%s run %s: no Task SDK supervisor (%s)",
                ti.dag_id,
                ti.task_id,
                ti.run_id,
                exc,
            )
            return TaskState.UNKNOWN
        except Exception as exc:  # e.g. a busy or shutting-down supervisor
            if loop.time() + pause >= deadline:
                log.warning("Could not read the state of task %s.%s run %s: %r", ti.dag_id, ti.task_id, ti.run_id, exc)
                return TaskState.UNKNOWN
        await asyncio.sleep(pause)
        pause = min(pause * 2, 5.0)


def _read(ti: Any) -> str | TaskState | None:
    # Synchronous Task SDK call, hence the thread: the supervisor's comms answer it from there
    # without blocking the loop (and the thousands of other triggers on it).
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    map_index = getattr(ti, "map_index", -1)
    states = RuntimeTaskInstance.get_task_states(
        dag_id=ti.dag_id, map_index=-1 if map_index is None else map_index, task_ids=[ti.task_id], run_ids=[ti.run_id]
    )
    # {run_id: {task_id (task_id_<map_index> for a mapped task): state}}: this query matches one task instance.
    found = list((states or {}).get(ti.run_id, {}).values())
    if not found:
        return TaskState.GONE
    state = found[0]
    return None if state is None else str(getattr(state, "value", state))
