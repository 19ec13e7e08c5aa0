"""`airflow-gpu status`, `jobs` and `jobs --since 7d --cost` show what ended jobs cost, run as real
processes against the moto server (and the local backend, which says "local")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_gpu.jobs.spec import TAG_DAG_ID, TAG_IDEMPOTENCY_KEY, TAG_RUN_ID, TAG_TASK_ID
from tests.support.local_jobs_testing import kill_leftover_local_jobs

CLI = Path(sys.executable).with_name("airflow-gpu")
pytestmark = pytest.mark.timeout(300)


def clean_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = "/nonexistent/airflow-home"  # the terminal reads no Airflow configuration
    env.update(more)
    return env


def cli(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=120)


def _ended_job(moto_aws, gpu_batch, instance: str, *, dag: str, n: int, ran_s: float, gpus: int = 1) -> str:
    tags = {TAG_DAG_ID: dag, TAG_TASK_ID: "train", TAG_RUN_ID: f"run{n}", TAG_IDEMPOTENCY_KEY: f"key-{n}"}
    job_id = moto_aws.client("batch").submit_job(
        jobName=f"{dag}-train-{n}",
        jobQueue=gpu_batch["job_queue"],
        jobDefinition=gpu_batch["job_definition"],
        tags=tags,
        containerOverrides={"resourceRequirements": [{"type": "GPU", "value": str(gpus)}]},
    )["jobId"]
    moto_aws.batch.place(job_id, instance)
    moto_aws.batch.set_status(job_id, "SUCCEEDED")
    moto_aws.batch.backdate(job_id, queued_s=60, ran_s=ran_s)
    return job_id


@pytest.fixture
def priced_jobs(moto_aws, gpu_batch):
    from airflow_gpu.jobs.aws.usage import forget_cached_placements

    forget_cached_placements()
    moto_aws.batch.hold("RUNNING")
    ce = gpu_batch["compute_environment"]
    g5, g6e, g5_2x = (moto_aws.register_container_instance(ce, t) for t in ("g5.xlarge", "g6e.xlarge", "g5.2xlarge"))
    return [
        _ended_job(moto_aws, gpu_batch, g5, dag="recommendations", n=1, ran_s=3600),
        _ended_job(moto_aws, gpu_batch, g6e, dag="recommendations", n=2, ran_s=1800),
        _ended_job(moto_aws, gpu_batch, g5_2x, dag="ranking", n=3, ran_s=3600),
    ]


def test_jobs_since_7d_cost_sums_gpu_hours_and_cost_per_queue_and_per_dag(moto_aws, gpu_batch, priced_jobs):
    done = cli(
        clean_env(),
        "jobs",
        "--queue",
        gpu_batch["job_queue"],
        "--since",
        "7d",
        "--cost",
        "--endpoint-url",
        moto_aws.endpoint_url,
        "--region",
        moto_aws.region,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    print(out)
    g5, g6e, unpriced = priced_jobs
    assert re.search(rf"{g5}\s+SUCCEEDED\s+recommendations-train-1\s+1 h 1 min\s+1\.000\s+\$1\.01\s", out)
    assert re.search(rf"{g6e}\s+SUCCEEDED\s+\S+\s+31 min 0 s\s+0\.500\s+\$0\.93\s", out)
    assert re.search(rf"{unpriced}\s+SUCCEEDED\s+\S+\s+1 h 1 min\s+1\.000\s+unknown\s", out)
    # Per queue: one queue, three jobs; per DAG: the priced sum, and how many had no price.
    assert re.search(r"gpu-queue\s+3\s+2\.500\s+\$1\.94\s+1", out)
    assert re.search(r"recommendations\s+2\s+1\.500\s+\$1\.94\s+-", out)
    assert re.search(r"ranking\s+1\s+1\.000\s+-\s+1", out)
    assert re.search(r"all\s+3\s+2\.500\s+\$1\.94\s+1", out)


def test_jobs_since_leaves_out_older_jobs_and_names_a_bad_age(moto_aws, gpu_batch, priced_jobs):
    older = priced_jobs[0]
    moto_aws.batch.backdate(older, queued_s=3 * 86400, ran_s=3600)
    done = cli(
        clean_env(),
        "jobs",
        "--queue",
        gpu_batch["job_queue"],
        "--since",
        "2d",
        "--endpoint-url",
        moto_aws.endpoint_url,
        "--region",
        moto_aws.region,
    )
    assert done.returncode == 0, done.stderr
    assert older not in done.stdout and priced_jobs[1] in done.stdout
    bad = cli(
        clean_env(),
        "jobs",
        "--queue",
        gpu_batch["job_queue"],
        "--since",
        "a week",
        "--endpoint-url",
        moto_aws.endpoint_url,
        "--region",
        moto_aws.region,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "airflow-gpu jobs: error: --since takes an age such as 7d, 24h, 30m or 2w, got 'a week'"
    ]


def test_status_shows_the_bill_and_a_price_file_overrides_the_table(moto_aws, gpu_batch, priced_jobs, tmp_path):
    job_id = priced_jobs[2]  # g5.2xlarge: no shipped price
    args = ("status", job_id, "--endpoint-url", moto_aws.endpoint_url, "--region", moto_aws.region)
    plain = cli(clean_env(), *args)
    assert plain.returncode == 0, plain.stderr
    print(plain.stdout)
    assert "  instance: g5.2xlarge (on-demand)" in plain.stdout
    assert "GPU-hours: 1.000" in plain.stdout
    assert "      cost: cost unknown (no price for g5.2xlarge in the price table)" in plain.stdout
    prices = tmp_path / "prices.json"
    prices.write_text('{"as_of": "2027-01", "on_demand": {"g5.2xlarge": 1.212}}')
    priced = cli(clean_env(AIRFLOW_GPU_PRICES=str(prices)), *args)
    assert (
        "      cost: ~$1.21 (1/1 of the instance at $1.212/h, on-demand, us-east-1 prices of 2027-01)" in priced.stdout
    )
    broken = cli(clean_env(AIRFLOW_GPU_PRICES=str(tmp_path / "missing.json")), *args)
    assert broken.returncode == 2 and "cannot read the price file" in broken.stderr and "Traceback" not in broken.stderr


def test_a_local_job_says_cost_local(tmp_path):
    state = tmp_path / "jobs"
    env = clean_env(AIRFLOW_GPU_LOCAL_JOBS_DIR=str(state), AIRFLOW_GPU_LOCAL_ENTRYPOINT="env")
    try:
        done = cli(env, "submit", "--backend", "local", "--poll-interval", "0.2", "--", "python", "-c", "print('hi')")
        assert done.returncode == 0, done.stderr
        job_id = re.search(r"Submitted job (\S+)", done.stdout).group(1)
        status = cli(env, "status", job_id, "--backend", "local")
        assert "      cost: local" in status.stdout and "  duration: " in status.stdout
        listing = cli(env, "jobs", "--backend", "local", "--cost")
        assert re.search(rf"{job_id}\s+SUCCEEDED\s+\S+\s+\d+ s\s+-\s+local\s", listing.stdout), listing.stdout
        assert re.search(r"airflow-gpu-submit\s+1\s+0\.000\s+local\s+-", listing.stdout), listing.stdout
    finally:
        kill_leftover_local_jobs(state)
