"""One contract, every JobBackend: the same assertions over the in-memory, local and AWS Batch (moto) backends.

What the watcher, the trigger and the operator rely on, whatever the job system:
submit gives a job that describe and find see; describe leaves unknown ids out; find
keeps to one task instance; add_tags shows in describe and find; terminate ends a live job, marks it cancelled (so reattach
never picks it) and is a no-op on an ended one; a job without log lines yet reads as
an empty chunk; aclose can be called twice.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from airflow_gpu.jobs.backend import BackendTarget, JobBackend, JobState, backend_class
from airflow_gpu.jobs.spec import TAG_CANCELLED, TAG_DEFERRED_TRY, TAG_IDEMPOTENCY_KEY, JobSpec, TaskIdentity
from tests.support.local_jobs_testing import kill_leftover_local_jobs
from tests.support.memory_backend import InMemoryBackend

pytestmark = pytest.mark.timeout(120)

LONG = [sys.executable, "-c", "import time; time.sleep(60)"]


@dataclass
class Subject:
    backend: JobBackend
    spec: Callable[[str], JobSpec]  # run id -> a spec for a job that keeps running until stopped


@pytest.fixture(params=["memory", "local", "aws_batch"])
async def subject(request, tmp_path, monkeypatch):
    name = request.param
    if name == "memory":
        InMemoryBackend.reset()
        queue, definition, command = "q", "d", LONG
    elif name == "local":
        from airflow_gpu.jobs.local.backend import STATE_DIR_ENV

        monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "local-jobs"))
        queue, definition, command = "local", "local", LONG
    else:
        request.getfixturevalue("aws_conn")
        moto_aws = request.getfixturevalue("moto_aws")
        gpu_batch = request.getfixturevalue("gpu_batch")
        moto_aws.batch.hold("RUNNING")
        queue, definition, command = gpu_batch["job_queue"], gpu_batch["job_definition"], ["true"]

    def spec(run_id: str) -> JobSpec:
        return JobSpec.build(
            identity=TaskIdentity("dag", "train", run_id, -1),
            job_queue=queue,
            job_definition=definition,
            command=command,
        )

    backend = await backend_class(name).open(BackendTarget(backend=name))
    yield Subject(backend, spec)
    await backend.aclose()
    if name == "local":
        kill_leftover_local_jobs(tmp_path / "local-jobs")


async def until(backend: JobBackend, job_id: str, done: Callable[[JobState], bool], timeout: float = 30) -> JobState:
    deadline = time.monotonic() + timeout
    while True:
        found = await backend.describe([job_id])
        if found and done(found[0]):
            return found[0]
        assert time.monotonic() < deadline, f"job {job_id}: {found}"
        await asyncio.sleep(0.05)


def test_the_three_backends_are_registered():
    assert backend_class("memory") is InMemoryBackend
    assert {backend_class(n).name for n in ("memory", "local", "aws_batch")} == {"memory", "local", "aws_batch"}


async def test_submit_gives_a_job_that_describe_and_find_see(subject):
    backend, spec = subject.backend, subject.spec
    state = await backend.submit(spec("run-1"))
    assert state.job_id and state.name == spec("run-1").name
    live = await until(backend, state.job_id, lambda s: s.is_live)
    assert live.job_id == state.job_id
    assert [s.job_id for s in await backend.find(spec("run-1"))] == [state.job_id]
    assert await backend.find(spec("run-2")) == []  # another task instance's key


async def test_describe_leaves_unknown_ids_out(subject):
    backend = subject.backend
    state = await backend.submit(subject.spec("run-1"))
    described = await backend.describe([state.job_id, "no-such-job-0000"])
    assert [s.job_id for s in described] == [state.job_id]
    assert backend.describe_batch_size >= 1


async def test_terminate_ends_marks_and_is_idempotent(subject):
    backend, spec = subject.backend, subject.spec
    state = await backend.submit(spec("run-1"))
    await until(backend, state.job_id, lambda s: s.is_live)
    await backend.terminate(state.job_id, "Airflow task dag.train was cleared")
    ended = await until(backend, state.job_id, lambda s: s.is_terminal)
    assert ended.status == "FAILED"
    assert TAG_CANCELLED in ended.tags  # how the operator tells its own stop from another's
    assert await backend.find(spec("run-1")) == []  # a cancelled job is never reattached
    await backend.terminate(state.job_id, "again")  # ended: a no-op, no error
    assert (await until(backend, state.job_id, lambda s: s.is_terminal)).status == "FAILED"


async def test_add_tags_shows_in_describe_and_find(subject):
    # The try that defers on a job tags it with its number (airflow_gpu/jobs/ownership.py).
    backend, spec = subject.backend, subject.spec
    state = await backend.submit(spec("run-1"))
    await until(backend, state.job_id, lambda s: s.is_live)
    await backend.add_tags(state.job_id, {TAG_DEFERRED_TRY: "2"})
    [described] = await backend.describe([state.job_id])
    [found] = await backend.find(spec("run-1"))
    assert described.tags[TAG_DEFERRED_TRY] == found.tags[TAG_DEFERRED_TRY] == "2"
    assert described.tags[TAG_IDEMPOTENCY_KEY] == spec("run-1").idempotency_key  # the others are kept
    await backend.terminate(state.job_id, "test over")


async def test_a_job_without_log_lines_reads_as_an_empty_chunk(subject):
    backend = subject.backend
    state = await until(backend, (await backend.submit(subject.spec("run-1"))).job_id, lambda s: s.is_live)
    assert (await backend.read_logs(state, tail=5)).lines == []
    assert (await backend.read_logs(state)).lines == []


async def test_aclose_twice_is_fine(subject):
    await subject.backend.aclose()
    await subject.backend.aclose()


def test_the_in_memory_backend_drives_a_job_to_success():
    """The in-memory backend's own lever, so tests can end a job without a job system."""

    async def run() -> tuple[JobState, Any]:
        backend = await InMemoryBackend.open(BackendTarget(backend="memory"))
        spec = JobSpec.build(identity=TaskIdentity("d", "t", "r", -1), job_queue="q", job_definition="d", command=["x"])
        state = await backend.submit(spec)
        InMemoryBackend.finish(state.job_id, ["done"])
        [final] = await backend.describe([state.job_id])
        return final, await backend.read_logs(final, tail=1)

    final, chunk = asyncio.run(run())
    assert final.status == "SUCCEEDED" and final.exit_code == 0 and chunk.lines == ["done"]
