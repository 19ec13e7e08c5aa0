"""JobSpec: what to run and what it needs, checked before anything reaches a backend.

Every check here runs before the first network call, so a bad value fails the
task at once with an error naming the parameter and saying how to fix it, and
no half-submitted job is left behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Mapping, Sequence

from airflow_gpu.contract import SUBMITTED_AT_ENV

# AWS Batch limits (SubmitJob and TagResource API references).
MAX_JOB_NAME = 128
MAX_GPUS = 16  # the largest GPU instances carry 16 GPUs
MAX_VCPUS = 4096
MAX_MEMORY_MIB = 4 * 1024 * 1024
MIN_MEMORY_MIB = 4
MAX_RETRY_ATTEMPTS = 10
MIN_ATTEMPT_DURATION_S = 60
MAX_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
# Fair-share queues (SubmitJob's shareIdentifier and schedulingPriorityOverride).
_SHARE_IDENTIFIER = re.compile(r"[A-Za-z0-9]{1,255}\*?")
MAX_SCHEDULING_PRIORITY = 9999

# Tags the operator sets on every job; the idempotency key is what reattach matches on.
TAG_DAG_ID = "airflow:dag_id"
TAG_TASK_ID = "airflow:task_id"
TAG_RUN_ID = "airflow:run_id"
TAG_MAP_INDEX = "airflow:map_index"
TAG_IDEMPOTENCY_KEY = "airflow-gpu:idempotency-key"
# Set on a job we terminated, so a later try never reattaches to a job on its way out.
TAG_CANCELLED = "airflow-gpu:cancelled"
# The try number of the task instance that deferred on the job (the try that owns it): a later try
# never reattaches to a live job an earlier try deferred on, since only a clear or a mark ends a
# deferred try and leaves its job live (see airflow_gpu/jobs/ownership.py).
TAG_DEFERRED_TRY = "airflow-gpu:deferred-try"

NAME_HASH_LEN = 12

_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_-]+")
_NOT_TAG_CHAR = re.compile(r"[^\w .:/=+@-]+", re.UNICODE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class JobSpecError(ValueError):
    """A job parameter is wrong. The message names the parameter and the fix."""


@dataclass(frozen=True)
class TaskIdentity:
    """The task instance a job belongs to; the same four values always mean the same job."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1

    @property
    def idempotency_key(self) -> str:
        # JSON keeps the parts unambiguous (no separator can be forged by an id).
        raw = json.dumps([self.dag_id, self.task_id, self.run_id, int(self.map_index)])
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def tags(self) -> dict[str, str]:
        return {
            TAG_DAG_ID: tag_value(self.dag_id),
            TAG_TASK_ID: tag_value(self.task_id),
            TAG_RUN_ID: tag_value(self.run_id),
            TAG_MAP_INDEX: str(int(self.map_index)),
            TAG_IDEMPOTENCY_KEY: self.idempotency_key,
        }

    def describe(self) -> str:
        where = f"{self.dag_id}.{self.task_id} run {self.run_id}"
        return where if self.map_index < 0 else f"{where} map index {self.map_index}"


def sanitize_job_name(name: str) -> str:
    """Fit a name to Batch's rules: letters, digits, '-' and '_', alphanumeric first, at most 128 characters."""
    cleaned = _NOT_NAME_CHAR.sub("_", name).strip("_-")
    if not cleaned:
        cleaned = "job"
    if not cleaned[0].isalnum():
        cleaned = "j" + cleaned
    return cleaned[:MAX_JOB_NAME]


def job_name_for(base: str, identity: TaskIdentity) -> str:
    """``<sanitised base>-<12 hex of the idempotency key>``.

    The suffix lets reattach find the task's jobs with one ListJobs name filter
    (Batch cannot list by tag); the tag then confirms the match.
    """
    suffix = identity.idempotency_key[:NAME_HASH_LEN]
    head = sanitize_job_name(base)[: MAX_JOB_NAME - NAME_HASH_LEN - 1].rstrip("_-")
    return f"{head or 'job'}-{suffix}"


