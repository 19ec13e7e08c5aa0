"""LogFollower over the in-memory backend, in virtual time: cursors, every line once and in order, the
sweep's cadence, streams that cannot be read yet, the last read, and a rate-limited log API."""

from __future__ import annotations

import asyncio
import contextvars
import logging

from airflow_gpu.jobs.follower import CursorLogReader, LogFollower
from tests.support.memory_backend import TARGET, PacedLogReader, submit_jobs
from tests.support.virtual_clock import now, run

GATHER = LogFollower.gather_delay


def test_lines_arrive_in_order_and_once_across_sweeps_and_the_cursor_moves_on(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        got: list[list[str]] = []
        follower = LogFollower.shared(TARGET)
        follower.follow(memory_jobs.jobs[job], got.append, poll_interval=30)
        loop = asyncio.get_running_loop()
        for k in range(5):  # a few lines every 20 s, between and across sweeps
            loop.call_later(20 * k + 1, memory_jobs.write, job, [f"epoch {k} step {i}" for i in range(3)])
        await asyncio.sleep(GATHER + 4 * 30 + 1)
        assert [line for chunk in got for line in chunk] == [f"epoch {k} step {i}" for k in range(5) for i in range(3)]
        assert isinstance(follower.reader, CursorLogReader)
        cursors = [cursor for _, _, cursor in memory_jobs.log_reads]
        assert cursors == [None, "0", "6", "9", "15"]  # each read continues where the last stopped
        assert follower.sweeps == 5 and len(memory_jobs.log_reads) == 5  # one read per sweep, start to start

    run(main)


def test_each_follow_gets_its_own_lines_in_its_owners_context(memory_jobs):
    owner: contextvars.ContextVar[str] = contextvars.ContextVar("owner")

    async def main() -> None:
        jobs = await submit_jobs(3)
        got: dict[str, list[tuple[str, str]]] = {job: [] for job in jobs}
        follower = LogFollower.shared(TARGET)
        for job in jobs:
            owner.set(f"trigger of {job}")  # the triggerer binds a trigger's id like this
            follower.follow(
                memory_jobs.jobs[job],
                lambda lines, job=job: got[job].extend((owner.get(), line) for line in lines),
                poll_interval=10,
            )
            memory_jobs.write(job, [f"{job} says hi"])
        await asyncio.sleep(GATHER + 1)
        assert got == {job: [(f"trigger of {job}", f"{job} says hi")] for job in jobs}

    run(main)


def test_a_sink_that_raises_costs_its_own_lines_only(memory_jobs, caplog):
    async def main() -> None:
        bad, good = await submit_jobs(2)
        got: list[str] = []

        def broken(lines: list[str]) -> None:
            raise ValueError("sink down")

        follower = LogFollower.shared(TARGET)
        follower.follow(memory_jobs.jobs[bad], broken, poll_interval=10)
        follower.follow(memory_jobs.jobs[good], got.extend, poll_interval=10)
        memory_jobs.write(bad, ["lost"])
        memory_jobs.write(good, ["one"])
        await asyncio.sleep(GATHER + 10)
        memory_jobs.write(good, ["two"])
        await asyncio.sleep(10)
        assert got == ["one", "two"]

    with caplog.at_level(logging.ERROR, logger="airflow_gpu.jobs.follower"):
        run(main)
    assert "Relaying 1 log lines of job" in caplog.text


def test_a_log_that_cannot_be_read_yet_is_asked_for_less_and_less_often_and_fails_nothing(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        memory_jobs.broken_logs.add(job)
        memory_jobs.write(job, ["finally"])
        got: list[str] = []
        LogFollower.shared(TARGET).follow(memory_jobs.jobs[job], got.extend, poll_interval=10)
        await asyncio.sleep(GATHER + 151)
        stamps = [stamp for stamp, _, _ in memory_jobs.log_reads]
        # Pauses of 10, 20, 40, 80 s: each miss doubles the pause (sweeps come every 10 s).
        assert [round(b - a) for a, b in zip(stamps, stamps[1:])] == [10, 20, 40, 80]
        memory_jobs.broken_logs.clear()
        await asyncio.sleep(160)
        assert got == ["finally"]

    run(main)


def test_the_last_read_relays_lines_written_just_before_the_end_and_stops_following(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        got: list[str] = []
        follower = LogFollower.shared(TARGET)
        follow = follower.follow(memory_jobs.jobs[job], got.extend, poll_interval=30)
        memory_jobs.write(job, ["start"])
        await asyncio.sleep(GATHER + 5)
        memory_jobs.finish(job, ["last words"])
        started = now()
        assert await follow.finish(memory_jobs.jobs[job]) is True
        assert now() - started < LogFollower.final_read_timeout  # urgent: not at the next sweep, 30 s away
        assert got == ["start", "last words"]
        assert follow.closed and follower.followed == 0
        memory_jobs.write(job, ["after the end"])
        await asyncio.sleep(60)
        assert got == ["start", "last words"]

    run(main)


def test_sweeps_read_at_most_100_logs_per_call_paced_by_one_rate_limiter(memory_jobs, monkeypatch):
    memory_jobs.log_rate = 2.0  # calls per second, as low as CloudWatch's quota is per account

    async def main() -> None:
        jobs = await submit_jobs(250)
        follower = LogFollower.shared(TARGET)
        got: dict[str, list[str]] = {job: [] for job in jobs}
        for job in jobs:
            memory_jobs.write(job, [f"{job} line"])
            follower.follow(memory_jobs.jobs[job], got[job].extend, poll_interval=30)
        await asyncio.sleep(GATHER + 30 + 5)
        assert isinstance(follower.reader, PacedLogReader)
        calls = PacedLogReader.calls
        assert [n for _, n, _ in calls] == [100, 100, 50] * 2
        stamps = [stamp for stamp, _, _ in calls]
        assert all(b - a >= 1 / memory_jobs.log_rate - 1e-9 for a, b in zip(stamps, stamps[1:]))  # never faster
        assert all(lines == [f"{job} line"] for job, lines in got.items())  # every log, once

    run(main)


def test_a_busy_log_api_does_not_hold_the_end_of_a_job_up(memory_jobs, caplog):
    memory_jobs.log_rate = 0.5  # one call every 2 s

    async def main() -> None:
        jobs = await submit_jobs(3)
        follower = LogFollower.shared(TARGET)
        follows = [follower.follow(memory_jobs.jobs[job], lambda lines: None, poll_interval=30) for job in jobs]
        await asyncio.sleep(GATHER + 0.1)
        backlog = [
            asyncio.ensure_future(follower.reader.limiter.acquire(urgent=True)) for _ in range(3)
        ]  # 6 s of calls queued
        await asyncio.sleep(0)
        started = now()
        results = await asyncio.gather(*(f.finish() for f in follows))
        assert results == [False, False, False]
        assert now() == started  # decided at once: the limiter could not serve them within the timeout
        assert follower.unfinished == 3
        for waiter in backlog:
            waiter.cancel()

    with caplog.at_level(logging.WARNING, logger="airflow_gpu.jobs.follower"):
        run(main)
    burst = [r for r in caplog.records if "Not relaying the last log lines" in r.getMessage()]
    assert len(burst) == 1 and "of 3 job(s)" in burst[0].getMessage()  # one line per burst, not per job
