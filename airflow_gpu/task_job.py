"""What the operator (on a worker) and the start trigger (on the triggerer) both know of a task
instance's job: which task instance it is, which try, where its id goes, and the XCom of a success."""

from __future__ import annotations

from typing import Any

from airflow_gpu.jobs.backend import JobState
from airflow_gpu.jobs.spec import TaskIdentity

#: XCom key holding the job id from the moment it is known, so a failed deferral can find the job.
JOB_ID_XCOM_KEY = "gpu_batch_job_id"


def task_identity(ti: Any) -> TaskIdentity:
    """The four values that name a task instance's job (its idempotency key)."""
    map_index = getattr(ti, "map_index", -1)
    return TaskIdentity(ti.dag_id, ti.task_id, ti.run_id, -1 if map_index is None else int(map_index))


def try_number(ti: Any) -> int | None:
    """This try's number, which tags the job it defers on (airflow_gpu/jobs/ownership.py)."""
    number = getattr(ti, "try_number", None)
    return number if isinstance(number, int) else None


def job_result(state: JobState) -> dict[str, Any]:
    """The XCom of a job that SUCCEEDED, before its manifest: the same on a worker and on the triggerer."""
    return {
        "job_id": state.job_id,
        "job_name": state.name,
        "status": state.status,
        "attempts": state.attempts,
        "exit_code": state.exit_code,
        "log_stream": state.log_stream,
        "log_group": state.log_group,
    }


__all__ = ["JOB_ID_XCOM_KEY", "job_result", "task_identity", "try_number"]
