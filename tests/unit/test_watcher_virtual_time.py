"""JobWatcher over the in-memory backend, in virtual time: batching, fan-out, cadence, spread, failed
polls and their backoff, blocked and unknown jobs. The same behaviours tests/integration checks against
moto with real sleeps, here in milliseconds and to the exact second."""

from __future__ import annotations

import asyncio

import pytest

from airflow_gpu.jobs.backend import FAILED, STOPPED_FOR_MAX_QUEUED, STOPPED_FOR_NEVER_STARTS, UNKNOWN, JobState
from airflow_gpu.jobs.lease import ClientLease
from airflow_gpu.jobs.poll_errors import CannotSeeJobs
from airflow_gpu.jobs.watcher import JobWatcher, follow_job
from tests.support.memory_backend import TARGET, submit_jobs
from tests.support.virtual_clock import now, run

GATHER = JobWatcher.gather_delay  # the first cycle starts this long after the first watch
MISCONFIGURED = (
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement (vCPU/memory/GPU) is higher than "
    "that can be met by the CE(s) attached to the job queue."
)
CAPACITY = (
    "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - There is no Spot capacity available that meets the job requirements."
)


def cycles(
    describes: list[tuple[float, tuple[str, ...]]], interval: float
) -> list[list[tuple[float, tuple[str, ...]]]]:
    """The describe calls grouped by the cycle they belong to (cycles start every ``interval`` from GATHER)."""
    grouped: dict[int, list] = {}
    for stamp, ids in describes:
        grouped.setdefault(int((stamp - GATHER + 1e-9) // interval), []).append((stamp, ids))
    return [grouped[k] for k in sorted(grouped)]


def test_each_cycle_describes_every_job_once_in_calls_of_at_most_100_ids(memory_jobs):
    async def main() -> None:
        ids = await submit_jobs(250)
        watcher = JobWatcher.shared(TARGET)
        watches = [watcher.watch(job_id, poll_interval=30) for job_id in ids]
        await asyncio.sleep(GATHER + 2 * 30 + 29)  # three cycles
        assert watcher.cycles == 3
        for cycle in cycles(memory_jobs.describes, 30):
            assert [len(ids) for _, ids in cycle] == [100, 100, 50]
            assert sorted(j for _, asked in cycle for j in asked) == sorted(ids)
        assert memory_jobs.opened == 1  # one client for every watch
        for watch in watches:
            watch.close()

    run(main)


def test_watches_starting_together_share_their_first_call(memory_jobs):
    async def main() -> None:
        ids = await submit_jobs(40)
        watcher = JobWatcher.shared(TARGET)
        for job_id in ids:
            watcher.watch(job_id, poll_interval=30)
            await asyncio.sleep(0.001)  # starting one after the other, within the gather delay
        await asyncio.sleep(1)
        assert memory_jobs.describes == [(GATHER, tuple(ids))]

    run(main)


def test_every_watch_on_a_job_gets_each_change_once_and_nothing_while_it_stays(memory_jobs):
    async def main() -> None:
        job, other = await submit_jobs(2)
        watcher = JobWatcher.shared(TARGET)
        first, second = watcher.watch(job, poll_interval=30), watcher.watch(job, poll_interval=30)
        bystander = watcher.watch(other, poll_interval=30)
        assert [(await w.next_change()).status for w in (first, second, bystander)] == ["RUNNING"] * 3
        with pytest.raises(TimeoutError):  # three more polls, no change: nothing is delivered
            await asyncio.wait_for(first.next_change(), 100)
        asyncio.get_running_loop().call_later(10, memory_jobs.finish, job)
        ended = await asyncio.gather(first.next_change(), second.next_change())
        assert [s.status for s in ended] == ["SUCCEEDED", "SUCCEEDED"] and ended[0] is ended[1]
        assert now() == GATHER + 4 * 30  # seen at the first poll after the change
        assert bystander.state.status == "RUNNING"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bystander.next_change(), 60)
        # A terminal job is no longer polled; the live one still is.
        calls = len(memory_jobs.describes)
        await asyncio.sleep(60)
        assert {j for _, ids in memory_jobs.describes[calls:] for j in ids} == {other}

    run(main)


def test_cycles_run_at_the_smallest_interval_asked_and_a_faster_watch_brings_the_next_forward(memory_jobs):
    async def main() -> None:
        slow_job, fast_job = await submit_jobs(2)
        watcher = JobWatcher.shared(TARGET)
        slow = watcher.watch(slow_job, poll_interval=300)
        await asyncio.sleep(100)  # one cycle at GATHER; the next would be at 300
        fast = watcher.watch(fast_job, poll_interval=10)
        await asyncio.sleep(35)
        stamps = [stamp for stamp, _ in memory_jobs.describes]
        assert stamps == [GATHER, 100, 110, 120, 130]  # brought forward at once, then every 10 s
        fast.close()
        await asyncio.sleep(1000)
        stamps = [stamp for stamp, _ in memory_jobs.describes]
        assert stamps[5:] == [140, 440, 740, 1040]  # the cycle already due, then the slow interval, start to start
        slow.close()

    run(main)


def test_a_cycles_chunks_start_spread_over_half_the_interval_in_the_same_order(memory_jobs):
    async def main() -> None:
        ids = await submit_jobs(250)
        watcher = JobWatcher.shared(TARGET)
        for job_id in ids:
            watcher.watch(job_id, poll_interval=600)
        await asyncio.sleep(GATHER + 600 + 599)
        first, second = cycles(memory_jobs.describes, 600)
        assert [stamp for stamp, _ in first] == pytest.approx([GATHER, GATHER + 100, GATHER + 200])
        assert [stamp for stamp, _ in second] == pytest.approx([GATHER + 600, GATHER + 700, GATHER + 800])
        assert [ids for _, ids in first] == [ids for _, ids in second]  # each job once per interval

    run(main)


def test_a_failed_poll_never_ends_a_job(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        memory_jobs.describe_faults.extend(
            CannotSeeJobs("Access denied", code="AccessDeniedException") for _ in range(5)
        )
        seen: list[str] = []
        asyncio.get_running_loop().call_later(200, memory_jobs.finish, job)
        async with JobWatcher.shared(TARGET).watch(job, poll_interval=30) as watch:
            final = await follow_job(watch, on_change=lambda s: seen.append(s.status))
        assert final.status == "SUCCEEDED"
        assert seen == ["RUNNING", "SUCCEEDED"]  # no UNKNOWN, no FAILED on the way
        assert memory_jobs.terminated == []

    run(main)


def test_failed_polls_back_off_with_growing_jittered_pauses_and_recover_on_success(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        memory_jobs.describe_faults.extend(CannotSeeJobs("Rate exceeded", code="ThrottlingException") for _ in range(6))
        watch = JobWatcher.shared(TARGET).watch(job, poll_interval=5)
        assert (await watch.next_change()).status == "RUNNING"
        stamps = [stamp for stamp, _ in memory_jobs.describes]
        gaps = [b - a for a, b in zip(stamps, stamps[1:7])]
        policy = JobWatcher.describe_error_policy
        ceilings = [min(policy.cap, policy.base * 2**level) for level in range(1, 7)]
        assert all(0 < gap <= ceiling for gap, ceiling in zip(gaps, ceilings)), (gaps, ceilings)
        shares = [gap / ceiling for gap, ceiling in zip(gaps, ceilings)]
        assert len({round(s, 6) for s in shares}) == len(shares)  # full jitter: a fresh draw each time
        # Recovered: the next poll comes on the cadence again, not after a backoff.
        after = len(memory_jobs.describes)
        await asyncio.sleep(5)
        assert len(memory_jobs.describes) == after + 1
        watch.close()

    run(main)


def test_a_job_undescribable_past_the_grace_time_is_reported_unseen_and_never_terminated(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        memory_jobs.describe_faults.extend(
            CannotSeeJobs("not authorized to perform batch:DescribeJobs", fix="grant batch:DescribeJobs")
            for _ in range(200)
        )
        async with JobWatcher.shared(TARGET).watch(job, poll_interval=30) as watch:
            final = await follow_job(watch)
        assert final.status == UNKNOWN
        assert (
            JobWatcher.describe_error_grace <= now() < JobWatcher.describe_error_grace + 61
        )  # the grace, plus one pause
        assert "could not see job" in final.status_reason and "grant batch:DescribeJobs" in final.status_reason
        assert "NOT terminated" in final.status_reason
        assert memory_jobs.terminated == [] and memory_jobs.jobs[job].status == "RUNNING"

    run(main)


def test_a_job_missing_from_three_polls_in_a_row_is_unknown_but_a_late_one_is_not(memory_jobs):
    async def main() -> None:
        [late] = await submit_jobs(1)
        held = memory_jobs.jobs.pop(late)  # eventually consistent: not visible for the first poll
        asyncio.get_running_loop().call_later(10, memory_jobs.jobs.__setitem__, late, held)
        watcher = JobWatcher.shared(TARGET)
        ghost = watcher.watch("mem-no-such-job", poll_interval=30)
        arriving = watcher.watch(late, poll_interval=30)
        lost = await ghost.next_change()
        assert lost.status == UNKNOWN and "does not know job mem-no-such-job" in lost.status_reason
        assert now() == GATHER + 2 * 30  # at the third miss
        assert arriving.state is not None and arriving.state.status == "RUNNING"

    run(main)


def test_one_malformed_id_fails_only_itself(memory_jobs):
    async def main() -> None:
        ids = await submit_jobs(5)
        memory_jobs.rejected_ids.add("not a job id")
        watcher = JobWatcher.shared(TARGET)
        watches = {job_id: watcher.watch(job_id, poll_interval=30) for job_id in [*ids[:2], "not a job id", *ids[2:]]}
        states = {job_id: await watch.next_change() for job_id, watch in watches.items()}
        assert states.pop("not a job id").status_reason.startswith("memory rejects job id 'not a job id'")
        assert {s.status for s in states.values()} == {"RUNNING"}

    run(main)


def test_a_runnable_job_blocked_by_misconfiguration_fails_at_once_with_the_reason(memory_jobs):
    async def main() -> JobState:
        [job] = await submit_jobs(1, status="RUNNABLE")
        memory_jobs.set_state(job, "RUNNABLE", status_reason=MISCONFIGURED)
        async with JobWatcher.shared(TARGET).watch(job, poll_interval=30) as watch:
            final = await follow_job(watch)
        assert now() == GATHER  # the first poll decides: no waiting for max_queued
        assert [j for j, _ in memory_jobs.terminated] == [job]
        return final

    final = run(main)
    assert (final.status, final.stopped_for) == (FAILED, STOPPED_FOR_NEVER_STARTS)
    assert final.status_reason.startswith(
        "the job can never start: AWS Batch reports MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"
    )
    assert "lower gpus/vcpus/memory_mib" in final.status_reason  # the fix


def test_a_capacity_wait_keeps_waiting_and_reports_each_change_of_reason_once(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1, status="RUNNABLE")
        loop = asyncio.get_running_loop()
        loop.call_later(40, lambda: memory_jobs.set_state(job, "RUNNABLE", status_reason=CAPACITY))
        loop.call_later(200, lambda: memory_jobs.set_state(job, "RUNNING", status_reason=None))
        loop.call_later(300, memory_jobs.finish, job)
        changes: list[tuple[str, str | None]] = []
        async with JobWatcher.shared(TARGET).watch(job, poll_interval=30) as watch:
            final = await follow_job(
                watch, on_change=lambda s: changes.append((s.status, s.blocked and s.blocked.category))
            )
        assert final.status == "SUCCEEDED" and memory_jobs.terminated == []
        assert changes == [("RUNNABLE", None), ("RUNNABLE", "CAPACITY"), ("RUNNING", None), ("SUCCEEDED", None)]

    run(main)


def test_max_queued_terminates_a_job_still_queued_and_spares_one_that_started(memory_jobs):
    async def main() -> None:
        queued, started = await submit_jobs(2, status="RUNNABLE")
        asyncio.get_running_loop().call_later(50, lambda: memory_jobs.set_state(started, "RUNNING"))
        asyncio.get_running_loop().call_later(400, memory_jobs.finish, started)
        watcher = JobWatcher.shared(TARGET)
        async with (
            watcher.watch(queued, poll_interval=30, max_queued=100) as a,
            watcher.watch(started, poll_interval=30, max_queued=100) as b,
        ):
            stuck, fine = await asyncio.gather(follow_job(a), follow_job(b))
        assert (stuck.status, stuck.stopped_for) == (FAILED, STOPPED_FOR_MAX_QUEUED)
        assert stuck.status_reason.startswith(
            "no GPU capacity for 120 s: the job stayed RUNNABLE longer than max_queued=100 s"
        )
        assert fine.status == "SUCCEEDED"
        assert [j for j, _ in memory_jobs.terminated] == [queued]

    run(main)


def test_the_client_closes_a_grace_period_after_the_last_watch_and_a_watch_within_it_reuses_it(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        watcher = JobWatcher.shared(TARGET)
        watcher.watch(job, poll_interval=30).close()
        await asyncio.sleep(ClientLease.grace_period - 1)
        assert not watcher.closed
        again = JobWatcher.shared(TARGET).watch(job, poll_interval=30)  # within the grace period: same watcher
        await asyncio.sleep(ClientLease.grace_period + 1)
        assert not watcher.closed and JobWatcher.shared(TARGET) is watcher
        again.close()
        await asyncio.sleep(ClientLease.grace_period + 0.001)
        assert watcher.closed and memory_jobs.opened == 1
        assert JobWatcher.shared(TARGET) is not watcher  # the next user gets a fresh one

    run(main)
