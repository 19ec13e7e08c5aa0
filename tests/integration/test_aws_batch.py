"""AwsBatchBackend and the AWS connection resolver, against the moto server."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import botocore.exceptions
import pytest

from airflow_gpu.contract import SUBMITTED_AT_ENV
from airflow_gpu.jobs.aws import connection as aws_connection
from airflow_gpu.jobs.aws.backend import AwsBatchBackend, batch_job_url, is_transient, log_stream_url, parse_job
from airflow_gpu.jobs.aws.connection import resolve_aws_connection
from airflow_gpu.jobs.backend import BackendTarget, JobState
from airflow_gpu.jobs.poll_errors import CannotSeeJobs
from airflow_gpu.jobs.spec import TAG_CANCELLED, JobSpec, JobSpecError, TaskIdentity
from tests.support.gpu_batch_testing import SECRET_KEY, put_log_lines, submit_raw


@pytest.fixture
async def backend(aws_conn):
    b = await AwsBatchBackend.open(BackendTarget())
    yield b
    await b.aclose()


def spec_for(gpu_batch, run_id="run-1", **fields) -> JobSpec:
    return JobSpec.build(
        identity=TaskIdentity("dag", "task", run_id, -1),
        job_queue=gpu_batch["job_queue"],
        job_definition=gpu_batch["job_definition"],
        command=["true"],
        **fields,
    )


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "DescribeJobs"
    )


async def test_connection_comes_from_the_airflow_connection(moto_aws, aws_conn):
    conn = await resolve_aws_connection("aws_default", None)
    assert conn.region_name == "us-east-1"
    assert conn.endpoint_url("batch") == moto_aws.endpoint_url
    assert conn.endpoint_url("logs") == moto_aws.endpoint_url
    credentials = await conn.session.get_credentials()
    assert credentials.secret_key == SECRET_KEY
    assert (await resolve_aws_connection("aws_default", "eu-west-1")).region_name == "eu-west-1"


async def test_connection_is_resolved_once_per_loop_off_the_loop(aws_conn, monkeypatch):
    calls = []
    real = aws_connection.resolve_blocking

    def counting(*args):
        calls.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(aws_connection, "resolve_blocking", counting)
    results = await asyncio.gather(*(resolve_aws_connection("aws_default", None) for _ in range(50)))
    assert len({id(r) for r in results}) == 1
    assert len(calls) == 1 and calls[0] != threading.get_ident()

    def other_loop():
        return asyncio.run(resolve_aws_connection("aws_default", None))

    await asyncio.to_thread(other_loop)
    assert len(calls) == 2  # per loop: sessions and clients never cross loops


async def test_a_failed_resolution_is_retried_next_time(aws_conn, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_NOREGION", json.dumps({"conn_type": "aws", "extra": {}}))
    with pytest.raises(JobSpecError, match="No AWS region.*region_name"):
        await resolve_aws_connection("aws_noregion", None)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert (await resolve_aws_connection("aws_noregion", None)).region_name == "us-east-1"


async def test_submit_find_describe_and_terminate(moto_aws, gpu_batch, backend):
    moto_aws.batch.hold("RUNNING")
    spec = spec_for(gpu_batch)
    state = await backend.submit(spec)
    assert state.status == "SUBMITTED" and state.name == spec.name
    [found] = await backend.find(spec)
    assert found.job_id == state.job_id and found.status == "RUNNING"
    assert await backend.find(spec_for(gpu_batch, run_id="run-2")) == []

    [described] = await backend.describe([state.job_id, "not-a-job"])
    assert described.job_id == state.job_id

    await backend.terminate(state.job_id, "stop " * 200)
    [(job_id, reason)] = moto_aws.log.terminated
    assert job_id == state.job_id and len(reason) <= 512
    arn = moto_aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]["jobArn"]
    assert moto_aws.client("batch").list_tags_for_resource(resourceArn=arn)["tags"][TAG_CANCELLED] == "true"
    assert await backend.find(spec) == []  # a cancelled job is never reattached

    await backend.terminate(state.job_id, "again")  # terminal: nothing to do
    assert len(moto_aws.log.terminated) == 1


async def test_a_lost_submit_reply_never_starts_a_second_job(moto_aws, gpu_batch, backend, monkeypatch):
    moto_aws.batch.hold("RUNNING")
    real_submit = backend._batch.submit_job
    attempts = []

    async def reply_lost(**kwargs):
        attempts.append(kwargs["jobName"])
        await real_submit(**kwargs)  # Batch accepted it...
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="batch")  # ...the reply never came

    monkeypatch.setattr(backend._batch, "submit_job", reply_lost)
    state = await backend.submit(spec_for(gpu_batch))
    assert len(attempts) == 1
    assert moto_aws.log.calls["submitjob"] == 1
    assert state.job_id == moto_aws.batch.wait_for_jobs(1)[0]


async def test_the_submit_time_travels_in_the_jobs_environment_and_a_throttled_retry_keeps_it(
    moto_aws, gpu_batch, backend, monkeypatch
):
    """The worker's run report computes the queue wait from it; Batch tells a container nothing about it."""
    moto_aws.batch.hold("RUNNING")
    real_submit = backend._batch.submit_job
    sent = []

    async def throttled_once(**kwargs):
        sent.append({e["name"]: e["value"] for e in kwargs["containerOverrides"]["environment"]})
        if len(sent) == 1:
            raise client_error("ThrottlingException", 400)
        return await real_submit(**kwargs)

    monkeypatch.setattr(backend._batch, "submit_job", throttled_once)
    before = time.time()
    state = await backend.submit(spec_for(gpu_batch, environment={"EPOCHS": "15"}))
    assert len(sent) == 2 and sent[0] == sent[1]  # the retry says when the task first asked
    # Sent to the millisecond, rounded: it may read up to 0.5 ms before the clock was read here.
    assert sent[0]["EPOCHS"] == "15" and before - 0.001 <= float(sent[0][SUBMITTED_AT_ENV]) <= time.time() + 0.001
    [job] = moto_aws.client("batch").describe_jobs(jobs=[state.job_id])["jobs"]
    assert {e["name"]: e["value"] for e in job["container"]["environment"]}[SUBMITTED_AT_ENV] == sent[0][
        SUBMITTED_AT_ENV
    ]


