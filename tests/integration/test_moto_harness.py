"""The harness's levers behave as AWS Batch would; other tests rely on them."""

from __future__ import annotations

import botocore.exceptions
import pytest


def submit(aws, gpu_batch, name="job-1"):
    return aws.client("batch").submit_job(
        jobName=name, jobQueue=gpu_batch["job_queue"], jobDefinition=gpu_batch["job_definition"]
    )["jobId"]


def test_jobs_succeed_at_once_without_hold(moto_aws, gpu_batch):
    job_id = submit(moto_aws, gpu_batch)
    job = moto_aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["status"] == "SUCCEEDED"
    assert moto_aws.log.calls["submitjob"] == 1
    assert moto_aws.log.calls["describejobs"] == 1


def test_held_job_moves_through_states_to_failure(moto_aws, gpu_batch):
    moto_aws.batch.hold("RUNNABLE")
    job_id = submit(moto_aws, gpu_batch)
    batch = moto_aws.client("batch")
    assert batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNABLE"
    moto_aws.batch.set_status(job_id, "RUNNING")
    assert batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNING"
    moto_aws.batch.set_status(job_id, "FAILED", reason="Essential container in task exited", exit_code=3)
    job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "Essential container in task exited"
    assert job["container"]["exitCode"] == 3
    assert job["attempts"][-1]["container"]["exitCode"] == 3


def test_terminate_fails_a_held_job_with_its_reason(moto_aws, gpu_batch):
    moto_aws.batch.hold("RUNNING")
    job_id = submit(moto_aws, gpu_batch)
    moto_aws.client("batch").terminate_job(jobId=job_id, reason="killed by test")
    job = moto_aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "killed by test"
    assert moto_aws.log.terminated == [(job_id, "killed by test")]


def test_throttle_answers_429(moto_aws, gpu_batch):
    job_id = submit(moto_aws, gpu_batch)
    moto_aws.batch.throttle(30)
    batch = moto_aws.client("batch")
    batch.meta.config.retries = {"max_attempts": 0}
    with pytest.raises(botocore.exceptions.ClientError) as err:
        batch.describe_jobs(jobs=[job_id])
    assert err.value.response["Error"]["Code"] == "TooManyRequestsException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def test_a_session_on_a_moto_the_harness_does_not_know_stops_with_one_line(tmp_path):
    """Not one error per test (210 on the day moto 5.2.6 renamed its handlers): one line, exit 2."""
    import subprocess
    import sys

    from tests.support.paths import ROOT

    (tmp_path / "planted_moto.py").write_text(
        "import moto\nfrom moto.batch import models\nmoto.__version__ = '9.9.9'\ndel models.Job.terminate\n"
    )
    (tmp_path / "test_three.py").write_text(
        "import pytest\n\n@pytest.mark.parametrize('n', range(3))\ndef test_uses_moto(moto_aws, n):\n    assert moto_aws\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "planted_moto",
            "--rootdir",
            str(ROOT),
            "-c",
            str(ROOT / "pyproject.toml"),
            str(tmp_path / "test_three.py"),
        ],
        cwd=ROOT,
        env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    lines = [line for line in output.splitlines() if "moto 9.9.9 has no moto.batch.models.Job.terminate" in line]
    assert len(lines) == 1, output
    assert "uv.lock pins moto" in lines[0] and "error" not in output.lower().replace("errors", ""), output
    assert "Traceback" not in output
