"""Where and on what a run ran: the job it belongs to, its queue wait, the GPU it used.

All of it is read from the environment the job runs in, never from the Airflow side:
AWS Batch sets ``AWS_BATCH_JOB_ID``, ``AWS_BATCH_JQ_NAME``, ``AWS_BATCH_JOB_ATTEMPT`` and
``AWS_BATCH_CE_NAME`` in every container; the local backend sets ``AIRFLOW_GPU_JOB_ID``.
The queue wait comes from ``AIRFLOW_GPU_SUBMITTED_AT`` (epoch seconds or an ISO time), which
both backends set in the job's environment when they submit: Batch tells a container nothing
about when it was submitted. A job submitted some other way has no queue wait; a Batch retry's
attempt counts from the first submit, so its wait includes the attempts before it. Every value
here is a name or a number, never a credential.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Mapping

from ..contract import SUBMITTED_AT_ENV

_BATCH = {
    "AWS_BATCH_JOB_ID": "job_id",
    "AWS_BATCH_JQ_NAME": "queue",
    "AWS_BATCH_JOB_ATTEMPT": "attempt",
    "AWS_BATCH_CE_NAME": "compute_environment",
}


def job_context(started_at: datetime, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The job id, its backend and the queue wait (None when not known)."""
    environ = os.environ if environ is None else environ
    context: dict[str, Any] = {"job_id": None, "backend": None, "queue_wait_seconds": None}
    if environ.get("AWS_BATCH_JOB_ID"):
        context["backend"] = "aws_batch"
        for variable, key in _BATCH.items():
            if environ.get(variable):
                context[key] = environ[variable]
    elif environ.get("AIRFLOW_GPU_JOB_ID"):
        context["backend"] = "local"
        context["job_id"] = environ["AIRFLOW_GPU_JOB_ID"]
    submitted = _time(environ.get(SUBMITTED_AT_ENV))
    if submitted is not None:
        context["submitted_at"] = submitted.isoformat(timespec="seconds")
        context["queue_wait_seconds"] = round(max((started_at - submitted).total_seconds(), 0.0), 3)
    return context


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromtimestamp(float(text), timezone.utc)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def device_properties() -> Any:  # cuda.bindings' cudaDeviceProp (untyped), or None
    """The first GPU's properties through cuda-python (an RMM dependency), or None when it cannot tell."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        return None
    try:
        err, props = runtime.cudaGetDeviceProperties(0)
        return props if int(err) == 0 else None
    except Exception:  # noqa: BLE001 - only a hint; implicit reports real failures itself
        return None


def gpu_info() -> dict[str, Any] | None:
    """The first GPU's model and memory, for the report; None without one."""
    props = device_properties()
    if props is None:
        return None
    name = props.name
    name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)
    return {
        "name": name.strip(),
        "memory_bytes": int(props.totalGlobalMem),
        "compute_capability": f"{int(props.major)}.{int(props.minor)}",
    }