async def test_non_transient_errors_surface_at_once_naming_the_permission(gpu_batch, backend, monkeypatch):
    async def denied(**kwargs):
        raise client_error("AccessDeniedException", 403)

    monkeypatch.setattr(backend._batch, "describe_jobs", denied)
    with pytest.raises(CannotSeeJobs, match="AccessDenied") as caught:
        await backend.describe(["x"])
    assert "grant batch:DescribeJobs" in caught.value.fix


@pytest.mark.parametrize(
    "exc, transient",
    [
        (client_error("TooManyRequestsException", 429), True),
        (client_error("ThrottlingException", 400), True),
        (client_error("ServerException", 500), True),
        (client_error("ServiceUnavailable", 503), True),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="x"), True),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="x"), True),
        (asyncio.TimeoutError(), True),
        (client_error("ClientException", 400), False),
        (client_error("AccessDeniedException", 403), False),
        (ValueError("bug"), False),
    ],
)
def test_transient_faults_are_told_apart(exc, transient):
    assert is_transient(exc) is transient


def test_parse_job_reads_reasons_logs_and_queue_time():
    state = parse_job(
        {
            "jobId": "j1",
            "jobName": "n",
            "status": "RUNNABLE",
            "createdAt": 1_000_000,
            "statusReason": None,
            "attempts": [{"container": {"exitCode": 137, "logStreamName": "s0"}, "stoppedAt": 2_000_000}],
            "container": {
                "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/gpu/jobs"}},
                "reason": "OutOfMemoryError: Container killed due to memory usage",
            },
            "tags": {"k": "v"},
        }
    )
    assert state.attempts == 1
    assert state.queued_since == 2000.0  # a retried job queues again from its last attempt's end
    assert state.exit_code == 137
    assert state.log_stream == "s0" and state.log_group == "/gpu/jobs"
    assert "OutOfMemoryError" in state.status_reason
    assert state.tags == {"k": "v"}