def tag_value(value: str) -> str:
    """Batch tag values allow letters, digits, spaces and ``+ - = . _ : / @``, up to 256 characters."""
    return _NOT_TAG_CHAR.sub("_", value)[:MAX_TAG_VALUE]


def is_template(value: Any) -> bool:
    """True for values Airflow will still render (Jinja strings, XComArgs); they are checked after rendering."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    return type(value).__module__.startswith("airflow.") and not isinstance(value, (timedelta,))


# -- one check per parameter --------------------------------------------------------------------


def _int(param: str, value: Any, low: int, high: int, hint: str) -> int:
    if isinstance(value, bool):
        raise JobSpecError(f"{param} must be an integer, got {value!r}. {hint}")
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)  # a rendered template such as "{{ params.gpus }}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise JobSpecError(f"{param} must be an integer, got {value!r}. {hint}")
    if not low <= value <= high:
        raise JobSpecError(f"{param} must be between {low} and {high}, got {value}. {hint}")
    return value


def check_gpus(value: Any) -> int:
    return _int("gpus", value, 0, MAX_GPUS, "Pass the number of GPUs per job, e.g. gpus=1 (0 for a CPU-only job).")


def check_vcpus(value: Any) -> int | None:
    if value is None:
        return None
    return _int("vcpus", value, 1, MAX_VCPUS, "Pass whole vCPUs, e.g. vcpus=4, or None to keep the job definition's.")


def check_memory_mib(value: Any) -> int | None:
    if value is None:
        return None
    return _int(
        "memory_mib",
        value,
        MIN_MEMORY_MIB,
        MAX_MEMORY_MIB,
        "Pass memory in MiB, e.g. memory_mib=15000, or None to keep the job definition's.",
    )


def check_retry_attempts(value: Any) -> int:
    return _int("retry_attempts", value, 1, MAX_RETRY_ATTEMPTS, "AWS Batch allows 1 to 10 attempts; 1 means no retry.")


def check_command(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise JobSpecError(
            f"command must be a list of strings (argv), not a string: {value!r}. "
            f"Write command={value.split()!r}; no shell ever parses it."
        )
    if not isinstance(value, Sequence) or not value:
        raise JobSpecError(f"command must be a non-empty list of strings (argv), got {value!r}.")
    bad = [item for item in value if not isinstance(item, str)]
    if bad:
        raise JobSpecError(
            f"command must be a list of strings; {bad[0]!r} is a {type(bad[0]).__name__}. "
            f"Convert each argument with str()."
        )
    return tuple(value)


def _str_map(param: str, value: Any, example: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise JobSpecError(f"{param} must be a dict of strings, e.g. {example}, got {type(value).__name__}.")
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise JobSpecError(f"{param} keys must be non-empty strings, got {key!r}.")
        if not isinstance(item, str):
            raise JobSpecError(
                f"{param}[{key!r}] must be a string, got {type(item).__name__} {item!r}. "
                f"Convert it with str() (e.g. {example})."
            )
    return dict(value)


def check_environment(value: Any) -> dict[str, str]:
    env = _str_map("environment", value, "{'EPOCHS': '15'}")
    for key in env:
        if not _ENV_NAME.fullmatch(key):
            raise JobSpecError(f"environment variable name {key!r} is invalid: use letters, digits and '_'.")
        if key.startswith("AWS_BATCH"):
            raise JobSpecError(f"environment variable {key!r} is reserved by AWS Batch; choose another name.")
        if key == SUBMITTED_AT_ENV:
            raise JobSpecError(
                f"environment variable {key!r} is set by airflow-gpu when it submits the job; remove it."
            )
    return env


def check_parameters(value: Any) -> dict[str, str]:
    return _str_map("parameters", value, "{'inputs': 's3://bucket/prefix/'}")


def check_tags(value: Any) -> dict[str, str]:
    tags = _str_map("tags", value, "{'team': 'recsys'}")
    for key, item in tags.items():
        if key.lower().startswith("aws:"):
            raise JobSpecError(f"tag {key!r} uses the reserved 'aws:' prefix; choose another key.")
        if len(key) > MAX_TAG_KEY or len(item) > MAX_TAG_VALUE:
            raise JobSpecError(f"tag {key!r}: keys may have 128 characters and values 256.")
    reserved = {
        TAG_DAG_ID,
        TAG_TASK_ID,
        TAG_RUN_ID,
        TAG_MAP_INDEX,
        TAG_IDEMPOTENCY_KEY,
        TAG_CANCELLED,
        TAG_DEFERRED_TRY,
    }
    clash = reserved.intersection(tags)
    if clash:
        raise JobSpecError(f"tag {sorted(clash)[0]!r} is set by airflow-gpu itself; choose another key.")
    if len(tags) + 7 > MAX_TAGS:
        raise JobSpecError(f"tags: at most {MAX_TAGS - 7} tags (AWS Batch allows 50; airflow-gpu uses up to 7).")
    return tags


def seconds(param: str, value: Any, *, minimum: float, hint: str) -> float | None:
    """A duration given as a timedelta or a number of seconds."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JobSpecError(f"{param} must be a timedelta or a number of seconds, got {value!r}. {hint}")
    if value < minimum:
        raise JobSpecError(f"{param} must be at least {minimum:g} s, got {value:g}. {hint}")
    return float(value)


