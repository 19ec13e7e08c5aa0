"""Lean decoding of the two AWS replies read on every poll: DescribeJobs and FilterLogEvents.

botocore parses a reply by walking its output shape member by member, in Python:
~10 ms of CPU for a DescribeJobs of 100 jobs, ~85 % of the client's cost of a poll.
Both replies are plain JSON whose keys are the member names and whose numbers stay
numbers (epoch milliseconds), and airflow-gpu reads a handful of their fields. So,
through botocore's documented ``before-parse`` hook, the reply body is decoded by
msgspec straight into dicts holding only those fields (unknown fields are skipped
in C, not built), and botocore is left an empty body to parse. A 234 KB reply for
100 jobs decodes in ~0.3 ms instead of ~1.2 ms for ``json.loads`` alone.

Only successful replies are touched: errors still go through botocore's parser, so
error codes, throttling and retries behave exactly as before. A reply that does not
fit the schema (a type AWS changed, say) is also left to botocore. The clients that
use this are private to :class:`~airflow_gpu.jobs.aws.backend.AwsBatchBackend`, whose
code reads only the fields listed here.
"""

from __future__ import annotations

from typing import Any, TypedDict

import msgspec


class LogConfiguration(TypedDict, total=False):
    logDriver: str | None
    options: dict[str, str] | None


class ResourceRequirement(TypedDict, total=False):
    type: str
    value: str


class ContainerDetail(TypedDict, total=False):
    exitCode: int | None
    reason: str | None
    logStreamName: str | None
    logConfiguration: LogConfiguration | None
    # Read once per ended job, for its bill (airflow_gpu.jobs.aws.usage).
    containerInstanceArn: str | None
    resourceRequirements: list[ResourceRequirement] | None


class AttemptDetail(TypedDict, total=False):
    container: ContainerDetail | None
    startedAt: int | None
    stoppedAt: int | None
    statusReason: str | None


class JobDetail(TypedDict, total=False):
    jobArn: str
    jobId: str
    jobName: str
    jobQueue: str | None
    status: str
    statusReason: str | None
    createdAt: int | None
    startedAt: int | None
    stoppedAt: int | None
    attempts: list[AttemptDetail] | None
    container: ContainerDetail | None
    tags: dict[str, str] | None


class DescribeJobsReply(TypedDict, total=False):
    jobs: list[JobDetail]


class FilteredLogEvent(TypedDict, total=False):
    logStreamName: str
    timestamp: int
    message: str
    eventId: str


class FilterLogEventsReply(TypedDict, total=False):
    events: list[FilteredLogEvent]
    nextToken: str | None


#: botocore event name (service id, operation) -> decoder of that operation's reply.
DECODERS: dict[tuple[str, str], msgspec.json.Decoder[Any]] = {
    ("batch", "DescribeJobs"): msgspec.json.Decoder(DescribeJobsReply),
    ("cloudwatch-logs", "FilterLogEvents"): msgspec.json.Decoder(FilterLogEventsReply),
}


def _handler(decoder: msgspec.json.Decoder[Any]) -> Any:
    def decode_directly(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
        # botocore merges customized_response_dict into what its parser returns.
        if response_dict.get("status_code", 500) >= 300:
            return
        body = response_dict.get("body")
        if not isinstance(body, (bytes, bytearray)) or not body:
            return
        try:
            reply = decoder.decode(body)
        except msgspec.MsgspecError:
            return
        customized_response_dict.update(reply)
        response_dict["body"] = b"{}"

    return decode_directly


def decode_leanly(client: Any) -> Any:
    """Make ``client`` decode the polling replies with :data:`DECODERS`; returns the client."""
    for (service_id, operation), decoder in DECODERS.items():
        client.meta.events.register(
            f"before-parse.{service_id}.{operation}", _handler(decoder), unique_id=f"airflow-gpu-lean-{operation}"
        )
    return client
