"""Live logs with the local backend: the trigger tails the job's log file through read_logs cursors."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_gpu.jobs.backend import BackendTarget
from airflow_gpu.jobs.follower import CursorLogReader, LogFollower
from airflow_gpu.jobs.lease import ClientLease
from airflow_gpu.jobs.local.backend import ENTRYPOINT_ENV, STATE_DIR_ENV, LocalBackend
from airflow_gpu.jobs.loop_log import logs_written
from airflow_gpu.jobs.spec import JobSpec, TaskIdentity
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.triggers import GpuBatchJobTrigger
from tests.support.gpu_batch_testing import LineLog
from tests.support.local_jobs_testing import kill_leftover_local_jobs
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def local_jobs(tmp_path, monkeypatch):
    folder = tmp_path / "local-jobs"
    monkeypatch.setenv(STATE_DIR_ENV, str(folder))
    monkeypatch.setenv(ENTRYPOINT_ENV, sys.executable)  # Python plays the image's entrypoint
    monkeypatch.setattr(ClientLease, "grace_period", 0.1)
    yield folder
    await LogFollower.close_all()
    await JobWatcher.close_all()
    kill_leftover_local_jobs(folder)


async def test_the_trigger_tails_a_local_jobs_log_file_in_order_to_its_last_partial_line(local_jobs, tmp_path):
    gate = tmp_path / "gate"
    script = f"""
        import os, sys, time
        for i in range(3):
            print(f"epoch {{i}}", flush=True)
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.02)
        for i in range(3, 6):
            print(f"epoch {{i}}", flush=True)
        sys.stdout.write("done, no newline")
    """
    spec = JobSpec.build(
        identity=TaskIdentity("dag", "train", "run-1"),
        job_queue="local",
        job_definition="local",
        command=["-c", textwrap.dedent(script)],
    )
    job = await LocalBackend().submit(spec)
    trigger = GpuBatchJobTrigger(job.job_id, poll_interval=0.1, backend="local")
    trigger._log = recorder = LineLog()

    async def run():
        return [e.payload async for e in trigger.run()]

    task = asyncio.create_task(run())
    await wait_until(lambda: recorder.relayed(job.job_id) == ["epoch 0", "epoch 1", "epoch 2"])
    follower = LogFollower.shared(BackendTarget(backend="local"))
    assert isinstance(follower.reader, CursorLogReader)
    sweeps = follower.sweeps
    await wait_until(lambda: follower.sweeps >= sweeps + 3)
    await logs_written()  # a repeat would be written off the loop, maybe after the sweep counted
    assert recorder.relayed(job.job_id) == ["epoch 0", "epoch 1", "epoch 2"]  # nothing twice across polls

    gate.touch()
    [event] = await task
    assert event["status"] == "SUCCEEDED"
    assert event["log_relayed_to_end"] is True
    # The last line has no newline: held back while the job ran, relayed by the last read.
    assert recorder.relayed(job.job_id) == [f"epoch {i}" for i in range(6)] + ["done, no newline"]
    assert Path(local_jobs, job.job_id, "output.log").exists()
