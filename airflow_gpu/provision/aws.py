"""boto3 clients for batch-setup, AWS errors turned into advice, and polling with a deadline.

batch-setup is a short synchronous CLI, so it uses plain boto3. Without ``--endpoint-url``
botocore resolves the endpoint itself, which honours ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_BATCH`` / ``AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`` (LocalStack, moto).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import boto3
import botocore.exceptions
from botocore.config import Config

from .. import __version__
from .errors import ProvisionError, WaitTimeout

# Statuses in which Batch is still working on a resource and refuses further changes.
SETTLING = ("CREATING", "UPDATING", "DELETING")

_HINTS = {
    "AccessDeniedException": "the caller lacks an IAM permission; the message names the action to allow",
    "AccessDenied": "the caller lacks an IAM permission; the message names the action to allow",
    "UnrecognizedClientException": "the AWS credentials are not valid for this account or region",
    "InvalidClientTokenId": "the AWS credentials are not valid for this account or region",
    "ExpiredTokenException": "the AWS session has expired; refresh your credentials (aws sso login, ...)",
}


@dataclass
class Clients:
    batch: Any
    logs: Any
    region: str
    endpoint_url: str | None
    # Read-only look-ups of what the set-up depends on (provision/dependencies.py).
    iam: Any = None
    ec2: Any = None
    session: Any = None
    config: Any = None

    def ecr_in(self, region: str) -> Any:
        """An ECR client for the image's region, which need not be the set-up's."""
        kwargs: dict[str, Any] = {"region_name": region, "config": self.config}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        return self.session.client("ecr", **kwargs)


def connect(region: str, endpoint_url: str | None = None, profile: str | None = None) -> Clients:
    """Batch and CloudWatch Logs clients with standard retries (Batch throttles control-plane calls)."""
    config = Config(
        retries={"mode": "standard", "max_attempts": 8},
        user_agent_extra=f"airflow-gpu/{__version__} batch-setup",
    )
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.ProfileNotFound as exc:
        raise ProvisionError(f"{exc}; pass an existing --profile or leave it out") from None
    kwargs: dict[str, Any] = {"region_name": region, "config": config}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return Clients(
        batch=session.client("batch", **kwargs),
        logs=session.client("logs", **kwargs),
        region=region,
        endpoint_url=endpoint_url,
        iam=session.client("iam", **kwargs),
        ec2=session.client("ec2", **kwargs),
        session=session,
        config=config,
    )


@contextmanager
def aws_errors(doing: str) -> Iterator[None]:
    """Turn botocore failures into one ProvisionError that says what was being done and what to try."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "Error")
        message = error.get("Message") or str(exc)
        hint = _HINTS.get(code)
        raise ProvisionError(f"{doing} failed: {code}: {message}" + (f" ({hint})" if hint else "")) from None
    except botocore.exceptions.NoCredentialsError:
        raise ProvisionError(
            f"{doing} failed: no AWS credentials found; set AWS_PROFILE (or pass --profile), "
            "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from None
    except botocore.exceptions.EndpointConnectionError as exc:
        raise ProvisionError(
            f"{doing} failed: cannot reach {exc.kwargs.get('endpoint_url')}; check the region, --endpoint-url and AWS_ENDPOINT_URL"
        ) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise ProvisionError(f"{doing} failed: {exc}") from None


def call(client: Any, operation: str, doing: str, **kwargs: Any) -> dict[str, Any]:
    with aws_errors(doing):
        return getattr(client, operation)(**kwargs)


def paginate(client: Any, operation: str, key: str, doing: str, **kwargs: Any) -> list[dict[str, Any]]:
    with aws_errors(doing):
        items: list[dict[str, Any]] = []
        for page in client.get_paginator(operation).paginate(**kwargs):
            items.extend(page.get(key, []))
        return items


@dataclass
class WaitPolicy:
    timeout: float = 900.0
    interval: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


def wait_for(
    policy: WaitPolicy,
    what: str,
    describe: Callable[[], dict[str, Any] | None],
    done: Callable[[dict[str, Any] | None], bool],
    *,
    show: Callable[[dict[str, Any] | None], str],
) -> dict[str, Any] | None:
    """Poll ``describe`` until ``done``; fail at once on INVALID and with a clear error at the deadline."""
    deadline = policy.clock() + policy.timeout
    while True:
        current = describe()
        if done(current):
            return current
        if current is not None and current.get("status") == "INVALID":
            raise ProvisionError(
                f"{what}: AWS reports it INVALID: {current.get('statusReason') or 'no reason given'}. "
                "Fix the cause (often a role, subnet or security group), then run batch-setup again"
            )
        if policy.clock() >= deadline:
            raise WaitTimeout(
                f"timed out after {policy.timeout:.0f} s waiting for {what} (last seen: {show(current)}). "
                "AWS may still be working on it: check it in the AWS Batch console, then run the same command "
                "again (it continues from where it stopped), or raise --wait-timeout"
            )
        policy.sleep(policy.interval)
