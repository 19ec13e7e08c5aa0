"""What differs between the Airflow versions the package accepts, in one place.

The floor is Airflow 3.3, the first whose triggerer calls a trigger's on_kill() when the user
clears or marks its task. 3.0 and 3.1 lack Task SDK names the package imports. On 3.2 the
trigger's cleanup() can ask the Task SDK for the task's state instead (the fallback below and in
triggers.py), but on a real 3.2 triggerer a task marked failed still left its job running, so 3.2
stays refused until that passes tests/test_e2e_airflow.py. Importing the Airflow wing on an older
Airflow fails here with a message that says so, instead of an ImportError from deep inside.
"""

from __future__ import annotations

import asyncio
from typing import Any

import airflow
from packaging.version import Version

MINIMUM_AIRFLOW = (3, 3)

AIRFLOW_VERSION = Version(airflow.__version__)

if AIRFLOW_VERSION.release[:2] < MINIMUM_AIRFLOW:
    raise ImportError(
        f"airflow-gpu needs Apache Airflow {'.'.join(map(str, MINIMUM_AIRFLOW))} or newer; this environment has "
        f"{airflow.__version__}. Upgrade it: pip install 'apache-airflow>={'.'.join(map(str, MINIMUM_AIRFLOW))},<4'."
    )

#: The triggerer calls a trigger's on_kill() when the user clears or marks its task from 3.3.0 on
#: (apache/airflow#65590). Before that it only cancels run() and calls cleanup(), exactly as it
#: does when it shuts down or hands the trigger to another triggerer.
TRIGGERER_CALLS_ON_KILL = AIRFLOW_VERSION.release[:2] >= (3, 3)


async def read_task_states(ti: Any, *, timeout: float) -> dict[str, dict[str, Any]]:
    """Ask the triggerer's supervisor (the Task SDK's comms, as the SDK's own async calls do) for
    one task instance's state: ``{run_id: {task_id, or task_id_<map_index>: state}}``.

    On the event loop, not in a thread: when the triggerer stops, its supervisor stops answering,
    and a thread blocked on the answer would keep the trigger runner from exiting at all.
    """
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetTaskStates

    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if comms is None:
        raise RuntimeError("no Task SDK supervisor in this process")
    reader = getattr(comms, "_reader_task", None)
    if reader is not None and reader.done():
        # Airflow 3.2's trigger runner stops its comms reader before it cancels the triggers on the way
        # out: nothing can answer now, and this is a shutdown, not a user's action.
        raise RuntimeError("the triggerer is stopping: its supervisor comms are closed")
    question = GetTaskStates(dag_id=ti.dag_id, map_index=ti.map_index, task_ids=[ti.task_id], run_ids=[ti.run_id])
    reply = await asyncio.wait_for(comms.asend(question), timeout)
    states = getattr(reply, "task_states", None)
    if states is None:
        raise RuntimeError(f"unexpected reply to GetTaskStates: {reply!r}")
    return states
