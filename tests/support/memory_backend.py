"""InMemoryBackend: the smallest JobBackend that keeps the contract, for tests.

Jobs live in a dict shared by every instance of one process (as a job system outlives its
clients); they stay RUNNING until ``finish`` (a test's lever) or ``terminate`` ends them.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import ClassVar, Mapping, Sequence

from airflow_gpu.jobs.backend import FAILED, SUCCEEDED, BackendTarget, JobBackend, JobState, LogChunk, register_backend
from airflow_gpu.jobs.spec import TAG_CANCELLED, TAG_IDEMPOTENCY_KEY, JobSpec


@register_backend
class InMemoryBackend(JobBackend):
    name = "memory"
    describe_batch_size: ClassVar[int] = 100
    jobs: ClassVar[dict[str, JobState]] = {}
    logs: ClassVar[dict[str, list[str]]] = {}
    terminate_calls: ClassVar[list[str]] = []  # every terminate asked for, live job or not (counts TerminateJob)
    submitted: ClassVar[list[str]] = []  # every job submitted (counts SubmitJob)
    _ids = itertools.count(1)

    @classmethod
    async def open(cls, target: BackendTarget) -> InMemoryBackend:
        return cls()

    @property
    def location(self) -> str:
        return "memory"

    async def submit(self, spec: JobSpec) -> JobState:
        job_id = f"mem-{next(self._ids)}"
        state = JobState(job_id, "RUNNING", name=spec.name, tags=dict(spec.tags), queued_since=time.time(),
                         log_stream=job_id)
        self.jobs[job_id] = state
        self.logs[job_id] = []
        self.submitted.append(job_id)
        return state

    async def find(self, spec: JobSpec) -> list[JobState]:
        key = spec.tags[TAG_IDEMPOTENCY_KEY]
        found = [s for s in self.jobs.values() if s.tags.get(TAG_IDEMPOTENCY_KEY) == key and TAG_CANCELLED not in s.tags]
        return sorted(found, key=lambda s: int(s.job_id.split("-")[1]), reverse=True)

    async def describe(self, job_ids: Sequence[str]) -> list[JobState]:
        return [self.jobs[j] for j in job_ids[: self.describe_batch_size] if j in self.jobs]

    async def add_tags(self, job_id: str, tags: Mapping[str, str]) -> None:
        state = self.jobs[job_id]
        self.jobs[job_id] = dataclasses.replace(state, tags={**state.tags, **tags})

    async def terminate(self, job_id: str, reason: str) -> None:
        self.terminate_calls.append(job_id)
        state = self.jobs.get(job_id)
        if state is None or state.is_terminal:
            return
        self.jobs[job_id] = JobState(job_id, FAILED, name=state.name, status_reason=reason, attempts=1,
                                     tags={**state.tags, TAG_CANCELLED: "true"}, log_stream=state.log_stream)

    async def read_logs(self, job: JobState, *, cursor: str | None = None, tail: int | None = None) -> LogChunk:
        lines = self.logs.get(job.job_id, [])
        if tail is not None:
            return LogChunk(lines[-tail:] if tail else [], str(len(lines)))
        start = int(cursor or 0)
        return LogChunk(lines[start:], str(len(lines)))

    async def aclose(self) -> None:
        return None

    @classmethod
    def reset(cls) -> None:
        """Forget every job (each test starts with an empty job system)."""
        cls.jobs.clear()
        cls.logs.clear()
        cls.terminate_calls.clear()
        cls.submitted.clear()

    @classmethod
    def finish(cls, job_id: str, lines: Sequence[str] = ()) -> None:
        """End a job SUCCEEDED after writing ``lines`` to its log (the test's stand-in for the work)."""
        cls.logs[job_id] += list(lines)
        state = cls.jobs[job_id]
        cls.jobs[job_id] = JobState(job_id, SUCCEEDED, name=state.name, exit_code=0, attempts=1, tags=state.tags,
                                    log_stream=state.log_stream)