async def test_read_logs_tail_cursor_and_missing_stream(moto_aws, backend):
    put_log_lines(moto_aws, "/aws/batch/job", "def/default/abc", [f"line {i}" for i in range(40)])
    job = JobState("abc", "FAILED", log_stream="def/default/abc", log_group="/aws/batch/job")
    tail = await backend.read_logs(job, tail=5)
    assert tail.lines == [f"line {i}" for i in range(35, 40)]
    everything = await backend.read_logs(job)
    assert everything.lines == [f"line {i}" for i in range(40)]
    assert (await backend.read_logs(job, cursor=everything.cursor)).lines == []
    missing = JobState("zzz", "FAILED", log_stream="no/such/stream", log_group="/aws/batch/job")
    assert (await backend.read_logs(missing, tail=5)).lines == []
    assert (await backend.read_logs(JobState("x", "FAILED"), tail=5)).lines == []


def test_console_links_per_partition():
    assert (
        batch_job_url("eu-west-1", "abc")
        == "https://console.aws.amazon.com/batch/home?region=eu-west-1#jobs/detail/abc"
    )
    assert batch_job_url("cn-north-1", "abc").startswith("https://console.amazonaws.cn/")
    assert batch_job_url("us-gov-west-1", "abc").startswith("https://console.amazonaws-us-gov.com/")
    assert log_stream_url("us-east-1", "/aws/batch/job", "gpu-als/default/abc") == (
        "https://console.aws.amazon.com/cloudwatch/home?region=us-east-1#logsV2:log-groups/log-group/"
        "$252Faws$252Fbatch$252Fjob/log-events/gpu-als$252Fdefault$252Fabc"
    )


async def test_describe_of_a_known_job_via_raw_submit(moto_aws, gpu_batch, backend):
    job_id = submit_raw(moto_aws, gpu_batch)
    [state] = await backend.describe([job_id])
    assert state.status == "SUCCEEDED" and state.log_stream.endswith(job_id)


def _without_metadata(reply: dict) -> dict:
    return {k: v for k, v in reply.items() if k != "ResponseMetadata"}


def _within(lean, full) -> bool:
    """Everything in the lean reply is in botocore's, with the same value (lean keeps fewer fields)."""
    if isinstance(lean, dict):
        return isinstance(full, dict) and all(k in full and _within(v, full[k]) for k, v in lean.items())
    if isinstance(lean, list):
        return isinstance(full, list) and len(lean) == len(full) and all(map(_within, lean, full))
    return lean == full


