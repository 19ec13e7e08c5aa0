"""The test plays the GPU container: moto's Batch runs no containers, so a test runs the job's command
with ``airflow-gpu-worker`` itself (against the moto server's S3), posts its output as the job's
CloudWatch log, and moves the job to SUCCEEDED or FAILED with the command's exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from tests.support.gpu_batch_testing import put_log_lines

WORKER = Path(sys.executable).with_name("airflow-gpu-worker")


def run_worker(
    command: list[str],
    *,
    endpoint_url: str | None = None,
    job_id: str | None = None,
    env: dict[str, str] | None = None,
    entrypoint: bool = True,
) -> subprocess.CompletedProcess:
    """``airflow-gpu-worker ARGV...`` as the image's entrypoint would run it (argv given without the
    entrypoint); ``entrypoint=False`` runs the argv as it is, as a job definition without one would."""
    full_env = {**os.environ, **(env or {})}
    if endpoint_url:
        full_env["AWS_ENDPOINT_URL"] = endpoint_url
    if job_id:
        full_env["AWS_BATCH_JOB_ID"] = job_id
    return subprocess.run(
        [str(WORKER), *command] if entrypoint else command, env=full_env, capture_output=True, text=True, timeout=120
    )


def play_container(
    moto_aws, job_id: str, command: list[str], *, entrypoint: bool = True, before_end: Callable[[], None] | None = None
) -> int:
    """Run the job's command, publish its output as the job's log, end the job with its exit code
    (after ``before_end()``, if given: what a test checks while the job still runs with its log out)."""
    moto_aws.batch.set_status(job_id, "RUNNING")
    done = run_worker(command, endpoint_url=moto_aws.endpoint_url, job_id=job_id, entrypoint=entrypoint)
    lines = [line or " " for line in (done.stdout + done.stderr).splitlines()] or ["(no output)"]
    stream = moto_aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]["container"].get("logStreamName")
    if stream:
        put_log_lines(moto_aws, "/aws/batch/job", stream, lines)
    if before_end is not None:
        before_end()
    moto_aws.batch.set_status(
        job_id,
        "SUCCEEDED" if done.returncode == 0 else "FAILED",
        exit_code=done.returncode,
        reason=None if done.returncode == 0 else "Essential container in task exited",
    )
    return done.returncode
