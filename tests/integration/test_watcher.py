"""The shared JobWatcher: batching at scale, throttling, poll intervals, and nothing left open."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from airflow_gpu.jobs.aws import connection as aws_connection
from airflow_gpu.jobs.aws.backend import AwsBatchBackend
from airflow_gpu.jobs.backend import BackendTarget
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.triggers import GpuBatchJobTrigger
from tests.support.gpu_batch_testing import collect_events, in_triggerer, submit_raw
from tests.support.moto_aws import describe_rounds
from tests.support.waiting import wait_until


@pytest.fixture
async def closed_after():
    yield
    await JobWatcher.close_all()


@pytest.fixture
def opened(monkeypatch):
    """Count backend openings (one client each) and connection resolutions, and where they ran."""
    seen = {"open": 0, "resolve": 0, "resolve_threads": set()}
    real_open = AwsBatchBackend.open.__func__
    real_resolve = aws_connection.resolve_blocking

    async def counting_open(cls, target):
        seen["open"] += 1
        return await real_open(cls, target)

    def counting_resolve(*args):
        seen["resolve"] += 1
        seen["resolve_threads"].add(threading.get_ident())
        return real_resolve(*args)

    monkeypatch.setattr(AwsBatchBackend, "open", classmethod(counting_open))
    monkeypatch.setattr(aws_connection, "resolve_blocking", counting_resolve)
    return seen


async def submit_many(moto_aws, gpu_batch, n: int) -> list[str]:
    def one(i: int) -> str:
        return submit_raw(moto_aws, gpu_batch, f"job-{i}")

    with ThreadPoolExecutor(8) as pool:
        return await asyncio.gather(*(asyncio.wrap_future(pool.submit(one, i)) for i in range(n)))


async def test_300_triggers_share_one_client_and_at_most_3_calls_per_cycle(
    moto_aws, gpu_batch, aws_conn, opened, closed_after
):
    moto_aws.batch.hold("RUNNING")
    job_ids = await submit_many(moto_aws, gpu_batch, 300)
    moto_aws.log.reset()
    poll = 0.4
    triggers = [GpuBatchJobTrigger(job_id, poll_interval=poll) for job_id in job_ids]
    tasks = [asyncio.create_task(collect_events(t, timeout=60)) for t in triggers]
    watcher = JobWatcher.shared(BackendTarget())
    await wait_until(lambda: watcher.cycles >= 2)
    loop_thread = threading.get_ident()

    # Finish them: every third fails with its own exit code and reason.
    expected = {}
    for i, job_id in enumerate(job_ids):
        if i % 3 == 0:
            moto_aws.batch.set_status(job_id, "FAILED", reason=f"reason {i}", exit_code=i % 250 + 1)
            expected[job_id] = ("FAILED", f"reason {i}", i % 250 + 1)
        else:
            moto_aws.batch.set_status(job_id, "SUCCEEDED")
            expected[job_id] = ("SUCCEEDED", None, 0)
    results = await asyncio.gather(*tasks)

    for job_id, events in zip(job_ids, results):
        assert len(events) == 1
        event = events[0]
        assert event["job_id"] == job_id
        assert (event["status"], event["status_reason"], event["exit_code"]) == expected[job_id]

    # One client and one connection lookup for all 300, done off the event loop.
    assert opened["open"] == 1
    assert opened["resolve"] == 1 and loop_thread not in opened["resolve_threads"]
    # At the server: every cycle describes all 300 ids in at most ceil(300/100) = 3 calls. The calls are
    # split into rounds by the ids they name (a round ends where an id comes again), not by time.
    rounds = describe_rounds(moto_aws.log)
    assert len(rounds) >= 3
    for calls in rounds:
        assert len(calls) <= math.ceil(300 / 100), [len(c) for c in calls]
        assert all(len(ids) <= 100 for ids in calls)
    # ...and no job is described twice in a cycle: the calls, counted at the server, against the cycles
    # the watcher ran (a round cut short by a repeated id would hide a second describe within a cycle).
    # The watcher counts a cycle once all its calls are back; the last may not be counted yet: one more.
    assert moto_aws.log.calls["describejobs"] <= 3 * (watcher.cycles + 1)
    assert moto_aws.log.calls["submitjob"] == 0


async def test_throttling_backs_off_and_every_trigger_still_succeeds(
    moto_aws, gpu_batch, aws_conn, caplog, closed_after
):
    moto_aws.batch.hold("RUNNING")
    job_ids = await submit_many(moto_aws, gpu_batch, 40)
    tasks = [asyncio.create_task(collect_events(GpuBatchJobTrigger(j, poll_interval=0.1), timeout=60)) for j in job_ids]
    watcher = JobWatcher.shared(BackendTarget())
    await wait_until(lambda: watcher.cycles >= 1)
    caplog.set_level(logging.WARNING, logger="airflow_gpu.jobs.aws.backend")

    moto_aws.batch.throttle(3.0)
    await wait_until(lambda: moto_aws.log.calls["describejobs:throttled"] >= 3)
    for job_id in job_ids:  # they finish while Batch refuses to answer
        moto_aws.batch.set_status(job_id, "SUCCEEDED")
    results = await asyncio.gather(*tasks)

    assert all(events[0]["status"] == "SUCCEEDED" for events in results)
    assert moto_aws.log.calls["describejobs:throttled"] >= 3
    # One warning when the episode starts and one when it ends, not one per job or per retry.
    backing_off = [r for r in caplog.records if "backing off" in r.getMessage()]
    recovered = [r for r in caplog.records if "recovered after" in r.getMessage()]
    assert len(backing_off) == 1 and len(recovered) == 1
    assert watcher.backend_instance.backoff.episodes == 1


async def test_watcher_polls_at_the_smallest_requested_interval(moto_aws, gpu_batch, aws_conn, closed_after):
    moto_aws.batch.hold("RUNNING")
    slow_job, fast_job = submit_raw(moto_aws, gpu_batch, "slow"), submit_raw(moto_aws, gpu_batch, "fast")
    watcher = JobWatcher.shared(BackendTarget())
    slow = watcher.watch(slow_job, poll_interval=3600)
    await wait_until(lambda: watcher.cycles == 1)  # the first cycle runs soon after creation
    assert watcher.interval == 3600
    fast = watcher.watch(fast_job, poll_interval=0.1)
    assert watcher.interval == 0.1
    await wait_until(lambda: watcher.cycles >= 4)  # woken at once, not after the hour
    # The slow job rides along in the same calls: one DescribeJobs per cycle for both.
    later = [ids for _, ids in moto_aws.log.describe_batches[1:]]
    assert later and all(sorted(ids) == sorted([slow_job, fast_job]) for ids in later)
    moto_aws.batch.set_status(slow_job, "SUCCEEDED")
    state = await asyncio.wait_for(slow.next_change(), 5)
    while state.status != "SUCCEEDED":
        state = await asyncio.wait_for(slow.next_change(), 5)
    fast.close()
    assert watcher.interval == 3600
    slow.close()


async def test_client_closes_after_the_last_watch_and_a_grace_period(moto_aws, gpu_batch, aws_conn, opened):
    moto_aws.batch.hold("RUNNING")
    first, second = submit_raw(moto_aws, gpu_batch, "a"), submit_raw(moto_aws, gpu_batch, "b")
    moto_aws.batch.set_status(first, "SUCCEEDED")
    [event] = await collect_events(in_triggerer(GpuBatchJobTrigger(first, poll_interval=0.1)))
    assert event["status"] == "SUCCEEDED"
    [watcher] = JobWatcher.active()
    backend = watcher.backend_instance
    assert backend is not None and not backend.closed  # kept through the grace period...

    # ...so a trigger arriving meanwhile reuses the client.
    moto_aws.batch.set_status(second, "SUCCEEDED")
    await collect_events(in_triggerer(GpuBatchJobTrigger(second, poll_interval=0.1)))
    assert opened["open"] == 1

    await wait_until(lambda: backend.closed)  # then it closes by itself
    assert watcher.closed and JobWatcher.active() == []
    # aiobotocore sets its HTTP session map to None once every aiohttp session is closed.
    assert backend._batch._endpoint.http_session._sessions is None
    assert watcher.watched == 0


async def test_triggers_come_and_go_in_any_order_without_leaks(moto_aws, gpu_batch, aws_conn, opened):
    moto_aws.batch.hold("RUNNING")
    job_ids = await submit_many(moto_aws, gpu_batch, 30)
    triggers = [GpuBatchJobTrigger(j, poll_interval=0.1) for j in job_ids]
    tasks = {j: asyncio.create_task(collect_events(t, timeout=60)) for j, t in zip(job_ids, triggers)}
    watcher = JobWatcher.shared(BackendTarget())
    await wait_until(lambda: watcher.cycles >= 1)

    rng = random.Random(7)
    order = job_ids[:]
    rng.shuffle(order)
    cancelled, finished = order[:10], order[10:]
    for job_id in cancelled:  # a triggerer hands these to another process mid-wait
        tasks[job_id].cancel()
        await asyncio.sleep(0.01)
    for i, job_id in enumerate(finished):
        moto_aws.batch.set_status(job_id, "SUCCEEDED" if i % 2 else "FAILED", exit_code=None if i % 2 else 2)
        if i % 5 == 0:
            await asyncio.sleep(0.15)
    for job_id in finished:
        [event] = await tasks[job_id]
        assert event["job_id"] == job_id
    for job_id in cancelled:
        with pytest.raises(asyncio.CancelledError):
            await tasks[job_id]
    assert watcher.watched == 0
    await wait_until(lambda: watcher.closed)
    assert watcher.backend_instance is None or watcher.backend_instance.closed
    assert opened["open"] == 1
    assert moto_aws.log.terminated == []  # cancelling a trigger never stops its job


async def test_each_target_gets_its_own_watcher_and_each_loop_its_own(aws_conn, closed_after):
    a = JobWatcher.shared(BackendTarget())
    assert JobWatcher.shared(BackendTarget()) is a
    assert JobWatcher.shared(BackendTarget(region_name="eu-west-1")) is not a
    assert JobWatcher.shared(BackendTarget(conn_id="other")) is not a

    def in_another_loop():
        async def get():
            w = JobWatcher.shared(BackendTarget())
            await w.aclose()
            return w

        return asyncio.run(get())

    assert await asyncio.to_thread(in_another_loop) is not a


async def test_two_watches_on_one_job_share_its_poll_and_both_see_the_end(moto_aws, gpu_batch, aws_conn, closed_after):
    moto_aws.batch.hold("RUNNING")
    job_id = submit_raw(moto_aws, gpu_batch)
    watcher = JobWatcher.shared(BackendTarget())
    first = watcher.watch(job_id, poll_interval=0.1)
    second = watcher.watch(job_id, poll_interval=0.1)
    assert (await first.next_change()).status == "RUNNING"
    assert (await second.next_change()).status == "RUNNING"
    assert all(ids == [job_id] for _, ids in moto_aws.log.describe_batches)  # described once per cycle
    first.close()  # one leaving does not end the other's watch
    moto_aws.batch.set_status(job_id, "SUCCEEDED")
    assert (await asyncio.wait_for(second.next_change(), 5)).status == "SUCCEEDED"
    second.close()
    assert watcher.watched == 0


async def test_a_cycles_chunks_start_spread_over_half_the_interval_in_the_same_order(
    moto_aws, gpu_batch, aws_conn, monkeypatch, closed_after
):
    """Jobs that ended during one interval are not all seen in one instant (a burst of events that
    Airflow's triggerer turns into task state one by one): chunk k of K starts k/(2K) of the interval
    into its cycle, so each job is still described once per interval."""
    moto_aws.batch.hold("RUNNING")
    job_ids = await submit_many(moto_aws, gpu_batch, 250)
    schedule: list[tuple[int, float, tuple[str, ...]]] = []
    real = JobWatcher._describe_chunk

    async def recording(self, backend, chunk, gate, *, started, share):
        schedule.append((self.cycles, share * self.interval, tuple(chunk)))
        return await real(self, backend, chunk, gate, started=started, share=share)

    monkeypatch.setattr(JobWatcher, "_describe_chunk", recording)
    poll = 0.6
    watcher = JobWatcher.shared(BackendTarget())
    watches = [watcher.watch(job_id, poll_interval=poll) for job_id in job_ids]
    await wait_until(lambda: watcher.cycles >= 3)
    by_cycle: dict[int, list[tuple[float, tuple[str, ...]]]] = {}
    for cycle, after, chunk in schedule:
        by_cycle.setdefault(cycle, []).append((after, chunk))
    first, second = by_cycle[0], by_cycle[1]
    assert [after for after, _ in first] == pytest.approx([0.0, 0.1, 0.2])  # 0.5 * 0.6 s / 3 chunks apart
    assert [len(chunk) for _, chunk in first] == [100, 100, 50]
    assert first == second  # the same ids at the same offsets: once per interval each
    ids_per_cycle = [i for _, chunk in first for i in chunk]
    assert sorted(ids_per_cycle) == sorted(job_ids)
    for watch in watches:
        watch.close()


async def test_a_faster_watch_arriving_mid_cycle_brings_the_rest_of_the_spread_forward(
    moto_aws, gpu_batch, aws_conn, closed_after
):
    """250 jobs polled every 600 s spread their 3 chunks over 300 s; a job watched every 0.5 s that
    arrives after the first chunk must not wait out those 300 s for its first describe."""
    moto_aws.batch.hold("RUNNING")
    job_ids = await submit_many(moto_aws, gpu_batch, 251)
    watcher = JobWatcher.shared(BackendTarget())
    slow = [watcher.watch(job_id, poll_interval=600) for job_id in job_ids[:250]]
    await wait_until(lambda: any(w.state is not None for w in slow))  # chunk 1; chunks 2 and 3 wait 100 and 200 s
    assert sum(w.state is not None for w in slow) == 100
    fast = watcher.watch(job_ids[250], poll_interval=0.5)
    # The timeout bounds a failure only: before the fix the rest of the cycle slept 200 s more.
    await wait_until(lambda: fast.state is not None, timeout=60)
    assert all(w.state is not None for w in slow)  # the first cycle's 3 chunks were all described first
    for watch in [*slow, fast]:
        watch.close()
