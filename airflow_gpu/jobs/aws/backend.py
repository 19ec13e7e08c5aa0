"""AwsBatchBackend: AWS Batch through one aiobotocore client per (connection, region, endpoint).

One instance serves every job on its event loop (the shared watcher owns it).
botocore's own retries are switched off: a retry storm from thousands of
independent callers is what throttling punishes, so every call goes through
one :class:`SharedBackoff` per client instead.

The two calls made on every poll -- DescribeJobs for up to 100 jobs,
FilterLogEvents for up to 100 log streams -- would spend most of their client CPU
in botocore's response parser; both clients decode those replies leanly instead
(:mod:`airflow_gpu.jobs.aws.replies`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar
from urllib.parse import quote

import aiohttp
import botocore.config
import botocore.exceptions

from airflow_gpu.contract import SUBMITTED_AT_ENV, submitted_at_value
from airflow_gpu.faults import error_code
from airflow_gpu.jobs.aws.cloudwatch import CloudWatchLogReader
from airflow_gpu.jobs.aws.connection import (
    AwsConnection,
    forget_aws_connection,
    resolve_aws_connection,
    resolve_standard_chain,
)
from airflow_gpu.jobs.aws.replies import decode_leanly
from airflow_gpu.jobs.backend import (
    QUEUED_STATES,
    SUCCEEDED,
    BackendTarget,
    JobBackend,
    JobState,
    LogChunk,
    register_backend,
)
from airflow_gpu.jobs.backoff import RateLimiter, RetryPolicy, SharedBackoff
from airflow_gpu.jobs.cost import JobUsage
from airflow_gpu.jobs.placement import parse_blocked
from airflow_gpu.jobs.poll_errors import CannotSeeJobs, JobIdsRejected
from airflow_gpu.jobs.spec import TAG_CANCELLED, TAG_IDEMPOTENCY_KEY, JobSpec, JobSpecError

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_LOG_GROUP = "/aws/batch/job"
MAX_REASON = 512  # keep TerminateJob reasons readable in the console

_THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalError",
        "InternalFailure",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def is_transient(exc: BaseException) -> bool:
    """Faults worth retrying: throttling, HTTP 429 and 5xx, and connection-level errors."""
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return error_code(exc) in _THROTTLING or status == 429 or status >= 500
    return isinstance(
        exc,
        (
            botocore.exceptions.HTTPClientError,
            botocore.exceptions.ConnectionError,
            aiohttp.ClientError,
            asyncio.TimeoutError,
            ConnectionError,
        ),
    )


#: Credentials that expired or rotated under a long-lived client: re-read the connection and retry.
_CREDENTIALS_EXPIRED = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "InvalidClientTokenId",
        "UnrecognizedClient",
        "UnrecognizedClientException",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
    }
)
#: Refreshes tried within one call before the error goes to the caller (the watcher retries it later).
CREDENTIAL_REFRESHES = 2


def parse_job(job: dict[str, Any]) -> JobState:
    """A DescribeJobs entry as a JobState. Runs for every watched job on every poll: keep it lean."""
    container = job.get("container") or {}
    attempts = job.get("attempts") or ()
    last = attempts[-1] if attempts else {}
    last_container = last.get("container") or {}
    exit_code = container.get("exitCode", last_container.get("exitCode"))
    stream = container.get("logStreamName") or last_container.get("logStreamName")
    reason = job.get("statusReason")
    container_reason = container.get("reason") or last_container.get("reason")
    if container_reason and container_reason != reason:
        reason = f"{reason}; container: {container_reason}" if reason else container_reason
    # Batch sends container output to CloudWatch Logs (group /aws/batch/job) unless the job
    # definition names another log driver; then there is no CloudWatch stream to read.
    group: str | None = DEFAULT_LOG_GROUP
    log_config = container.get("logConfiguration")
    if log_config and log_config.get("logDriver"):
        if log_config["logDriver"] == "awslogs":
            group = (log_config.get("options") or {}).get("awslogs-group") or DEFAULT_LOG_GROUP
        else:
            group = None
    status = job["status"]
    created = job.get("createdAt")
    queued_since = None
    if status in QUEUED_STATES:
        # A retried job queues again from the end of its last attempt.
        since = last.get("stoppedAt") or created
        queued_since = since / 1000 if since else None
    return JobState(
        job_id=job["jobId"],
        status=status,
        name=job.get("jobName"),
        status_reason=reason,
        exit_code=exit_code,
        attempts=len(attempts),
        log_stream=stream,
        log_group=group if stream else None,
        queued_since=queued_since,
        tags=job.get("tags") or {},
        blocked=parse_blocked(status, job.get("statusReason")),
    )


def console_host(region: str) -> str:
    if region.startswith("cn-"):
        return "console.amazonaws.cn"
    if region.startswith("us-gov-"):
        return "console.amazonaws-us-gov.com"
    return "console.aws.amazon.com"


def _console_escape(value: str) -> str:
    # The CloudWatch console wants each path part URL-encoded twice, with '%' written as '$'.
    return quote(quote(value, safe=""), safe="").replace("%", "$")


def batch_job_url(region: str, job_id: str) -> str:
    return f"https://{console_host(region)}/batch/home?region={region}#jobs/detail/{quote(job_id, safe='')}"


def log_stream_url(region: str, group: str, stream: str) -> str:
    return (
        f"https://{console_host(region)}/cloudwatch/home?region={region}#logsV2:log-groups/log-group/"
        f"{_console_escape(group)}/log-events/{_console_escape(stream)}"
    )


def _client_config(base: botocore.config.Config | None) -> botocore.config.Config:
    ours = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1}, max_pool_connections=16)
    return base.merge(ours) if base is not None else ours


@register_backend
class AwsBatchBackend(JobBackend):
    name = "aws_batch"
    #: Backoff for every call on one client; tests shorten it.
    retry_policy = RetryPolicy()
    #: FilterLogEvents calls per second on one connection, and how many may go at once. CloudWatch
    #: allows 5 per second per account and region, shared with everyone else reading logs there
    #: (the console, other triggerers), so live logs take 2 of them, and never more than 4 in any second.
    logs_calls_per_second: float = 2.0
    logs_burst: int = 2

    def __init__(self, connection: AwsConnection, client: Any) -> None:
        self.connection = connection
        self.region = connection.region_name
        self._batch = decode_leanly(client)
        self._logs: Any = None
        self._logs_lock = asyncio.Lock()
        self._ecs: Any = None  # only for a job's bill: which instance type it ran on
        self.backoff = SharedBackoff(f"AWS Batch in {self.region}", is_transient, self.retry_policy, log)
        self.logs_backoff = SharedBackoff(f"CloudWatch Logs in {self.region}", is_transient, self.retry_policy, log)
        self.logs_limiter = RateLimiter(self.logs_calls_per_second, self.logs_burst)
        self._log_reader: CloudWatchLogReader | None = None
        self._refresh_lock = asyncio.Lock()
        self._retired: list[Any] = []  # clients replaced at the last refresh, closed at the next one or at the end
        self._arns: dict[str, str] = {}  # job id -> ARN, from submit and find replies: add_tags then needs no describe
        self._region_asked: str | None = connection.region_name
        self._standard_chain: BackendTarget | None = None  # set when opened from the standard chain (the terminal)
        self.credential_refreshes = 0  # for tests and metrics
        self._closing = False  # aclose has begun: no credential refresh swaps in new clients from here
        self.closed = False  # every client closed, its HTTP sessions with it

    @classmethod
    async def open(cls, target: BackendTarget) -> AwsBatchBackend:
        if target.standard_chain:
            connection = await resolve_standard_chain(target.profile, target.region_name, target.endpoint_url)
        else:
            connection = await resolve_aws_connection(target.conn_id, target.region_name)
        client = await cls._create_client(connection, "batch")
        backend = cls(connection, client)
        backend._region_asked = target.region_name  # the cache key the connection was resolved under
        backend._standard_chain = target if target.standard_chain else None
        return backend

    @staticmethod
    async def _create_client(connection: AwsConnection, service: str) -> Any:
        context = connection.session.create_client(
            service,
            region_name=connection.region_name,
            endpoint_url=connection.endpoint_url(service),
            config=_client_config(connection.config),
            verify=connection.verify,
        )
        return await context.__aenter__()

    @property
    def location(self) -> str:
        endpoint = self.connection.endpoint_url("batch")
        return f"AWS Batch in {self.region}" + (f" at {endpoint}" if endpoint else "")

    # -- submit and reattach ----------------------------------------------------------------------

    def submit_params(self, spec: JobSpec, *, submitted_at: float | None = None) -> dict[str, Any]:
        for value, param in ((spec.queue, "job_queue"), (spec.definition, "job_definition")):
            if not value:
                raise JobSpecError(
                    f"{param} is required on AWS Batch: pass the Batch {param.replace('_', ' ')} name or ARN."
                )
        overrides: dict[str, Any] = {}
        if spec.command is not None:
            overrides["command"] = list(spec.command)  # argv as given: Batch runs it without a shell
        environment = dict(spec.environment)
        if submitted_at is not None:
            environment[SUBMITTED_AT_ENV] = submitted_at_value(submitted_at)
        if environment:
            overrides["environment"] = [{"name": k, "value": v} for k, v in environment.items()]
        requirements = spec.resource_requirements()
        if requirements:
            overrides["resourceRequirements"] = requirements
        params: dict[str, Any] = {
            "jobName": spec.name,
            "jobQueue": spec.queue,
            "jobDefinition": spec.definition,
            "containerOverrides": overrides,
            "tags": dict(spec.tags),
            "propagateTags": True,
            "retryStrategy": spec.retry_strategy(),
        }
        if spec.parameters:
            params["parameters"] = dict(spec.parameters)
        if spec.timeout_s is not None:
            params["timeout"] = {"attemptDurationSeconds": spec.timeout_s}
        if spec.share_identifier is not None:  # a fair-share queue requires it; any other queue refuses it
            params["shareIdentifier"] = spec.share_identifier
        if spec.scheduling_priority is not None:
            params["schedulingPriorityOverride"] = spec.scheduling_priority
        return params

    async def submit(self, spec: JobSpec) -> JobState:
        # Stamped once, so a retried SubmitJob carries the time of the first ask (the queue wait).
        params = self.submit_params(spec, submitted_at=time.time())
        tries = 0
        while True:
            try:
                reply = await self.backoff.call(lambda: self._batch.submit_job(**params), attempts=1)
            except Exception as exc:
                tries += 1
                if not is_transient(exc) or tries >= self.retry_policy.attempts:
                    raise
                # The request may have reached Batch before the fault: look before submitting again,
                # so a lost reply never becomes a second GPU job.
                if error_code(exc) not in _THROTTLING:
                    existing = [s for s in await self.find(spec) if s.is_live or s.status == SUCCEEDED]
                    if existing:
                        return existing[0]
                continue
            if reply.get("jobArn"):
                self._arns[reply["jobId"]] = reply["jobArn"]
            return JobState(
                job_id=reply["jobId"], status="SUBMITTED", name=reply.get("jobName", spec.name), tags=spec.tags
            )

    async def find(self, spec: JobSpec) -> list[JobState]:
        # ListJobs cannot filter by tag, but its JOB_NAME filter returns jobs in every state;
        # the name carries a hash of the idempotency key, the tag confirms it.
        ids = await self._listed_ids(jobQueue=spec.queue, filters=[{"name": "JOB_NAME", "values": [spec.name]}])
        raws: list[dict[str, Any]] = []
        for start in range(0, len(ids), self.describe_batch_size):
            chunk = ids[start : start + self.describe_batch_size]
            reply = await self.backoff.call(partial(self._batch.describe_jobs, jobs=chunk))
            raws.extend(reply.get("jobs", ()))
        self._arns.update({j["jobId"]: j["jobArn"] for j in raws if j.get("jobArn")})
        raws = [
            j
            for j in raws
            if (j.get("tags") or {}).get(TAG_IDEMPOTENCY_KEY) == spec.idempotency_key
            and TAG_CANCELLED not in (j.get("tags") or {})
        ]
        raws.sort(key=lambda j: j.get("createdAt") or 0, reverse=True)
        return [parse_job(j) for j in raws]

    async def _listed_ids(self, **query: Any) -> list[str]:
        """Every job id ListJobs returns for ``query``, page by page."""
        ids: list[str] = []
        token = None
        while True:
            kwargs = dict(query, nextToken=token) if token else query
            page = await self.backoff.call(partial(self._batch.list_jobs, **kwargs))
            ids.extend(summary["jobId"] for summary in page.get("jobSummaryList", ()))
            token = page.get("nextToken")
            if not token:
                return ids

    async def existing_names(self) -> tuple[list[str], list[str]]:
        """The job queues and the active job definitions (name:revision) this identity can see:
        what a misspelled --queue or --definition could have meant (the first page of each)."""
        queues = await self.backoff.call(lambda: self._batch.describe_job_queues(maxResults=100))
        definitions = await self.backoff.call(
            lambda: self._batch.describe_job_definitions(status="ACTIVE", maxResults=100)
        )
        return (
            sorted(q["jobQueueName"] for q in queues.get("jobQueues", ())),
            sorted(f"{d['jobDefinitionName']}:{d['revision']}" for d in definitions.get("jobDefinitions", ())),
        )

    async def list_jobs(self, queue: str | None, statuses: Sequence[str]) -> list[JobState]:
        if not queue:
            raise JobSpecError("AWS Batch lists jobs per queue: pass --queue.")
        ids: list[str] = []
        for status in statuses:  # ListJobs without a status lists RUNNING jobs only
            ids.extend(await self._listed_ids(jobQueue=queue, jobStatus=status))
        states: list[JobState] = []
        for start in range(0, len(ids), self.describe_batch_size):
            states.extend(await self.describe(ids[start : start + self.describe_batch_size]))
        return [s for s in states if TAG_IDEMPOTENCY_KEY in s.tags]

    # -- watch ------------------------------------------------------------------------------------

    async def describe(self, job_ids: Sequence[str]) -> list[JobState]:
        ids = list(job_ids)
        try:
            # Each backed-off try takes the client of the moment: another call's refresh may replace it meanwhile.
            reply = await self._with_fresh_credentials(
                self._batch_client,
                lambda _: self.backoff.call(lambda: self._batch.describe_jobs(jobs=ids), attempts=None),
            )
        except botocore.exceptions.ClientError as exc:
            raise self._cannot_see(exc, len(ids)) from exc
        return [parse_job(j) for j in reply.get("jobs", ())]

    async def _with_fresh_credentials(
        self, client: Callable[[], Awaitable[Any]], call: Callable[[Any], Awaitable[_T]]
    ) -> _T:
        """``call(client())``, again on fresh clients when the credentials expired or rotated under it
        (up to ``CREDENTIAL_REFRESHES`` times): a triggerer's client outlives any session token."""
        refreshes = 0
        while True:
            current = await client()
            try:
                return await call(current)
            except botocore.exceptions.ClientError as exc:
                code = error_code(exc)
                if code not in _CREDENTIALS_EXPIRED or refreshes >= CREDENTIAL_REFRESHES:
                    raise
                refreshes += 1
                await self.refresh_credentials(current, code)

    def _cannot_see(self, exc: botocore.exceptions.ClientError, count: int) -> CannotSeeJobs:
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        text = f"DescribeJobs for {count} job(s) answered {code or 'an error'}: {message}"
        if code == "ClientException":
            return JobIdsRejected(text, code=code, fix="check the job ids")
        who = f"connection {self.connection.conn_id!r}" if self.connection.conn_id else "the default AWS credentials"
        if code in _CREDENTIALS_EXPIRED:
            fix = (
                f"the credentials of {who} stay expired or invalid after a refresh: renew them (or the role it assumes)"
            )
        elif "AccessDenied" in code or code in ("UnauthorizedOperation", "AuthorizationError", "Forbidden"):
            fix = f"grant batch:DescribeJobs to the identity of {who} (see docs/aws.md, IAM)"
        else:
            fix = f"check that {who} may call batch:DescribeJobs in {self.region}"
        return CannotSeeJobs(text, code=code, fix=fix)

    async def refresh_credentials(self, failed_client: Any, code: str) -> None:
        """Re-read the connection (new credentials, a fresh assumed role) and swap in new clients.

        Many calls fail at once when a token expires: only the first refreshes, the others find
        their client already replaced and simply retry. Both clients were made from the same
        credentials, so both are replaced, whichever service noticed: the Batch client at once, the
        CloudWatch Logs client at its next use.
        """
        async with self._refresh_lock:
            if failed_client not in (self._batch, self._logs) or self._closing:
                return
            log.warning(
                "%s answered %s: re-reading connection %r for fresh credentials",
                self.location,
                code,
                self.connection.conn_id,
            )
            chain = self._standard_chain
            if chain is not None:  # no Airflow connection to re-read: the standard chain again
                connection = await resolve_standard_chain(chain.profile, chain.region_name, chain.endpoint_url)
            else:
                forget_aws_connection(self.connection.conn_id, self._region_asked)
                connection = await resolve_aws_connection(self.connection.conn_id, self._region_asked)
            client = decode_leanly(await self._create_client(connection, "batch"))
            replaced = [c for c in (self._batch, self._logs) if c is not None]
            self.connection, self._batch, self._logs = connection, client, None
            self.credential_refreshes += 1
            # Calls still in flight on the old clients finish there; they are closed at the next refresh or at the end.
            retired, self._retired = self._retired, replaced
        for old in retired:
            await old.close()

    async def add_tags(self, job_id: str, tags: Mapping[str, str]) -> None:
        # TagResource takes the job's ARN: known from this backend's submit or find, else described.
        arn = self._arns.get(job_id)
        if arn is None:
            reply = await self.backoff.call(lambda: self._batch.describe_jobs(jobs=[job_id]))
            jobs = reply.get("jobs") or []
            if not jobs:
                raise JobSpecError(f"{self.location} has no job {job_id} to tag")
            arn = jobs[0]["jobArn"]
        await self.backoff.call(lambda: self._batch.tag_resource(resourceArn=arn, tags=dict(tags)))

    async def terminate(self, job_id: str, reason: str) -> None:
        reply = await self.backoff.call(lambda: self._batch.describe_jobs(jobs=[job_id]))
        jobs = reply.get("jobs") or []
        if not jobs:
            log.warning("Not terminating %s: %s has no such job", job_id, self.location)
            return
        job = jobs[0]
        if job["status"] not in QUEUED_STATES and job["status"] != "RUNNING":
            return
        try:
            # Marked first, so a retry looking for this task's job never reattaches to one on its way out.
            await self.backoff.call(
                lambda: self._batch.tag_resource(resourceArn=job["jobArn"], tags={TAG_CANCELLED: "true"})
            )
        except botocore.exceptions.ClientError as exc:
            log.warning("Could not tag %s as cancelled (%s); terminating it anyway", job_id, error_code(exc) or exc)
        await self.backoff.call(lambda: self._batch.terminate_job(jobId=job_id, reason=reason[:MAX_REASON]))
        log.info("Terminated AWS Batch job %s: %s", job_id, reason)

    # -- logs -------------------------------------------------------------------------------------

    async def _batch_client(self) -> Any:
        return self._batch

    async def _logs_client(self) -> Any:
        async with self._logs_lock:
            if self._logs is None:
                self._logs = decode_leanly(await self._create_client(self.connection, "logs"))
            return self._logs

    async def _logs_call(self, call: Callable[[Any], Awaitable[_T]]) -> _T:
        """``call(logs_client)``, on fresh clients when the credentials expired under it (as DescribeJobs)."""
        return await self._with_fresh_credentials(self._logs_client, call)

    async def read_logs(self, job: JobState, *, cursor: str | None = None, tail: int | None = None) -> LogChunk:
        if not job.log_stream or not job.log_group:  # no stream yet, or not logging to CloudWatch
            return LogChunk([], cursor)
        kwargs: dict[str, Any] = {"logGroupName": job.log_group, "logStreamName": job.log_stream}
        if tail is not None:
            kwargs.update(startFromHead=False, limit=max(1, int(tail)))
        else:
            kwargs["startFromHead"] = True
            if cursor:
                kwargs["nextToken"] = cursor
        try:
            reply = await self._logs_call(lambda logs: self.logs_backoff.call(lambda: logs.get_log_events(**kwargs)))
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                return LogChunk([], cursor)
            raise
        return LogChunk([e["message"] for e in reply.get("events", ())], reply.get("nextForwardToken") or cursor)

    async def filter_log_events(self, *, urgent: bool = False, **kwargs: Any) -> dict[str, Any]:
        """One FilterLogEvents call, paced by the connection's rate limiter and backoff.

        ``urgent`` calls (a job's last lines, read before its trigger fires) go ahead of
        the routine sweep in the limiter's queue.
        """

        async def on(logs: Any) -> dict[str, Any]:
            async def call() -> dict[str, Any]:
                await self.logs_limiter.acquire(urgent=urgent)
                reply: dict[str, Any] = await logs.filter_log_events(**kwargs)
                return reply

            return await self.logs_backoff.call(call)

        return await self._logs_call(on)

    def log_reader(self) -> CloudWatchLogReader:
        """Live logs read in batches of up to 100 streams per FilterLogEvents call."""
        if self._log_reader is None:
            self._log_reader = CloudWatchLogReader(self)
        return self._log_reader

    # -- usage (the bill) -------------------------------------------------------------------------

    async def ecs_client(self) -> Any:
        async with self._logs_lock:
            if self._ecs is None:
                self._ecs = await self._create_client(self.connection, "ecs")
            return self._ecs

    async def usage(self, job_ids: Sequence[str]) -> list[JobUsage]:
        from airflow_gpu.jobs.aws.usage import job_usage

        return await job_usage(self, job_ids)

    # -- links ------------------------------------------------------------------------------------

    def job_url(self, job_id: str) -> str | None:
        return batch_job_url(self.region, job_id)

    def log_url(self, job: JobState) -> str | None:
        if not job.log_stream or not job.log_group:
            return None
        return log_stream_url(self.region, job.log_group, job.log_stream)

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            for client in (self._batch, self._logs, self._ecs, *self._retired):
                if client is not None:
                    await client.close()
        finally:
            # Set last: `closed` promises that no HTTP session is left open (a client's close awaits its
            # sessions' ends; a reader that saw `closed` set before that found one still closing).
            self.closed = True
