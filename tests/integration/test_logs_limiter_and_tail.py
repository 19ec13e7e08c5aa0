"""The shared rate limiter, and live logs from a backend without a batched log API (job by job,
through ``read_logs(cursor=...)``, as the local backend tails its job's log file)."""

from __future__ import annotations

import asyncio
from typing import Sequence

import pytest

from airflow_gpu.jobs.backend import BackendTarget, JobBackend, JobState, LogChunk, register_backend
from airflow_gpu.jobs.backoff import RateLimiter
from airflow_gpu.jobs.follower import CursorLogReader, LogFollower
from airflow_gpu.jobs.lease import ClientLease
from airflow_gpu.jobs.loop_log import logs_written
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.triggers import GpuBatchJobTrigger
from tests.support.gpu_batch_testing import LineLog
from tests.support.waiting import wait_until


async def test_limiter_keeps_the_rate_after_its_burst():
    limiter = RateLimiter(rate=50, burst=3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stamps = []

    async def call() -> None:
        await limiter.acquire()
        stamps.append(loop.time() - started)

    calls = [asyncio.ensure_future(call()) for _ in range(13)]
    await asyncio.sleep(0)  # one pass of the loop, no timer fired yet
    assert (len(stamps), limiter.waiting) == (3, 10)  # the burst goes at once, the rest queue
    await asyncio.gather(*calls)
    assert stamps[-1] >= 10 / 50 - 0.01  # the other 10 at 50 per second, never faster
    assert limiter.granted == 13


async def test_urgent_waiters_go_first_and_cancelled_ones_give_their_turn_back():
    limiter = RateLimiter(rate=20, burst=1)
    await limiter.acquire()  # the bucket is empty now
    order: list[str] = []

    async def call(name: str, urgent: bool) -> None:
        await limiter.acquire(urgent=urgent)
        order.append(name)

    routine = [asyncio.create_task(call(f"routine{i}", False)) for i in range(3)]
    await asyncio.sleep(0)
    gone = asyncio.create_task(call("gone", True))
    last = asyncio.create_task(call("last words", True))
    await asyncio.sleep(0)
    assert limiter.waiting == 5
    assert limiter.expected_wait(urgent=True) == pytest.approx(3 / 20, abs=0.03)  # 2 urgent ahead, plus itself
    gone.cancel()
    await asyncio.gather(*routine, last, gone, return_exceptions=True)
    assert order == ["last words", "routine0", "routine1", "routine2"]
    assert limiter.waiting == 0


def test_limiter_refuses_nonsense():
    with pytest.raises(ValueError, match="rate > 0"):
        RateLimiter(0)
    with pytest.raises(ValueError, match="burst >= 1"):
        RateLimiter(1, burst=0)


# -- a backend without a batched log API -------------------------------------------------------------


class TailBackend(JobBackend):
    """Jobs and their log files in memory; ``read_logs`` continues from a cursor (a line offset),
    which is how the local backend tails a job's log file."""

    name = "test-tail"
    describe_batch_size = 1000
    jobs: dict[str, JobState] = {}
    logs: dict[str, list[str]] = {}
    reads = 0
    broken: set[str] = set()

    @classmethod
    async def open(cls, target: BackendTarget) -> TailBackend:
        return cls()

    @property
    def location(self) -> str:
        return "memory"

    async def submit(self, spec):  # pragma: no cover - not used here
        raise NotImplementedError

    async def find(self, spec):  # pragma: no cover - not used here
        return []

    async def describe(self, job_ids: Sequence[str]) -> list[JobState]:
        return [self.jobs[j] for j in job_ids if j in self.jobs]

    async def terminate(self, job_id: str, reason: str) -> None:  # pragma: no cover - not used here
        pass

    async def read_logs(self, job: JobState, *, cursor: str | None = None, tail: int | None = None) -> LogChunk:
        type(self).reads += 1
        if job.log_stream in self.broken:
            raise OSError(f"cannot open {job.log_stream}")
        lines = self.logs.get(job.log_stream or "", [])
        if tail is not None:
            return LogChunk(lines[-tail:], cursor)
        start = int(cursor or 0)
        return LogChunk(lines[start:], str(len(lines)))

    async def aclose(self) -> None:
        pass


register_backend(TailBackend)


@pytest.fixture
async def tail_backend(monkeypatch):
    monkeypatch.setattr(TailBackend, "jobs", {})
    monkeypatch.setattr(TailBackend, "logs", {})
    monkeypatch.setattr(TailBackend, "broken", set())
    monkeypatch.setattr(TailBackend, "reads", 0)
    monkeypatch.setattr(ClientLease, "grace_period", 0.1)
    yield TailBackend
    await LogFollower.close_all()
    await JobWatcher.close_all()


async def test_a_backend_without_batched_reads_is_tailed_through_read_logs(tail_backend):
    jobs, logs = tail_backend.jobs, tail_backend.logs
    jobs["a"] = JobState("a", "RUNNING", log_stream="/tmp/a.log")
    jobs["b"] = JobState("b", "RUNNING", log_stream="/tmp/b.log")
    tail_backend.broken.add("/tmp/b.log")  # its file cannot be read: the trigger must not care
    logs["/tmp/a.log"] = ["epoch 1"]
    triggers = {j: GpuBatchJobTrigger(j, poll_interval=0.05, backend="test-tail") for j in ("a", "b")}
    for trigger in triggers.values():
        trigger._log = LineLog()

    async def run(trigger):
        return [e.payload async for e in trigger.run()]

    tasks = [asyncio.create_task(run(t)) for t in triggers.values()]
    follower = LogFollower.shared(BackendTarget(backend="test-tail"))
    await wait_until(lambda: triggers["a"].log.relayed("a") == ["epoch 1"])
    assert isinstance(follower.reader, CursorLogReader)
    logs["/tmp/a.log"] += ["epoch 2", "epoch 3"]
    await wait_until(lambda: triggers["a"].log.relayed("a") == ["epoch 1", "epoch 2", "epoch 3"])
    reads = tail_backend.reads
    await wait_until(lambda: follower.sweeps >= 3 and tail_backend.reads > reads + 2)
    await logs_written()  # a repeat would be written off the loop, maybe after the sweep counted
    assert triggers["a"].log.relayed("a") == ["epoch 1", "epoch 2", "epoch 3"]  # no repeats across polls

    logs["/tmp/a.log"] += ["done"]  # written just before the end: the last read relays it
    jobs["a"] = JobState("a", "SUCCEEDED", exit_code=0, log_stream="/tmp/a.log")
    jobs["b"] = JobState("b", "FAILED", exit_code=1, log_stream="/tmp/b.log")
    [[a_event], [b_event]] = await asyncio.gather(*tasks)
    assert (a_event["status"], b_event["status"]) == ("SUCCEEDED", "FAILED")
    assert triggers["a"].log.relayed("a") == ["epoch 1", "epoch 2", "epoch 3", "done"]
    assert triggers["b"].log.relayed("b") == []
    assert follower.followed == 0


async def test_a_new_attempt_switches_streams_and_the_old_one_gets_its_last_read(tail_backend):
    jobs, logs = tail_backend.jobs, tail_backend.logs
    jobs["r"] = JobState("r", "RUNNING", attempts=1, log_stream="/tmp/r-1.log")
    logs["/tmp/r-1.log"] = ["attempt 1 starts"]
    trigger = GpuBatchJobTrigger("r", poll_interval=0.05, backend="test-tail")
    trigger._log = LineLog()

    async def run():
        return [e.payload async for e in trigger.run()]

    task = asyncio.create_task(run())
    await wait_until(lambda: trigger.log.relayed("r") == ["attempt 1 starts"])
    logs["/tmp/r-1.log"] += ["Host EC2 instance terminated"]
    logs["/tmp/r-2.log"] = ["attempt 2 starts"]
    jobs["r"] = JobState("r", "RUNNING", attempts=2, log_stream="/tmp/r-2.log")  # a Spot reclaim and a retry
    await wait_until(lambda: "attempt 2 starts" in trigger.log.relayed("r"))
    jobs["r"] = JobState("r", "SUCCEEDED", attempts=2, exit_code=0, log_stream="/tmp/r-2.log")
    [event] = await task
    assert event["attempts"] == 2
    assert sorted(trigger.log.relayed("r")) == sorted(
        ["attempt 1 starts", "Host EC2 instance terminated", "attempt 2 starts"]
    )
