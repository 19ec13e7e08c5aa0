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
#: The bill's mark of a job that an earlier try ran and this try only reused: the same job, billed
#: again in this try's log and XCom so that every try's result is alike, but one job in Batch, so
#: `airflow-gpu jobs --since 7d --cost` (which sums jobs, not tries) counts it once. A sum over XComs
#: should skip the reused ones.
REUSED_KEY = "reused"


def _mark(reused: bool) -> dict[str, Any]:
    return {REUSED_KEY: True} if reused else {}  # a fresh job's bill keeps its fields as they were


def _reused_line(line: str, reused: bool) -> str:
    return f"{line} [reused: an earlier try ran this job; count it once]" if reused else line


def job_bill(jobs: BlockingJobs, state: JobState, log: TaskLog, *, reused: bool = False) -> dict[str, Any]:
    """The bill of an ended job as an XCom value, its line written last into ``log``; ``reused``
    when this try found the job already SUCCEEDED for an earlier one (see REUSED_KEY)."""
    from airflow_gpu.config import price_table

    try:
        prices = price_table()
        usage = jobs.usage(state.job_id)
    except Exception as exc:  # a price file mistake or an unreachable API: said, never fatal
        log.warning(_reused_line(f"Job {state.job_id} {state.status}: cost unknown ({exc})", reused))
        return {"cost_usd": None, "cost_basis": str(exc), **_mark(reused)}
    if usage is None:
        why = f"the {jobs.target.backend} backend does not report usage"
        log.info(_reused_line(f"Job {state.job_id} {state.status}: cost unknown ({why})", reused))
        return {"cost_usd": None, "cost_basis": why, **_mark(reused)}
    made = bill(usage, prices)
    log.info(_reused_line(made.line(), reused))  # no arguments: the line may hold a "%"
    return {**made.as_dict(), **_mark(reused)}


async def job_bill_async(backend: JobBackend, state: JobState, log: TaskLog, *, reused: bool = False) -> dict[str, Any]:
    """:func:`job_bill` for a task that ends on the triggerer (``start_from_trigger``): the same line and value."""
    from airflow_gpu.config import price_table

    try:
        prices = await asyncio.to_thread(price_table)  # may read a price file: not on the event loop
        found = await backend.usage([state.job_id])
    except Exception as exc:
        log.warning(_reused_line(f"Job {state.job_id} {state.status}: cost unknown ({exc})", reused))
        return {"cost_usd": None, "cost_basis": str(exc), **_mark(reused)}
    if not found:
        why = f"the {backend.name} backend does not report usage"
        log.info(_reused_line(f"Job {state.job_id} {state.status}: cost unknown ({why})", reused))
        return {"cost_usd": None, "cost_basis": why, **_mark(reused)}
    made = bill(found[0], prices)
    log.info(_reused_line(made.line(), reused))
    return {**made.as_dict(), **_mark(reused)}
