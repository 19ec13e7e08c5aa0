"""A job's bill at its end, for the operator: look up where it ran, price it, log one line.

The AWS calls are in :mod:`airflow_gpu.jobs.aws.usage`, the arithmetic in
:mod:`airflow_gpu.jobs.cost`; this is only the glue, and it never fails a task: a bill
that cannot be made says why in the log and the XCom.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from airflow_gpu.jobs.cost import bill

if TYPE_CHECKING:
    from airflow_gpu.jobs.backend import JobBackend, JobState
    from airflow_gpu.jobs.blocking import BlockingJobs, TaskLog

#: XCom key (inside the job's result) of the bill.
COST_KEY = "cost"


def job_bill(jobs: BlockingJobs, state: JobState, log: TaskLog) -> dict[str, Any]:
    """The bill of an ended job as an XCom value, its line written last into ``log``."""
    from airflow_gpu.config import price_table

    try:
        prices = price_table()
        usage = jobs.usage(state.job_id)
    except Exception as exc:  # a price file mistake or an unreachable API: said, never fatal
        log.warning(f"Job {state.job_id} {state.status}: cost unknown ({exc})")
        return {"cost_usd": None, "cost_basis": str(exc)}
    if usage is None:
        log.info(
            f"Job {state.job_id} {state.status}: cost unknown (the {jobs.target.backend} backend does not report usage)"
        )
        return {"cost_usd": None, "cost_basis": f"the {jobs.target.backend} backend does not report usage"}
    made = bill(usage, prices)
    log.info(made.line())  # no arguments: the line may hold a "%"
    return made.as_dict()


async def job_bill_async(backend: JobBackend, state: JobState, log: TaskLog) -> dict[str, Any]:
    """:func:`job_bill` for a task that ends on the triggerer (``start_from_trigger``): the same line and value."""
    from airflow_gpu.config import price_table

    try:
        prices = await asyncio.to_thread(price_table)  # may read a price file: not on the event loop
        found = await backend.usage([state.job_id])
    except Exception as exc:
        log.warning(f"Job {state.job_id} {state.status}: cost unknown ({exc})")
        return {"cost_usd": None, "cost_basis": str(exc)}
    if not found:
        log.info(f"Job {state.job_id} {state.status}: cost unknown (the {backend.name} backend does not report usage)")
        return {"cost_usd": None, "cost_basis": f"the {backend.name} backend does not report usage"}
    made = bill(found[0], prices)
    log.info(made.line())
    return made.as_dict()
