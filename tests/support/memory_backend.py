"""InMemoryBackend: the smallest JobBackend that keeps the contract, for tests.

Jobs live in a dict shared by every instance of one process (as a job system outlives its
clients); they stay RUNNING until ``finish`` (a test's lever) or ``terminate`` ends them.
The other levers (``set_state``, ``fail``, ``write``, ``describe_faults``) and records
(``describes``, ``log_reads``, ``terminated``, ``submitted``, ``opened``) let the unit tier
check what the watcher, follower, triggers and operator asked, and when (in loop time, which
is virtual there: tests/support/virtual_clock.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from typing import Any, Callable, ClassVar, Mapping, Sequence

from airflow_gpu.jobs.backend import (
    FAILED,
    QUEUED_STATES,
    SUCCEEDED,
    BackendTarget,
    JobBackend,
    JobState,
    LogChunk,
    register_backend,
)
from airflow_gpu.jobs.backoff import RateLimiter
from airflow_gpu.jobs.clock import wall_time
from airflow_gpu.jobs.placement import parse_blocked
from airflow_gpu.jobs.poll_errors import JobIdsRejected
from airflow_gpu.jobs.spec import TAG_CANCELLED, TAG_IDEMPOTENCY_KEY, JobSpec, TaskIdentity

#: The target of the in-memory job system (the trigger's, with its default connection id).
TARGET = BackendTarget(backend="memory")


def job_spec(run_id: str = "run", *, task_id: str = "train", map_index: int = -1) -> JobSpec:
    """A spec for one task instance's job on the in-memory job system."""
    return JobSpec.build(
        identity=TaskIdentity("dag", task_id, run_id, map_index),
        job_queue="q",
        job_definition="d",
        command=["airflow-gpu-worker", "als"],
    )


async def submit_jobs(count: int, status: str = "RUNNING") -> list[str]:
    """``count`` jobs of distinct task instances, now in ``status``; their ids in order."""
    backend = InMemoryBackend()
    ids = [(await backend.submit(job_spec(f"run-{i}"))).job_id for i in range(count)]
    for job_id in ids:
        InMemoryBackend.set_state(job_id, status)
    return ids


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return 0.0