async def test_lean_decoding_keeps_what_airflow_gpu_reads_as_botocore_parses_it(
    moto_aws, gpu_batch, backend, monkeypatch
):
    from airflow_gpu.jobs.aws import replies as aws_replies

    decoded = []
    for key, decoder in list(aws_replies.DECODERS.items()):

        class Counting:
            def __init__(self, inner, key=key):
                self.inner, self.key = inner, key

            def decode(self, body):
                decoded.append(self.key)
                return self.inner.decode(body)

        monkeypatch.setitem(aws_replies.DECODERS, key, Counting(decoder))
    moto_aws.batch.hold("RUNNING")
    ids = [submit_raw(moto_aws, gpu_batch, f"lean-{i}", tags={"k": str(i)}) for i in range(3)]
    moto_aws.batch.set_status(ids[0], "FAILED", reason="Essential container in task exited", exit_code=2)
    put_log_lines(moto_aws, "/aws/batch/job", "lean/stream", [f"line {i}" for i in range(5)])

    lean_batch = aws_replies.decode_leanly(await AwsBatchBackend._create_client(backend.connection, "batch"))
    lean_logs = aws_replies.decode_leanly(await AwsBatchBackend._create_client(backend.connection, "logs"))
    plain_batch = await AwsBatchBackend._create_client(backend.connection, "batch")
    plain_logs = await AwsBatchBackend._create_client(backend.connection, "logs")
    try:
        lean = await lean_batch.describe_jobs(jobs=ids)
        full = await plain_batch.describe_jobs(jobs=ids)
        assert decoded == [("batch", "DescribeJobs")], "the lean path did not run"
        assert _within(_without_metadata(lean), _without_metadata(full))
        assert [parse_job(j) for j in lean["jobs"]] == [parse_job(j) for j in full["jobs"]]
        assert [j["jobArn"] for j in lean["jobs"]] == [j["jobArn"] for j in full["jobs"]]  # terminate needs it
        assert "environment" not in lean["jobs"][0]["container"]  # not decoded at all
        assert lean["ResponseMetadata"]["HTTPStatusCode"] == 200

        query = {"logGroupName": "/aws/batch/job", "logStreamNames": ["lean/stream"], "limit": 2}
        lean_page = await lean_logs.filter_log_events(**query)
        full_page = await plain_logs.filter_log_events(**query)
        assert _within(_without_metadata(lean_page), _without_metadata(full_page))
        assert lean_page["nextToken"] and [e["message"] for e in lean_page["events"]] == ["line 0", "line 1"]
        assert {"eventId", "timestamp", "logStreamName"} <= set(lean_page["events"][0])

        # Errors are still botocore's: codes, messages and the exception class.
        with pytest.raises(lean_logs.exceptions.ResourceNotFoundException, match="log group does not exist"):
            await lean_logs.filter_log_events(logGroupName="/no/such/group")
    finally:
        for client in (lean_batch, lean_logs, plain_batch, plain_logs):
            await client.close()


def test_a_reply_that_does_not_fit_the_schema_is_left_to_botocore():
    from airflow_gpu.jobs.aws.replies import DECODERS, _handler

    handler = _handler(DECODERS[("batch", "DescribeJobs")])
    odd = {"status_code": 200, "body": b'{"jobs": [{"jobId": 7, "status": "RUNNING"}]}'}
    customized: dict = {}
    handler(response_dict=odd, customized_response_dict=customized)
    assert customized == {} and odd["body"].startswith(b'{"jobs"')  # botocore parses it as usual
    error = {"status_code": 400, "body": b'{"__type": "ClientException", "message": "no"}'}
    handler(response_dict=error, customized_response_dict=customized)
    assert customized == {} and error["body"].startswith(b'{"__type"')


def test_a_job_logging_elsewhere_than_cloudwatch_has_no_log_group():
    splunk = parse_job(
        {
            "jobId": "j",
            "status": "RUNNING",
            "container": {"logStreamName": "def/default/t", "logConfiguration": {"logDriver": "splunk", "options": {}}},
        }
    )
    assert splunk.log_stream == "def/default/t" and splunk.log_group is None
    default = parse_job({"jobId": "j", "status": "RUNNING", "container": {"logStreamName": "def/default/t"}})
    assert default.log_group == "/aws/batch/job"
    assert parse_job({"jobId": "j", "status": "RUNNABLE", "container": {}}).log_group is None  # no stream yet


async def test_closed_is_set_only_once_every_http_session_is_gone(moto_aws, gpu_batch, aws_conn):
    """A reader that sees ``closed`` (the watcher's grace period, a test) finds no HTTP session still closing:
    the flag goes up after the clients' closes, which await their aiohttp sessions' ends."""
    backend = await AwsBatchBackend.open(BackendTarget())
    await backend.describe([submit_raw(moto_aws, gpu_batch, "a")])  # a call: the client now holds a session
    sessions = backend._batch._endpoint.http_session
    assert sessions._sessions, "no HTTP session was opened"
    closing = asyncio.create_task(backend.aclose())
    seen_open_while_closed = []
    while not closing.done():
        if backend.closed and sessions._sessions is not None:
            seen_open_while_closed.append(dict(sessions._sessions))
        await asyncio.sleep(0)
    await closing
    assert backend.closed and sessions._sessions is None
    assert seen_open_while_closed == [], "closed was set while a session was still closing"
