"""The commonest AWS mistakes, each as one line naming what went wrong and what to do.

A person at a terminal should never read a botocore traceback to learn that they forgot
``aws sso login``. :func:`explain` turns the exceptions botocore, aiobotocore and the
backend raise for a person's mistake into that line; anything it does not recognise is
left alone (a bug should still show its traceback).
"""

from __future__ import annotations

import asyncio

from airflow_gpu.faults import error_code

#: Where each action the terminal calls is granted (the policy a person's identity needs).
POLICY_FILE = "container/iam/airflow.json"

_SERVICE_OF = {
    "SubmitJob": "batch",
    "DescribeJobs": "batch",
    "ListJobs": "batch",
    "TerminateJob": "batch",
    "TagResource": "batch",
    "DescribeJobQueues": "batch",
    "DescribeJobDefinitions": "batch",
    "GetLogEvents": "logs",
    "FilterLogEvents": "logs",
}

_EXPIRED = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "UnrecognizedClient",
        "UnrecognizedClientException",
    }
)

_DENIED = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError", "Forbidden"}
)

NO_CREDENTIALS = (
    "no AWS credentials found: run `aws sso login` (with --profile NAME for a named profile), "
    "pass --profile NAME, or set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment"
)


def _action(exc) -> str:
    operation = getattr(exc, "operation_name", "") or "?"
    service = _SERVICE_OF.get(
        operation, "s3" if operation.endswith(("Object", "Objects", "ObjectsV2", "Upload")) else ""
    )
    return f"{service}:{operation}" if service else operation


def explain(exc: BaseException, *, profile: str | None = None, endpoint_url: str | None = None) -> str | None:
    """One line for a person's AWS mistake, or None when ``exc`` is not one."""
    import botocore.exceptions as bx

    from airflow_gpu.jobs.poll_errors import CannotSeeJobs

    login = f"aws sso login --profile {profile}" if profile else "aws sso login"
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return NO_CREDENTIALS
    if isinstance(exc, bx.ProfileNotFound):
        return f"AWS profile {profile or exc.kwargs.get('profile')!r} is not in your AWS config; check --profile (`aws configure list-profiles` lists them)"
    token_errors = tuple(
        getattr(bx, name)
        for name in ("TokenRetrievalError", "SSOTokenLoadError", "UnauthorizedSSOTokenError")
        if hasattr(bx, name)
    )
    if isinstance(exc, token_errors):
        return f"your AWS login has expired: run `{login}`, then try again"
    if isinstance(exc, bx.ClientError):
        code = error_code(exc)
        if code in _EXPIRED:
            return f"AWS refused the credentials ({code}): they have expired or are wrong; run `{login}` or refresh them, then try again"
        if code in _DENIED:
            return (
                f"AWS denied {_action(exc)} to your identity ({code}); grant it with the policy in {POLICY_FILE} "
                "(see docs/aws.md, IAM)"
            )
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        return f"AWS answered {exc.operation_name} with {code or 'an error'}: {message}"
    if isinstance(exc, CannotSeeJobs):
        if exc.code in _EXPIRED:
            return f"AWS refused the credentials ({exc.code}): they have expired or are wrong; run `{login}` or refresh them, then try again"
        if exc.code in _DENIED:
            return f"AWS denied batch:DescribeJobs to your identity ({exc.code}); grant it with the policy in {POLICY_FILE}"
        return f"{exc}; {exc.fix}" if exc.fix else str(exc)
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError, bx.HTTPClientError)):
        where = endpoint_url or getattr(exc, "kwargs", {}).get("endpoint_url") or "AWS"
        return f"cannot reach {where}: check your network, --endpoint-url and --region"
    return None


def gave_up(seconds: float, endpoint_url: str | None) -> str:
    """The line an interactive command ends with when the API did not answer in time."""
    where = endpoint_url or "AWS"
    return (
        f"no answer from {where} in {seconds:g} s (unreachable, or failing); check your network, "
        "--endpoint-url and --region, or wait longer with --give-up-after SECONDS"
    )


def is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (asyncio.TimeoutError, TimeoutError))
