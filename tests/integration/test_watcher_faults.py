"""One bad DescribeJobs reply fails no job: through a fault proxy in front of moto, counted at the server."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from airflow_gpu.exceptions import GpuJobFailed
from airflow_gpu.jobs.aws import connection as aws_connection
from airflow_gpu.jobs.backend import BackendTarget
from airflow_gpu.jobs.backoff import RetryPolicy
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.operators import GpuBatchOperator
from airflow_gpu.triggers import GpuBatchJobTrigger
from tests.support.fault_proxy import batch_action
from tests.support.gpu_batch_testing import collect_events, in_triggerer, make_context, submit_raw, use_aws_connection
from tests.support.plugin import FAULT_TALLY
from tests.support.waiting import wait_until

DESCRIBE = batch_action("DescribeJobs")


@pytest.fixture
async def proxied_conn(moto_aws, fault_proxy, monkeypatch, fast_watcher):
    """``aws_default`` pointing at the fault proxy, with short backoffs; every watcher closed after."""
    use_aws_connection(monkeypatch, fault_proxy.url, moto_aws.region)
    monkeypatch.setattr(JobWatcher, "describe_error_policy", RetryPolicy(base=0.05, cap=0.2), raising=False)
    resolved = []
    real = aws_connection.resolve_blocking
    monkeypatch.setattr(aws_connection, "resolve_blocking", lambda *a: resolved.append(a) or real(*a))
    yield resolved
    await JobWatcher.close_all()


async def _start(moto_aws, gpu_batch, n: int, extra_ids: tuple[str, ...] = ()):
    moto_aws.batch.hold("RUNNING")
    job_ids = [submit_raw(moto_aws, gpu_batch, f"job-{i}") for i in range(n)]
    tasks = {
        job_id: asyncio.create_task(
            collect_events(in_triggerer(GpuBatchJobTrigger(job_id, poll_interval=0.1)), timeout=60)
        )
        for job_id in [*job_ids, *extra_ids]
    }
    return job_ids, tasks


async def _finish(moto_aws, job_ids, tasks):
    for job_id in job_ids:
        moto_aws.batch.set_status(job_id, "SUCCEEDED")
    return {job_id: (await task)[0] for job_id, task in tasks.items()}


async def test_an_expired_token_refreshes_the_credentials_and_fails_no_job(
    moto_aws, gpu_batch, fault_proxy, proxied_conn
):
    fault = fault_proxy.add(
        "error",
        when=DESCRIBE,
        times=1,
        status=403,
        code="ExpiredTokenException",
        message="The security token included in the request is expired",
    )
    job_ids, tasks = await _start(moto_aws, gpu_batch, 6)
    await wait_until(lambda: fault.injected == 1)
    events = await _finish(moto_aws, job_ids, tasks)

    assert [e["status"] for e in events.values()] == ["SUCCEEDED"] * 6
    assert moto_aws.log.calls["terminatejob"] == 0
    assert len(proxied_conn) == 2  # the connection was read again for fresh credentials
    assert JobWatcher.shared(BackendTarget()).backend_instance.credential_refreshes == 1
    FAULT_TALLY["runs survived"] += 6


@pytest.mark.parametrize(
    "code, status", [("AccessDeniedException", 403), ("UnauthorizedException", 401), ("InvalidClientTokenId", 403)]
)
async def test_a_4xx_for_a_while_is_retried_and_fails_no_job(
    moto_aws, gpu_batch, fault_proxy, proxied_conn, code, status
):
    fault = fault_proxy.add("error", when=DESCRIBE, times=5, status=status, code=code)
    job_ids, tasks = await _start(moto_aws, gpu_batch, 6)
    await wait_until(lambda: fault.injected == 5)
    events = await _finish(moto_aws, job_ids, tasks)

    assert [e["status"] for e in events.values()] == ["SUCCEEDED"] * 6
    assert moto_aws.log.calls["terminatejob"] == 0
    FAULT_TALLY["runs survived"] += 6


async def test_access_denied_past_the_grace_time_names_the_permission_and_terminates_nothing(
    moto_aws, gpu_batch, fault_proxy, proxied_conn, monkeypatch
):
    monkeypatch.setenv("AIRFLOW_GPU_DESCRIBE_ERROR_GRACE", "0.5")
    fault_proxy.add(
        "error",
        when=DESCRIBE,
        status=403,
        code="AccessDeniedException",
        message="User is not authorized to perform: batch:DescribeJobs",
    )
    job_ids, tasks = await _start(moto_aws, gpu_batch, 3)
    events = {job_id: (await task)[0] for job_id, task in tasks.items()}

    for job_id, event in events.items():
        assert event["status"] == "UNKNOWN"
        assert f"could not see job {job_id}" in event["status_reason"]
        assert "grant batch:DescribeJobs" in event["status_reason"]
        assert "NOT terminated" in event["status_reason"]
    # The task resumes and fails with that reason; nothing on the way terminates the job.
    op = GpuBatchOperator(task_id="train", job_queue=gpu_batch["job_queue"], job_definition=gpu_batch["job_definition"])
    with pytest.raises(GpuJobFailed, match="grant batch:DescribeJobs"):
        await asyncio.to_thread(op.execute_complete, make_context(), events[job_ids[0]])
    assert moto_aws.log.calls["terminatejob"] == 0
    assert all(moto_aws.batch.status(j) == "RUNNING" for j in job_ids)  # the GPU jobs live on


async def test_one_malformed_id_fails_only_itself(moto_aws, gpu_batch, fault_proxy, proxied_conn):
    bad = "not-a-job-id"
    fault = fault_proxy.add(
        "error",
        when=lambda r: DESCRIBE(r) and bad.encode() in r.body,
        status=400,
        code="ClientException",
        message="jobs contains an invalid job id",
    )
    job_ids, tasks = await _start(moto_aws, gpu_batch, 5, extra_ids=(bad,))
    await wait_until(lambda: fault.injected >= 1)
    bad_event = (await tasks.pop(bad))[0]
    events = await _finish(moto_aws, job_ids, tasks)

    assert bad_event["status"] == "UNKNOWN" and f"rejects job id {bad!r}" in bad_event["status_reason"]
    assert [e["status"] for e in events.values()] == ["SUCCEEDED"] * 5
    assert moto_aws.log.calls["terminatejob"] == 0
    FAULT_TALLY["runs survived"] += 5


async def test_a_connection_lookup_failing_for_a_while_fails_no_job(moto_aws, gpu_batch, proxied_conn, monkeypatch):
    # The role lookup (an STS call in a real deployment) fails twice, then works again.
    failures = []
    real = aws_connection.resolve_blocking

    def flaky(*args):
        if len(failures) < 2:
            failures.append(args)
            raise RuntimeError("Could not connect to the endpoint URL: https://sts.amazonaws.com/")
        return real(*args)

    monkeypatch.setattr(aws_connection, "resolve_blocking", flaky)
    job_ids, tasks = await _start(moto_aws, gpu_batch, 3)
    await wait_until(lambda: len(failures) == 2)
    events = await _finish(moto_aws, job_ids, tasks)

    assert [e["status"] for e in events.values()] == ["SUCCEEDED"] * 3
    assert moto_aws.log.calls["terminatejob"] == 0
    FAULT_TALLY["faults injected"] += 2
    FAULT_TALLY["runs survived"] += 3


async def test_a_key_that_expires_under_the_live_log_refreshes_the_logs_client_too(
    moto_aws, gpu_batch, fault_proxy, proxied_conn, monkeypatch
):
    """The key is rotated: the connection now holds a new one, and CloudWatch refuses the old one, which
    the follower's client was made with. Its reads re-read the connection (as DescribeJobs does), and the
    lines keep coming on the new key; before, every sweep failed with the old client until the job ended."""
    from tests.support.gpu_batch_testing import LineLog, put_log_lines

    moto_aws.batch.hold("RUNNING")
    job_id = submit_raw(moto_aws, gpu_batch, "rotated")
    stream = moto_aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]["container"]["logStreamName"]
    put_log_lines(moto_aws, "/aws/batch/job", stream, ["before the rotation"])
    trigger = in_triggerer(GpuBatchJobTrigger(job_id, poll_interval=0.2))
    trigger._log = lines = LineLog()
    task = asyncio.create_task(collect_events(trigger, timeout=60))
    await wait_until(lambda: "before the rotation" in "\n".join(lines.records), timeout=30)

    rotated = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"]) | {"login": "rotated-key"}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(rotated))

    def old_key_reading_logs(request) -> bool:
        return "FilterLogEvents" in request.headers.get(
            "x-amz-target", ""
        ) and "Credential=testing/" in request.headers.get("authorization", "")

    expired = fault_proxy.add(
        "error",
        when=old_key_reading_logs,
        status=400,
        code="ExpiredTokenException",
        message="The security token included in the request is expired",
    )
    moto_aws.client("logs").put_log_events(
        logGroupName="/aws/batch/job",
        logStreamName=stream,
        logEvents=[{"timestamp": int(time.time() * 1000), "message": "after the rotation"}],
    )
    await wait_until(lambda: "after the rotation" in "\n".join(lines.records), timeout=30)
    moto_aws.batch.set_status(job_id, "SUCCEEDED")
    [event] = await task

    assert event["status"] == "SUCCEEDED" and expired.injected >= 1
    assert len(proxied_conn) == 2  # the connection was read again, once, for the new key
    assert JobWatcher.shared(BackendTarget()).backend_instance.credential_refreshes == 1
    FAULT_TALLY["runs survived"] += 1
