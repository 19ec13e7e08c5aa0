"""ClientLease over the in-memory backend, in virtual time: the watcher and the log follower of one
target share one client through it, a follower alone keeps it open, and it closes a grace period
after its last user, taking the watcher with it."""

from __future__ import annotations

import asyncio

from airflow_gpu.jobs.follower import LogFollower
from airflow_gpu.jobs.lease import ClientLease
from airflow_gpu.jobs.watcher import JobWatcher
from tests.support.memory_backend import TARGET, submit_jobs
from tests.support.virtual_clock import run


def test_the_watcher_and_the_follower_of_one_target_share_one_client(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        watch = JobWatcher.shared(TARGET).watch(job, poll_interval=30)
        follow = LogFollower.shared(TARGET).follow(memory_jobs.jobs[job], lambda lines: None, poll_interval=30)
        assert (await watch.next_change()).status == "RUNNING"
        await asyncio.sleep(1)  # the follower's first sweep
        lease = ClientLease.shared(TARGET)
        assert lease.instance is not None and lease.instance is JobWatcher.shared(TARGET).backend_instance
        assert memory_jobs.opened == 1 and len(memory_jobs.log_reads) == 1
        follow.close()
        watch.close()

    run(main)


def test_a_follower_alone_keeps_the_client_open_until_a_grace_period_after_it_ends(memory_jobs):
    async def main() -> None:
        [job] = await submit_jobs(1)
        follow = LogFollower.shared(TARGET).follow(memory_jobs.jobs[job], lambda lines: None, poll_interval=30)
        await asyncio.sleep(ClientLease.grace_period + 60)  # no watcher anywhere: the follower's lease holds
        lease = ClientLease.shared(TARGET)
        assert not lease.closed and not lease.idle and lease.instance is not None
        watcher = JobWatcher.shared(TARGET)  # a watcher arriving now uses the same lease
        assert watcher.backend_instance is lease.instance
        follow.close()
        await asyncio.sleep(30 + ClientLease.grace_period + 1)  # the sweep loop ends, then the grace period
        assert lease.closed and watcher.closed and memory_jobs.opened == 1
        assert ClientLease.shared(TARGET) is not lease  # the next user gets a fresh one

    run(main)