@register_backend
class InMemoryBackend(JobBackend):
    name = "memory"
    describe_batch_size: ClassVar[int] = 100
    jobs: ClassVar[dict[str, JobState]] = {}
    logs: ClassVar[dict[str, list[str]]] = {}
    created: ClassVar[dict[str, float]] = {}  # wall time of each submit
    #: (loop time, ids asked) of every describe call, in order.
    describes: ClassVar[list[tuple[float, tuple[str, ...]]]] = []
    #: Raised, one per call, by the next describe calls (a failed poll).
    describe_faults: ClassVar[list[BaseException]] = []
    #: Ids the job system refuses (a malformed id): a describe asking for one is refused whole.
    rejected_ids: ClassVar[set[str]] = set()
    #: Called before every describe: a test's script of what the job system does meanwhile.
    before_describe: ClassVar[list[Callable[[], None]]] = []
    #: Jobs whose log cannot be read (yet): a cursor read raises.
    broken_logs: ClassVar[set[str]] = set()
    #: (loop time, job id, cursor) of every cursor read of a log.
    log_reads: ClassVar[list[tuple[float, str, str | None]]] = []
    terminated: ClassVar[list[tuple[str, str]]] = []
    submitted: ClassVar[list[JobSpec]] = []
    opened: ClassVar[int] = 0
    #: When set, logs are read through a batched reader paced by a RateLimiter of this rate (calls
    #: per second), as CloudWatch Logs is; None reads job by job through read_logs (CursorLogReader).
    log_rate: ClassVar[float | None] = None
    terminate_calls: ClassVar[list[str]] = []  # every terminate asked for, live job or not (counts TerminateJob)
    submitted_ids: ClassVar[list[str]] = []  # every job submitted, by id (counts SubmitJob)
    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.logs_limiter = RateLimiter(self.log_rate) if self.log_rate else None

    @classmethod
    async def open(cls, target: BackendTarget) -> InMemoryBackend:
        cls.opened += 1
        return cls()

    @property
    def location(self) -> str:
        return "memory"

    async def submit(self, spec: JobSpec) -> JobState:
        job_id = f"mem-{next(self._ids)}"
        state = JobState(job_id, "RUNNING", name=spec.name, tags=dict(spec.tags), log_stream=job_id)
        self.jobs[job_id] = state
        self.created[job_id] = wall_time()
        self.logs[job_id] = []
        self.submitted.append(spec)
        self.submitted_ids.append(job_id)
        return state

    async def find(self, spec: JobSpec) -> list[JobState]:
        key = spec.tags[TAG_IDEMPOTENCY_KEY]
        found = [
            s for s in self.jobs.values() if s.tags.get(TAG_IDEMPOTENCY_KEY) == key and TAG_CANCELLED not in s.tags
        ]
        return sorted(found, key=lambda s: int(s.job_id.split("-")[1]), reverse=True)

    async def describe(self, job_ids: Sequence[str]) -> list[JobState]:
        self.describes.append((_loop_time(), tuple(job_ids)))
        for step in self.before_describe:
            step()
        if self.describe_faults:
            raise self.describe_faults.pop(0)
        refused = [j for j in job_ids if j in self.rejected_ids]
        if refused:
            raise JobIdsRejected(f"invalid job id {refused[0]!r}")
        return [self._described(self.jobs[j]) for j in job_ids[: self.describe_batch_size] if j in self.jobs]

    def _described(self, state: JobState) -> JobState:
        """As AWS Batch describes a job: queued since its creation while queued, and a RUNNABLE
        job's statusReason parsed into its blocked reason."""
        queued = state.status in QUEUED_STATES
        return dataclasses.replace(
            state,
            queued_since=self.created.get(state.job_id) if queued else None,
            blocked=parse_blocked(state.status, state.status_reason),
        )

    async def add_tags(self, job_id: str, tags: Mapping[str, str]) -> None:
        state = self.jobs[job_id]
        self.jobs[job_id] = dataclasses.replace(state, tags={**state.tags, **tags})

    async def terminate(self, job_id: str, reason: str) -> None:
        self.terminated.append((job_id, reason))
        self.terminate_calls.append(job_id)
        state = self.jobs.get(job_id)
        if state is None or state.is_terminal:
            return
        self.jobs[job_id] = JobState(
            job_id,
            FAILED,
            name=state.name,
            status_reason=reason,
            attempts=1,
            tags={**state.tags, TAG_CANCELLED: "true"},
            log_stream=state.log_stream,
        )

    async def read_logs(self, job: JobState, *, cursor: str | None = None, tail: int | None = None) -> LogChunk:
        lines = self.logs.get(job.job_id, [])
        if tail is not None:
            return LogChunk(lines[-tail:] if tail else [], str(len(lines)))
        self.log_reads.append((_loop_time(), job.job_id, cursor))
        if job.job_id in self.broken_logs:
            raise OSError(f"no log stream {job.log_stream} yet")
        start = int(cursor or 0)
        return LogChunk(lines[start:], str(len(lines)))

    def log_reader(self) -> Any:
        return None if self.logs_limiter is None else PacedLogReader(self, self.logs_limiter)

    async def aclose(self) -> None:
        return None

    @classmethod
    def reset(cls) -> None:
        """Forget every job and record (each test starts with an empty job system)."""
        records = (
            cls.jobs,
            cls.logs,
            cls.created,
            cls.describes,
            cls.describe_faults,
            cls.rejected_ids,
            cls.before_describe,
            cls.broken_logs,
            cls.log_reads,
            cls.terminated,
            cls.submitted,
            cls.terminate_calls,
            cls.submitted_ids,
        )
        for record in records:
            record.clear()
        PacedLogReader.calls.clear()
        cls.opened = 0
        cls.log_rate = None

    @classmethod
    def write(cls, job_id: str, lines: Sequence[str]) -> None:
        """The job writes ``lines`` to its log."""
        cls.logs[job_id] += list(lines)

    @classmethod
    def set_state(cls, job_id: str, status: str, **fields: Any) -> JobState:
        """The job system moves the job to ``status`` (and any other JobState fields)."""
        state = cls.jobs[job_id] = dataclasses.replace(cls.jobs[job_id], status=status, **fields)
        return state

    @classmethod
    def finish(cls, job_id: str, lines: Sequence[str] = ()) -> None:
        """End a job SUCCEEDED after writing ``lines`` to its log (the test's stand-in for the work)."""
        cls.logs[job_id] += list(lines)
        state = cls.jobs[job_id]
        cls.jobs[job_id] = JobState(
            job_id, SUCCEEDED, name=state.name, exit_code=0, attempts=1, tags=state.tags, log_stream=state.log_stream
        )

    @classmethod
    def fail(cls, job_id: str, reason: str, exit_code: int | None, lines: Sequence[str] = ()) -> None:
        """End a job FAILED after writing ``lines`` to its log."""
        cls.logs[job_id] += list(lines)
        cls.set_state(job_id, FAILED, status_reason=reason, exit_code=exit_code, attempts=1)


class PacedLogReader:
    """A batched log reader like CloudWatch's: up to ``streams_per_call`` logs per call, each call
    waiting for a turn of the backend's one RateLimiter and taking ``call_seconds``."""

    streams_per_call: ClassVar[int] = 100
    call_seconds: ClassVar[float] = 0.05
    calls: ClassVar[list[tuple[float, int, bool]]] = []  # (loop time, logs read, urgent) per call

    def __init__(self, backend: InMemoryBackend, limiter: RateLimiter) -> None:
        self.backend = backend
        self.limiter = limiter

    def needs_last_read(self, follow: Any) -> bool:
        return bool(follow.stream)

    def capacity(self, seconds: float) -> int:
        # Calls that can start within the first half of the time, as the CloudWatch reader counts them.
        wait = self.limiter.expected_wait(urgent=True)
        if wait > seconds / 2:
            return 0
        return (int((seconds / 2 - wait) * self.limiter.rate) + 1) * self.streams_per_call

    async def read(self, follows: Sequence[Any], *, urgent: bool = False) -> None:
        now = _loop_time()
        due = [f for f in follows if not f.closed and f.stream and (urgent or f.retry_at <= now)]
        for i in range(0, len(due), self.streams_per_call):
            batch = due[i : i + self.streams_per_call]
            await self.limiter.acquire(urgent=urgent)
            self.calls.append((_loop_time(), len(batch), urgent))
            await asyncio.sleep(self.call_seconds)
            for follow in batch:
                lines = self.backend.logs.get(follow.job.job_id, [])
                start = int(follow.cursor or 0)
                follow.cursor = str(len(lines))
                follow.deliver(lines[start:])
