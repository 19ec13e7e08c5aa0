"""The fault proxy itself: each kind of fault reaches a real client as that fault, and nothing else changes."""

from __future__ import annotations

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.support.fault_proxy import batch_action, s3_object_get


def _s3(url: str):
    config = botocore.config.Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", config=config)


@pytest.fixture
def bucket(moto_aws):
    moto_aws.client("s3").create_bucket(Bucket="bkt")
    moto_aws.client("s3").put_object(Bucket="bkt", Key="k", Body=b"0123456789" * 1000)


@pytest.mark.parametrize(
    "kind, status, code",
    [("500", 500, "InternalError"), ("503", 503, "ServiceUnavailable"), ("slowdown", 503, "SlowDown")],
)
def test_server_errors_reach_the_client_with_their_code(bucket, fault_proxy, kind, status, code):
    fault = fault_proxy.add(kind, when=s3_object_get, times=1)
    s3 = _s3(fault_proxy.url)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        s3.get_object(Bucket="bkt", Key="k")
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert s3.get_object(Bucket="bkt", Key="k")["Body"].read() == b"0123456789" * 1000  # times=1: then through
    assert fault.injected == 1


def test_a_chosen_4xx_on_a_chosen_batch_call(moto_aws, fault_proxy):
    fault = fault_proxy.add(
        "error", when=batch_action("DescribeJobs"), status=403, code="AccessDeniedException", skip=1
    )
    batch = boto3.client(
        "batch",
        endpoint_url=fault_proxy.url,
        region_name="us-east-1",
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )
    assert batch.describe_jobs(jobs=["x"])["jobs"] == []  # skip=1: the first one goes through
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        batch.describe_jobs(jobs=["x"])
    assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
    assert batch.describe_job_queues()["jobQueues"] == []  # other calls are untouched
    assert fault.injected == 1


def test_a_reset_before_the_reply(bucket, fault_proxy):
    fault_proxy.add("reset_before", when=s3_object_get, times=1)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        _s3(fault_proxy.url).get_object(Bucket="bkt", Key="k")


def test_a_reset_in_the_middle_of_the_body(bucket, fault_proxy):
    fault_proxy.add("reset_mid_body", when=s3_object_get, times=1, cut_at=0.3)
    reply = _s3(fault_proxy.url).get_object(Bucket="bkt", Key="k")
    assert reply["ContentLength"] == 10_000  # the headers came whole
    with pytest.raises((botocore.exceptions.IncompleteReadError, botocore.exceptions.ResponseStreamingError)):
        reply["Body"].read()


def test_a_probability_is_seeded(bucket, moto_aws):
    from tests.support.fault_proxy import FaultProxy

    def pattern() -> list[bool]:
        with FaultProxy(moto_aws.endpoint_url, seed=5) as proxy:
            fault = proxy.add("500", when=s3_object_get, probability=0.5)
            s3, seen = _s3(proxy.url), []
            for _ in range(16):
                before = fault.injected
                try:
                    s3.get_object(Bucket="bkt", Key="k")["Body"].read()
                except botocore.exceptions.ClientError:
                    pass
                seen.append(fault.injected > before)
            return seen

    first = pattern()
    assert first == pattern() and 0 < sum(first) < 16
