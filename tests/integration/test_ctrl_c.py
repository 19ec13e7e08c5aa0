"""Ctrl-C wherever a job is waited on terminates the job and says so, without a traceback.

Each case is a real process that submits a local-backend job, waits on it as Airflow would, and
gets a real SIGINT once the wait has begun: the trigger run inline (what `airflow dags test` does:
``anext(trigger.run())`` under ``asyncio.run``, without a triggerer), and ``deferrable=False``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from airflow_gpu.jobs.local.backend import ENTRYPOINT_ENV, STATE_DIR_ENV
from tests.support.local_jobs_testing import job_record, kill_leftover_local_jobs
from tests.support.paths import ROOT

pytestmark = pytest.mark.timeout(180)

SLEEP = ["-c", "import time; time.sleep(300)"]  # arguments of the entrypoint, Python

INLINE_TRIGGER = f"""
import asyncio, json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from airflow_gpu.jobs.local.backend import LocalBackend
from airflow_gpu.jobs.spec import JobSpec, TaskIdentity
from airflow_gpu.triggers import GpuBatchJobTrigger

job = asyncio.run(LocalBackend().submit(JobSpec.build(identity=TaskIdentity("dag", "train", "r"), command={SLEEP!r})))
print("JOB", job.job_id, flush=True)
trigger = GpuBatchJobTrigger(job.job_id, poll_interval=0.1, backend="local")

async def first_event():  # as Airflow's InProcessTestSupervisor.run_trigger_in_process does
    return await anext(trigger.run(), None)

print("EVENT", json.dumps(asyncio.run(first_event()).payload), flush=True)
"""

BLOCKING_OPERATOR = f"""
import logging, sys
sys.path.insert(0, {str(ROOT)!r})
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from airflow_gpu.operators import GpuBatchOperator
from tests.support.gpu_batch_testing import FakeTaskInstance, make_context

operator = GpuBatchOperator(task_id="train", backend="local", command={SLEEP!r}, deferrable=False, poll_interval=0.1)
try:
    operator.execute(make_context(FakeTaskInstance(dag_id="dag", task_id="train")))
except Exception as exc:
    print("ERROR", type(exc).__name__, str(exc).splitlines()[0], flush=True)
"""


def interrupt_once_waiting(script: str, state_dir: Path) -> tuple[int, str, str]:
    """Run ``script``; once its job is RUNNING and watched, send SIGINT; return (rc, stdout, stderr)."""
    env = {**os.environ, STATE_DIR_ENV: str(state_dir), ENTRYPOINT_ENV: sys.executable, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines = []
    try:
        deadline = time.monotonic() + 120
        for line in process.stdout:  # bounded by the deadline and the test timeout
            lines.append(line)
            if " is RUNNING" in line:
                break
            assert time.monotonic() < deadline, "the wait never began"
        assert lines and " is RUNNING" in lines[-1], "".join(lines) + process.stderr.read()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, "".join(lines) + out, err


def job_id_in(out: str) -> str:
    found = re.search(r"^JOB (\S+)|Submitted job (\S+)", out, re.M)
    assert found, f"no job id in {out!r}"
    return found.group(1) or found.group(2)


def assert_terminated(state_dir: Path, job_id: str) -> None:
    record = job_record(state_dir, job_id)
    assert record["cancel.json"] is not None and "Ctrl-C" in record["cancel.json"]["reason"], record
    assert record["exit.json"] is not None, f"job {job_id} still running: {record}"


@pytest.fixture
def state_dir(tmp_path):
    folder = tmp_path / "local-jobs"
    yield folder
    kill_leftover_local_jobs(folder)


def test_ctrl_c_under_an_inline_trigger_terminates_the_job_and_resumes_with_the_reason(state_dir):
    rc, out, err = interrupt_once_waiting(INLINE_TRIGGER, state_dir)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert rc == 0, err
    job_id = job_id_in(out)
    assert_terminated(state_dir, job_id)
    [event] = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("EVENT ")]
    assert event["job_id"] == job_id and event["status"] == "FAILED"
    assert event["status_reason"].startswith("interrupted (Ctrl-C) while the inline trigger (airflow dags test) waited")
    assert f"Ctrl-C: terminated job {job_id}" in out


def test_ctrl_c_while_a_non_deferrable_task_waits_terminates_the_job_and_fails_the_task_clearly(state_dir):
    rc, out, err = interrupt_once_waiting(BLOCKING_OPERATOR, state_dir)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert rc == 0, err
    job_id = job_id_in(out)
    assert_terminated(state_dir, job_id)
    [error] = [line for line in out.splitlines() if line.startswith("ERROR ")]
    assert (
        error.startswith(f"ERROR GpuJobFailed GPU job {job_id}")
        and "interrupted (Ctrl-C) while Airflow task" in error
        and ".train waited for it" in error
    )


def test_a_process_with_its_own_sigint_handler_keeps_it_while_a_job_is_waited_on():
    # A triggerer handles SIGINT itself (stopping must never terminate jobs): the wait leaves it alone.
    import asyncio

    from airflow_gpu.jobs.interrupt import wait_unless_interrupted

    def triggerers_own(signum, frame):
        pass

    async def peek():
        return signal.getsignal(signal.SIGINT)

    async def main():
        signal.signal(signal.SIGINT, triggerers_own)
        return await wait_unless_interrupted(peek())

    previous = signal.getsignal(signal.SIGINT)
    try:
        assert asyncio.run(main()) is triggerers_own
    finally:
        signal.signal(signal.SIGINT, previous)
