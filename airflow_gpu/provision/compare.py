"""Normalised views of Batch resources, and the field-by-field differences between two views.

AWS reports a resource differently from the request that made it: it adds empty lists,
reorders sets, returns ARNs for names and may change the case of enum values. Each view
maps a dotted field path to a value in one canonical form, so "no difference" means the
resource already is what the config asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class Change:
    field: str
    old: Any
    new: Any

    def render(self) -> str:
        return f"{self.field}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Fields whose values differ between two flat views, in a stable order."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before != after:
            changes.append(Change(key, before, after))
    return changes


def _empty(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or value == {}


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif not _empty(value):
        out[prefix] = value


def _sorted(values: Any) -> list | None:
    return sorted(values) if values else None


# -- compute environment -----------------------------------------------------------

SCALING_FIELDS = ("state", "serviceRole", "computeResources.minvCpus", "computeResources.maxvCpus")


def profile_name(instance_role: str | None) -> str | None:
    """AWS takes an instance profile by name or ARN and reports the ARN; compare the names."""
    if not instance_role:
        return None
    return instance_role.rsplit("/", 1)[-1]


def compute_environment_view(ce: dict[str, Any]) -> dict[str, Any]:
    cr = ce.get("computeResources") or {}
    view: dict[str, Any] = {
        "type": ce.get("type"),
        "state": ce.get("state"),
        "serviceRole": ce.get("serviceRole"),
        "computeResources.type": cr.get("type"),
        "computeResources.allocationStrategy": cr.get("allocationStrategy"),
        "computeResources.minvCpus": cr.get("minvCpus"),
        "computeResources.maxvCpus": cr.get("maxvCpus"),
        "computeResources.instanceTypes": _sorted(cr.get("instanceTypes")),
        "computeResources.subnets": _sorted(cr.get("subnets")),
        "computeResources.securityGroupIds": _sorted(cr.get("securityGroupIds")),
        "computeResources.instanceRole": profile_name(cr.get("instanceRole")),
        "computeResources.ec2Configuration": _sorted(
            e.get("imageType") for e in cr.get("ec2Configuration") or [] if e.get("imageType")
        ),
        "computeResources.tags": dict(sorted((cr.get("tags") or {}).items())) or None,
    }
    if cr.get("type") == "SPOT":
        # AWS's default bid is 100% of the On-Demand price.
        view["computeResources.bidPercentage"] = cr.get("bidPercentage") or 100
    return view


# -- job queue -----------------------------------------------------------------------


def job_queue_view(queue: dict[str, Any]) -> dict[str, Any]:
    order = sorted(queue.get("computeEnvironmentOrder") or [], key=lambda o: int(o["order"]))
    return {
        "state": queue.get("state"),
        "priority": int(queue["priority"]) if queue.get("priority") is not None else None,
        "computeEnvironmentOrder": [f"{int(o['order'])}: {o['computeEnvironment']}" for o in order] or None,
        "jobStateTimeLimitActions": sorted(
            f"{a.get('action')} {a.get('state')} {a.get('reason')} after {int(a.get('maxTimeSeconds') or 0)} s"
            for a in queue.get("jobStateTimeLimitActions") or []
        )
        or None,
    }


# -- tags ----------------------------------------------------------------------------


def missing_tags(actual: dict[str, str] | None, desired: dict[str, str]) -> list[Change]:
    """Tags to add or change. Tags the config does not name are left alone (AWS and others add some)."""
    actual = actual or {}
    return [Change(f"tags.{k}", actual.get(k), v) for k, v in sorted(desired.items()) if actual.get(k) != v]


# -- job definition ------------------------------------------------------------------

# Everything RegisterJobDefinition lets a caller set in containerProperties. A value AWS
# reports for one of these that the config does not ask for is drift and gets a new
# revision; fields outside this list are AWS's own bookkeeping and are ignored.
_CONTAINER_FIELDS = (
    "image",
    "vcpus",
    "memory",
    "command",
    "jobRoleArn",
    "executionRoleArn",
    "volumes",
    "environment",
    "mountPoints",
    "readonlyRootFilesystem",
    "privileged",
    "ulimits",
    "user",
    "instanceType",
    "resourceRequirements",
    "linuxParameters",
    "logConfiguration",
    "secrets",
    "networkConfiguration",
    "fargatePlatformConfiguration",
    "ephemeralStorage",
    "runtimePlatform",
    "repositoryCredentials",
    "enableExecuteCommand",
)
_DEFINITION_FIELDS = (
    "type",
    "parameters",
    "schedulingPriority",
    "containerProperties",
    "nodeProperties",
    "eksProperties",
    "ecsProperties",
    "retryStrategy",
    "timeout",
    "propagateTags",
    "platformCapabilities",
    "tags",
)


def job_definition_view(definition: dict[str, Any]) -> dict[str, Any]:
    body = {k: definition[k] for k in _DEFINITION_FIELDS if k in definition}
    container = body.get("containerProperties")
    if isinstance(container, dict):
        container = {k: container[k] for k in _CONTAINER_FIELDS if k in container}
        # Lists whose order carries no meaning become maps, so a reorder is no change.
        if container.get("resourceRequirements"):
            container["resourceRequirements"] = {r["type"]: str(r["value"]) for r in container["resourceRequirements"]}
        if container.get("environment"):
            container["environment"] = {e["name"]: e.get("value", "") for e in container["environment"]}
        if container.get("secrets"):
            container["secrets"] = {s["name"]: s.get("valueFrom", "") for s in container["secrets"]}
        body["containerProperties"] = container
    retry = body.get("retryStrategy")
    if isinstance(retry, dict):
        # AWS matches actions case-insensitively, and some endpoints echo them lower-case.
        rules = [
            {k: (v.upper() if k == "action" else v) for k, v in rule.items() if not _empty(v)}
            for rule in retry.get("evaluateOnExit") or []
        ]
        body["retryStrategy"] = {"attempts": retry.get("attempts"), "evaluateOnExit": rules or None}
    if body.get("platformCapabilities"):
        body["platformCapabilities"] = sorted(body["platformCapabilities"])
    out: dict[str, Any] = {}
    _flatten(body, "", out)
    return out
