"""The JobBackend interface, JobState, and the registry that maps a backend name to its class.

A backend is the one place that knows how to talk to a job system (AWS Batch,
a local process). Everything above it -- the shared watcher, the trigger, the
operator -- only sees ``JobState`` and these few coroutines, so a test or a
new system swaps the backend instead of patching internals.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

from airflow_gpu.jobs.cost import JobUsage
from airflow_gpu.jobs.logs import LogReader
from airflow_gpu.jobs.placement import BlockedReason
from airflow_gpu.jobs.spec import JobSpec, JobSpecError

QUEUED_STATES = frozenset({"SUBMITTED", "PENDING", "RUNNABLE", "STARTING"})
LIVE_STATES = QUEUED_STATES | {"RUNNING"}
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED})
# Not a Batch status: the backend has no job with this id (wrong id, region or account, or long expired).
UNKNOWN = "UNKNOWN"
# Why airflow-gpu's own follow_job terminated a job (JobState.stopped_for): it queued past
# max_queued, or Batch reported a misconfiguration that means it can never start.
STOPPED_FOR_MAX_QUEUED = "max_queued"
STOPPED_FOR_NEVER_STARTS = "never_starts"


@dataclass(frozen=True, slots=True)
class JobState:
    """One observation of a job. Backends build it from their own descriptions."""

    job_id: str
    status: str
    name: str | None = None
    status_reason: str | None = None
    exit_code: int | None = None
    attempts: int = 0
    log_stream: str | None = None
    log_group: str | None = None
    # Epoch seconds since which the job has waited for capacity (creation, or the end of
    # the last attempt for a retried job); drives ``max_queued``.
    queued_since: float | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    # Why a RUNNABLE job cannot be placed, as the backend reports it (AWS Batch's blocked reasons).
    blocked: BlockedReason | None = None
    # Why airflow-gpu itself stopped the job, when it did (STOPPED_FOR_*); None otherwise.
    # A field rather than a phrase in status_reason, so the operator never parses a message.
    stopped_for: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATES or self.status == UNKNOWN

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATES

    def as_event(self) -> dict[str, Any]:
        """The TriggerEvent payload: ids, names and numbers only (it is stored in the metadata database)."""
        return {
            "job_id": self.job_id,
            "job_name": self.name,
            "status": self.status,
            "status_reason": self.status_reason,
            "exit_code": self.exit_code,
            "attempts": self.attempts,
            "log_stream": self.log_stream,
            "log_group": self.log_group,
            "stopped_for": self.stopped_for,
        }

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> JobState:
        return cls(
            job_id=event["job_id"],
            status=event["status"],
            name=event.get("job_name"),
            status_reason=event.get("status_reason"),
            exit_code=event.get("exit_code"),
            attempts=event.get("attempts") or 0,
            log_stream=event.get("log_stream"),
            log_group=event.get("log_group"),
            stopped_for=event.get("stopped_for"),
        )


@dataclass(frozen=True)
class BackendTarget:
    """Which job system to reach: the key of the shared watcher and of the connection cache.

    ``standard_chain=True`` (the terminal) skips Airflow connections altogether: credentials come
    from the standard AWS chain (environment, ``profile``, instance role) and ``endpoint_url``,
    if given, is used for every service.
    """

    backend: str = "aws_batch"
    conn_id: str | None = "aws_default"
    region_name: str | None = None
    standard_chain: bool = False
    profile: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True)
class LogChunk:
    """Log lines in order, and where the next read continues (None when unknown)."""

    lines: list[str]
    cursor: str | None = None


class JobBackend(abc.ABC):
    """How jobs are submitted, found, described, terminated and read, for one job system.

    One instance holds one client and is shared by everything on one event loop
    (through :class:`~airflow_gpu.jobs.lease.ClientLease`); it must be safe to
    call concurrently from many coroutines.
    """

    #: The name users pass as ``backend=``.
    name: ClassVar[str]
    #: The most job ids ``describe`` accepts per call (AWS Batch's DescribeJobs limit by default).
    describe_batch_size: ClassVar[int] = 100
    #: Whether a job needs ``job_queue`` and ``job_definition`` (False: they are optional).
    needs_queue: ClassVar[bool] = True

    @classmethod
    @abc.abstractmethod
    async def open(cls, target: BackendTarget) -> JobBackend:
        """Connect, resolving credentials off the event loop."""

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where jobs live, for messages (e.g. "AWS Batch in eu-west-1")."""

    @abc.abstractmethod
    async def submit(self, spec: JobSpec) -> JobState:
        """Start the job. Must never start two jobs for one call, even when retrying a lost reply."""

    @abc.abstractmethod
    async def find(self, spec: JobSpec) -> list[JobState]:
        """Jobs carrying ``spec``'s idempotency key and not cancelled by us, newest first."""

    @abc.abstractmethod
    async def describe(self, job_ids: Sequence[str]) -> list[JobState]:
        """States of up to ``describe_batch_size`` jobs; ids the backend does not know are left out.

        Transient faults (throttling, 5xx, connection errors) are retried inside,
        with backoff shared by every caller on this backend; other errors raise.
        """

    @abc.abstractmethod
    async def terminate(self, job_id: str, reason: str) -> None:
        """Stop the job (no-op once it is terminal) and mark it so reattach never picks it again."""

    @abc.abstractmethod
    async def read_logs(self, job: JobState, *, cursor: str | None = None, tail: int | None = None) -> LogChunk:
        """The job's log lines.

        ``tail=N``: the last N lines. Otherwise the lines after ``cursor`` (from the
        start when None), and the cursor to continue from. A job without logs, or a
        log stream that does not exist yet, gives an empty chunk, never an error.
        """

    async def add_tags(self, job_id: str, tags: Mapping[str, str]) -> None:
        """Add (or overwrite) tags on the job; what the next describe reports. A backend without tags
        cannot record which try deferred on a job (airflow_gpu/jobs/ownership.py): callers warn and go on."""
        raise NotImplementedError(f"the {self.name} backend cannot tag its jobs")

    async def list_jobs(self, queue: str | None, statuses: Sequence[str]) -> list[JobState]:
        """Jobs airflow-gpu submitted (they carry its idempotency tag), in ``statuses``; for ``airflow-gpu jobs``."""
        raise JobSpecError(f"the {self.name} backend cannot list its jobs")

    async def usage(self, job_ids: Sequence[str]) -> list[JobUsage]:
        """Where and how long ``job_ids`` ran, for their bills (:mod:`airflow_gpu.jobs.cost`);
        unknown ids are left out. A backend that cannot tell returns nothing: no bill is made up."""
        return []

    def log_reader(self) -> LogReader | None:
        """A reader that fetches the new log lines of many jobs per call, for live streaming;
        None streams job by job through ``read_logs(cursor=...)``."""
        return None

    def job_url(self, job_id: str) -> str | None:
        """A web page for the job, if the system has one."""
        return None

    def log_url(self, job: JobState) -> str | None:
        """A web page for the job's log, if the system has one."""
        return None

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the client; idempotent."""


# -- registry -----------------------------------------------------------------------------------

# Built-in backends are named here so that checking ``backend=`` at DAG parse time
# imports nothing; a module registers its class when it is imported.
BUILTIN_BACKENDS: dict[str, str] = {
    "aws_batch": "airflow_gpu.jobs.aws.backend",
    "local": "airflow_gpu.jobs.local.backend",
}
_REGISTRY: dict[str, type[JobBackend]] = {}


def register_backend(cls: type[JobBackend]) -> type[JobBackend]:
    """Class decorator: make ``cls`` available as ``backend=cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def check_backend_name(name: Any) -> str:
    """Check ``backend=`` without importing it (cheap enough for DAG parsing)."""
    if isinstance(name, str) and (name in _REGISTRY or name in BUILTIN_BACKENDS):
        return name
    known = ", ".join(repr(n) for n in sorted({*BUILTIN_BACKENDS, *_REGISTRY}))
    raise JobSpecError(f"backend must be one of {known}, got {name!r}.")


def backend_class(name: str) -> type[JobBackend]:
    """The class for ``backend=name``, importing its module on first use."""
    check_backend_name(name)
    if name not in _REGISTRY:
        module = BUILTIN_BACKENDS[name]
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            raise JobSpecError(
                f"backend {name!r} is not available in this installation ({module} is missing)."
            ) from exc
        if name not in _REGISTRY:
            raise JobSpecError(f"{module} does not register a backend named {name!r} (use @register_backend).")
    return _REGISTRY[name]