def check_timeout(value: Any) -> int | None:
    s = seconds(
        "timeout",
        value,
        minimum=MIN_ATTEMPT_DURATION_S,
        hint="It becomes the Batch attempt duration, which AWS requires to be at least 60 s.",
    )
    return None if s is None else int(math.ceil(s))


def check_max_queued(value: Any) -> float | None:
    return seconds(
        "max_queued", value, minimum=1, hint="It is how long a job may wait for GPU capacity, e.g. timedelta(hours=1)."
    )


def check_poll_interval(value: Any) -> float:
    s = seconds("poll_interval", value, minimum=0.01, hint="Use e.g. poll_interval=30 (seconds).")
    if s is None:
        raise JobSpecError("poll_interval must be a number of seconds, e.g. poll_interval=30.")
    return s


def check_name(param: str, value: Any, hint: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise JobSpecError(f"{param} must be a non-empty string, got {value!r}. {hint}")
    return value.strip()


def check_job_name(value: Any) -> str | None:
    return (
        None
        if value is None
        else check_name("job_name", value, "Pass a name or leave it out to derive one from dag and task.")
    )


def check_share_identifier(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHARE_IDENTIFIER.fullmatch(value):
        raise JobSpecError(
            f"share_identifier must be 1 to 255 letters and digits (optionally followed by '*'), as AWS Batch "
            f"takes it, got {value!r}. Pass the fair-share identifier the job's usage counts against, e.g. "
            f"share_identifier='recsys', or None for a queue without a fair-share scheduling policy."
        )
    return value


def check_scheduling_priority(value: Any) -> int | None:
    if value is None:
        return None
    return _int(
        "scheduling_priority",
        value,
        0,
        MAX_SCHEDULING_PRIORITY,
        "Within a share of a fair-share queue Batch starts higher priorities first; None keeps the definition's.",
    )


#: One check (and so one hint) per parameter JobSpec.build takes, in the order they are checked. Which
#: of them a task may template, and what else a job request holds, is declared in airflow_gpu/job_request.py.
FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "job_queue": lambda v: check_name("job_queue", v, "Pass the Batch job queue name or ARN."),
    "job_definition": lambda v: check_name("job_definition", v, "Pass the job definition name, name:revision or ARN."),
    "job_name": check_job_name,
    "tags": check_tags,
    "command": check_command,
    "environment": check_environment,
    "gpus": check_gpus,
    "vcpus": check_vcpus,
    "memory_mib": check_memory_mib,
    "parameters": check_parameters,
    "retry_attempts": check_retry_attempts,
    "timeout": check_timeout,
    "share_identifier": check_share_identifier,
    "scheduling_priority": check_scheduling_priority,
}

# Left as None for the backend to decide: Batch refuses it (AwsBatchBackend.submit), a local process needs neither.
_LEFT_TO_BACKEND = ("job_queue", "job_definition")
# The JobSpec attribute of a parameter whose name differs.
_ATTRIBUTE = {"job_queue": "queue", "job_definition": "definition", "job_name": "name", "timeout": "timeout_s"}


def holds_template(value: Any) -> bool:
    """A value, or a list's or mapping's member, that Airflow will still render."""
    if is_template(value):
        return True
    if isinstance(value, Mapping):
        return any(is_template(k) or is_template(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(is_template(v) for v in value)
    return False


# -- the spec -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """One GPU job, fully checked. Build it with :meth:`build`, which names the bad parameter."""

    name: str
    queue: str | None  # None only for backends without queues (JobBackend.needs_queue)
    definition: str | None
    identity: TaskIdentity
    command: tuple[str, ...] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    gpus: int = 1
    vcpus: int | None = None
    memory_mib: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    parameters: Mapping[str, str] = field(default_factory=dict)
    retry_attempts: int = 3
    timeout_s: int | None = None
    share_identifier: str | None = None  # a fair-share queue's share; None: the queue has no fair-share policy
    scheduling_priority: int | None = None  # within the share; None: the job definition's

    @classmethod
    def build(cls, *, identity: TaskIdentity, **given: Any) -> JobSpec:
        """Check each parameter given (FIELD_CHECKS names them) and build the spec; the first bad one
        raises a JobSpecError naming it. A parameter left out keeps JobSpec's default."""
        unknown = sorted(set(given) - set(FIELD_CHECKS))
        if unknown:
            raise TypeError(f"JobSpec.build() got an unexpected keyword argument {unknown[0]!r}")
        values = {
            _ATTRIBUTE.get(param, param): check(given[param])
            for param, check in FIELD_CHECKS.items()
            if param in given and not (param in _LEFT_TO_BACKEND and given[param] is None)
        }
        base = values.pop("name", None) or f"{identity.dag_id}-{identity.task_id}"
        return cls(
            name=job_name_for(base, identity),
            queue=values.pop("queue", None),
            definition=values.pop("definition", None),
            identity=identity,
            tags={**values.pop("tags", {}), **identity.tags()},
            **values,
        )

    @property
    def idempotency_key(self) -> str:
        return self.identity.idempotency_key

    def resource_requirements(self) -> list[dict[str, str]]:
        """GPU, VCPU and MEMORY as Batch container overrides; unset ones keep the job definition's."""
        out = []
        if self.gpus:
            out.append({"type": "GPU", "value": str(self.gpus)})
        if self.vcpus is not None:
            out.append({"type": "VCPU", "value": str(self.vcpus)})
        if self.memory_mib is not None:
            out.append({"type": "MEMORY", "value": str(self.memory_mib)})
        return out

    def retry_strategy(self) -> dict[str, Any]:
        """Retry spot reclaims, exit on everything else.

        Batch evaluates ``evaluateOnExit`` in order and retries when nothing
        matches, so the catch-all EXIT rules are what stop an application error
        (a bad input, an OOM) from burning GPU hours on identical retries. A
        reclaimed spot host reports a status reason starting with ``Host EC2``.
        """
        return {
            "attempts": self.retry_attempts,
            "evaluateOnExit": [
                {"onStatusReason": "Host EC2*", "action": "RETRY"},
                {"onStatusReason": "*", "action": "EXIT"},
                {"onReason": "*", "action": "EXIT"},
                {"onExitCode": "*", "action": "EXIT"},
            ],
        }
