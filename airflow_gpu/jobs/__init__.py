"""How GPU jobs are described, submitted and watched, backend by backend.

Nothing here imports Airflow or a backend's client library at import time; a
backend module is imported when ``backend=<name>`` is first used.
"""

from airflow_gpu.jobs.backend import (
    BackendTarget,
    JobBackend,
    JobState,
    LogChunk,
    backend_class,
    register_backend,
)
from airflow_gpu.jobs.spec import JobSpec, JobSpecError, TaskIdentity
from airflow_gpu.jobs.watcher import JobWatch, JobWatcher, follow_job

__all__ = [
    "BackendTarget",
    "JobBackend",
    "JobSpec",
    "JobSpecError",
    "JobState",
    "JobWatch",
    "JobWatcher",
    "LogChunk",
    "TaskIdentity",
    "backend_class",
    "follow_job",
    "register_backend",
]
