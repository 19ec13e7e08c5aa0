"""Which EC2 instance the job runs on, and in which market, from the instance metadata service.

The worker knows no price and no Batch API: what it can learn of its own machine comes from
IMDS, as the AWS SDKs ask it. IMDSv2: a PUT of ``latest/api/token`` (the token's TTL in a
header), then GETs of ``latest/meta-data/instance-type`` and ``.../instance-life-cycle``
("on-demand" or "spot") carrying the token. The SDKs' settings are honoured as botocore reads
them: ``AWS_EC2_METADATA_DISABLED=true`` asks nothing; ``AWS_EC2_METADATA_SERVICE_ENDPOINT``
(or ``..._ENDPOINT_MODE=IPv6``) moves the service; ``AWS_METADATA_SERVICE_TIMEOUT`` (seconds,
default 1) and ``AWS_METADATA_SERVICE_NUM_ATTEMPTS`` (default 1) bound each request. An
instance that answers the token request with 404 or 405 only speaks IMDSv1: it is asked without
a token, as botocore does.

A container on an instance whose metadata hop limit is 1 gets no token (the reply dies one hop
short): that reads "did not answer", and a hop limit of 2 in the launch template fixes it. Every
failure is an answer with a reason, never an exception: a missing IMDS means "cost unknown".
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_ENDPOINT = "http://169.254.169.254/"
IPV6_ENDPOINT = "http://[fd00:ec2::254]/"
TOKEN_TTL_S = 21600
_TOKEN_PATH = "latest/api/token"
_TYPE_PATH = "latest/meta-data/instance-type"
_LIFE_CYCLE_PATH = "latest/meta-data/instance-life-cycle"


@dataclass(frozen=True)
class Placement:
    """The instance type and market ("on-demand", "spot", or None when unknown), or why neither is known."""

    instance_type: str | None
    market: str | None = None
    why_unknown: str = ""


class _NoAnswer(Exception):
    pass


def endpoint(environ: Mapping[str, str]) -> str | None:
    """The service's base URL (ending in "/"), or None when the SDK settings turn it off."""
    if environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true":
        return None
    configured = environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "").strip()
    if configured:
        return configured.rstrip("/") + "/"
    if environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "").strip().lower() == "ipv6":
        return IPV6_ENDPOINT
    return DEFAULT_ENDPOINT


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def lookup(environ: Mapping[str, str]) -> Placement:
    """Ask the instance metadata service where this process runs."""
    base = endpoint(environ)
    if base is None:
        return Placement(None, why_unknown="AWS_EC2_METADATA_DISABLED is set, so the instance metadata was not asked")
    timeout = _number(environ, "AWS_METADATA_SERVICE_TIMEOUT", 1.0)
    attempts = int(_number(environ, "AWS_METADATA_SERVICE_NUM_ATTEMPTS", 1))
    # Never through a proxy: the service is link-local, and a proxy's answer would not be this instance's.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def ask(method: str, path: str, headers: dict[str, str]) -> str:
        last: Exception | None = None
        for _ in range(max(1, attempts)):
            request = urllib.request.Request(base + path, method=method, headers=headers)
            try:
                with opener.open(request, timeout=timeout) as reply:
                    return str(reply.read(4096).decode("ascii", "replace").strip())
            except urllib.error.HTTPError:
                raise  # an answer: retrying will not change it
            except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timed out, garbled, bad URL
                last = exc
        raise _NoAnswer(f"the instance metadata service at {base} did not answer ({last})")

    try:
        headers: dict[str, str] = {}
        try:
            token = ask("PUT", _TOKEN_PATH, {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
            headers = {"X-aws-ec2-metadata-token": token}
        except urllib.error.HTTPError as exc:
            if exc.code not in (404, 405):  # 403: IMDS is turned off for this instance
                raise
        instance_type = ask("GET", _TYPE_PATH, headers)
        try:
            life_cycle = ask("GET", _LIFE_CYCLE_PATH, headers).lower()
        except urllib.error.HTTPError:
            life_cycle = ""
    except urllib.error.HTTPError as exc:
        return Placement(None, why_unknown=f"the instance metadata service at {base} refused ({exc.code} {exc.reason})")
    except _NoAnswer as exc:
        return Placement(None, why_unknown=str(exc))
    if not instance_type:
        return Placement(None, why_unknown=f"the instance metadata service at {base} gave no instance type")
    market = (
        life_cycle if life_cycle in ("on-demand", "spot") else None
    )  # "scheduled" and the like: not priced as either
    return Placement(instance_type, market)
