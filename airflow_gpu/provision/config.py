"""The batch-setup config file: TOML in, a validated frozen config out, or every problem at once.

Validation happens before any AWS call, so a typo never leaves half a set-up behind.
Each problem names the key (``compute.instance_types[1]``), what is wrong with it,
and what to write instead.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

from .errors import ConfigError
from .instances import INSTANCE_TYPES, InstanceType, UnsupportedInstanceType, resolve, supported_summary

PROVISIONING = ("spot", "on-demand")
# BEST_FIT is left out on purpose: it blocks in-place (infrastructure) updates and never
# exceeds maxvCpus, so a job bigger than the last free slot waits forever.
ALLOCATION_STRATEGIES = {
    "spot": ("SPOT_PRICE_CAPACITY_OPTIMIZED", "SPOT_CAPACITY_OPTIMIZED", "BEST_FIT_PROGRESSIVE"),
    "on-demand": ("BEST_FIT_PROGRESSIVE",),
}
DEFAULT_ALLOCATION = {"spot": "SPOT_PRICE_CAPACITY_OPTIMIZED", "on-demand": "BEST_FIT_PROGRESSIVE"}

# The values CloudWatch Logs accepts for PutRetentionPolicy.
RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)

SERVICE_LINKED_ROLE_NAME = "AWSServiceRoleForBatch"

_ACCOUNT_ARN = r"arn:aws(?:-[a-z]+)*:iam::\d{12}:"
_ROLE_ARN = re.compile(_ACCOUNT_ARN + r"role/[\w+=,.@/-]+$")
_PROFILE_ARN = re.compile(_ACCOUNT_ARN + r"instance-profile/[\w+=,.@/-]+$")
_PROFILE_NAME = re.compile(r"[\w+=,.@-]{1,128}$")
_SUBNET = re.compile(r"subnet-[0-9a-f]{8,17}$")
_SECURITY_GROUP = re.compile(r"sg-[0-9a-f]{8,17}$")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+$")
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
_LOG_GROUP = re.compile(r"[.\-_/#A-Za-z0-9]{1,512}$")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"<[^<>]*>")

_EXAMPLE_TYPES = "g5.xlarge, g6.xlarge, g6e.xlarge, p4d.24xlarge or p5.48xlarge"


@dataclass(frozen=True)
class ComputeConfig:
    instance_types: tuple[str, ...]
    max_vcpus: int
    provisioning: str
    allocation_strategy: str
    bid_percentage: int | None
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    instance_role: str
    service_role: str

    @property
    def batch_type(self) -> str:
        return "SPOT" if self.provisioning == "spot" else "EC2"


@dataclass(frozen=True)
class JobConfig:
    image: str
    job_role: str
    vcpus: int
    memory_mib: int
    gpus: int
    timeout_seconds: int
    retry_attempts: int
    command: tuple[str, ...] | None
    environment: dict[str, str]
    shared_memory_mib: int | None = None


@dataclass(frozen=True)
class LogsConfig:
    group: str
    retention_days: int
    stream_prefix: str


# The blocked reasons AWS Batch can act on by itself (jobStateTimeLimitActions) that waiting never clears.
MISCONFIGURATION_REASONS = (
    "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE",
    "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
    "MISCONFIGURATION:EC2_INSTANCE_CONFIGURATION_UNSUPPORTED",
)
NO_CAPACITY_REASON = "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY"
# AWS accepts maxTimeSeconds from 600 to 86400.
TIME_LIMIT_RANGE = (600, 86400)


@dataclass(frozen=True)
class QueueConfig:
    """What the job queue does with jobs blocked at its head (its jobStateTimeLimitActions).

    A blocked job at the head of a queue holds up every job behind it. airflow-gpu's watcher
    fails a misconfigured job at once, but only while something waits for it; the queue's own
    action also catches jobs nobody watches (a stopped triggerer, ``airflow-gpu submit``).
    """

    # Seconds before AWS cancels a job blocked by a MISCONFIGURATION reason; None: never.
    cancel_misconfigured_after_seconds: int | None = 600
    # Seconds before AWS cancels a job waiting for instance capacity; None: never (max_queued decides).
    cancel_no_capacity_after_seconds: int | None = None


@dataclass(frozen=True)
class BatchSetupConfig:
    """Everything batch-setup needs, checked. Resource names derive from ``prefix``."""

    prefix: str
    region: str
    compute: ComputeConfig
    job: JobConfig
    logs: LogsConfig
    tags: dict[str, str]
    queue: QueueConfig = QueueConfig()
    source: str = "config"
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def compute_environment_name(self) -> str:
        return f"{self.prefix}-ce"

    @property
    def job_queue_name(self) -> str:
        return f"{self.prefix}-queue"

    @property
    def job_definition_name(self) -> str:
        return f"{self.prefix}-worker"


def load_config(path: str | Path, *, region: str | None = None) -> BatchSetupConfig:
    """Read and validate a batch-setup TOML file; ``region`` overrides the file's."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the config file ({exc.strerror}); pass --config PATH"]) from None
    return parse_config(text, source=str(path), region=region)


def parse_config(text: str, *, source: str = "config", region: str | None = None) -> BatchSetupConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    return _Validator(source).validate(data, region_override=region)


class _Table:
    """Typed reads from one TOML table that record problems instead of raising."""

    def __init__(self, data: Any, where: str, problems: list[str], known: tuple[str, ...]) -> None:
        self.where = where
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(f"{where} must be a table ([{where}]), not {type(data).__name__}")
            data = {}
        self.data = data
        for key in data:
            if key not in known:
                problems.append(
                    f"{self.key(key)} is not a known key; the keys of {where or 'the top level'} are: {', '.join(known)}"
                )

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def problem(self, name: str, message: str) -> None:
        self.problems.append(f"{self.key(name)} {message}")

    def _get(self, name: str, required: bool, hint: str) -> Any:
        value = self.data.get(name)
        if value is None and required:
            self.problem(name, f"is missing; {hint}")
        return value

    def string(
        self,
        name: str,
        *,
        hint: str,
        required: bool = True,
        default: str | None = None,
        pattern: re.Pattern | None = None,
        shape: str = "",
    ) -> str | None:
        value = self._get(name, required, hint)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            self.problem(name, f"must be a non-empty string; {hint}")
            return default
        placeholder = _PLACEHOLDER.search(value)
        if placeholder:
            self.problem(name, f"= {value!r} still holds a placeholder {placeholder.group(0)}; {hint}")
            return default
        if pattern is not None and not pattern.match(value):
            self.problem(name, f"= {value!r} is not {shape}; {hint}")
            return default
        return value

    def integer(
        self,
        name: str,
        *,
        hint: str,
        low: int,
        high: int | None = None,
        required: bool = True,
        default: int | None = None,
    ) -> int | None:
        value = self._get(name, required, hint)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(name, f"= {value!r} must be a whole number; {hint}")
            return default
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.problem(name, f"= {value} must be {bounds}; {hint}")
            return default
        return value

    def strings(
        self, name: str, *, hint: str, required: bool = True, pattern: re.Pattern | None = None, shape: str = ""
    ) -> tuple[str, ...] | None:
        value = self._get(name, required, hint)
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            self.problem(name, f"must be a non-empty list of strings; {hint}")
            return None
        good = True
        for i, item in enumerate(value):
            label = f"{name}[{i}]"
            if not isinstance(item, str) or not item:
                self.problem(label, f"= {item!r} must be a non-empty string; {hint}")
                good = False
            elif _PLACEHOLDER.search(item):
                self.problem(label, f"= {item!r} still holds a placeholder; {hint}")
                good = False
            elif pattern is not None and not pattern.match(item):
                self.problem(label, f"= {item!r} is not {shape}; {hint}")
                good = False
        if len(set(value)) != len(value):
            self.problem(name, "lists the same value twice; list each once")
            good = False
        return tuple(value) if good else None

    def mapping(self, name: str, *, hint: str) -> dict[str, str] | None:
        value = self.data.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            self.problem(name, f"must be a table of strings; {hint}")
            return None
        return dict(value)


class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def validate(self, data: dict[str, Any], region_override: str | None) -> BatchSetupConfig:
        top = _Table(data, "", self.problems, ("prefix", "region", "compute", "job", "logs", "queue", "tags"))
        prefix = top.string(
            "prefix",
            pattern=_PREFIX,
            shape="a name prefix (letters, digits, - and _, up to 100, starting with a letter or digit)",
            hint='set prefix = "airflow-gpu"; resources are named <prefix>-ce, <prefix>-queue, <prefix>-worker',
        )
        if region_override is not None:
            region = region_override if _REGION.match(region_override) else None
            if region is None:
                self.problems.append(f"--region {region_override!r} is not an AWS region such as us-east-1")
        else:
            region = top.string(
                "region", pattern=_REGION, shape="an AWS region", hint='set region = "us-east-1" or pass --region'
            )

        compute = self._compute(
            _Table(
                data.get("compute"),
                "compute",
                self.problems,
                (
                    "instance_types",
                    "max_vcpus",
                    "provisioning",
                    "allocation_strategy",
                    "bid_percentage",
                    "subnets",
                    "security_groups",
                    "instance_role",
                    "service_role",
                ),
            )
        )
        job = self._job(
            _Table(
                data.get("job"),
                "job",
                self.problems,
                (
                    "image",
                    "job_role",
                    "vcpus",
                    "memory_mib",
                    "gpus",
                    "timeout_seconds",
                    "retry_attempts",
                    "command",
                    "environment",
                    "shared_memory_mib",
                ),
            )
        )
        logs = self._logs(
            _Table(data.get("logs"), "logs", self.problems, ("group", "retention_days", "stream_prefix")), prefix
        )
        queue = self._queue(
            _Table(
                data.get("queue"),
                "queue",
                self.problems,
                (
                    "cancel_misconfigured_after_seconds",
                    "cancel_no_capacity_after_seconds",
                ),
            )
        )
        tags = self._tags(data.get("tags"))

        if compute is not None and job is not None:
            self._check_fit(compute, job)
        if self.problems:
            raise ConfigError(self.source, self.problems)
        assert prefix and region and compute and job and logs and tags is not None
        return BatchSetupConfig(
            prefix=prefix,
            region=region,
            compute=compute,
            job=job,
            logs=logs,
            tags=tags,
            queue=queue,
            source=self.source,
            warnings=tuple(self.warnings),
        )

    # -- [compute] -------------------------------------------------------------
    def _compute(self, t: _Table) -> ComputeConfig | None:
        before = len(self.problems)
        types = t.strings(
            "instance_types",
            hint=f'list GPU instance types or families, e.g. ["g6.xlarge", "g5.xlarge"]; supported: {supported_summary()}',
        )
        if types:
            for i, name in enumerate(types):
                try:
                    resolve(name)
                except UnsupportedInstanceType as exc:
                    t.problem(f"instance_types[{i}]", f"= {name!r}: {exc}. Use GPU types such as {_EXAMPLE_TYPES}")
        max_vcpus = t.integer(
            "max_vcpus", low=1, high=1_000_000, hint="the most vCPUs the compute environment may run at once, e.g. 64"
        )
        provisioning = t.string("provisioning", required=False, default="spot", hint='write "spot" or "on-demand"')
        if provisioning not in PROVISIONING:
            t.problem("provisioning", f'= {provisioning!r} must be "spot" or "on-demand"')
            provisioning = None
        allocation = t.string("allocation_strategy", required=False, hint="leave it out for the default")
        if provisioning is not None:
            allowed = ALLOCATION_STRATEGIES[provisioning]
            if allocation is None:
                allocation = DEFAULT_ALLOCATION[provisioning]
            elif allocation not in allowed:
                extra = " (BEST_FIT blocks in-place updates)" if allocation == "BEST_FIT" else ""
                t.problem(
                    "allocation_strategy",
                    f"= {allocation!r} is not allowed with {provisioning} instances{extra}; use one of {', '.join(allowed)}",
                )
        bid = t.integer(
            "bid_percentage",
            required=False,
            low=1,
            high=100,
            hint="the most to pay for Spot as a percentage of On-Demand, e.g. 100",
        )
        if bid is not None and provisioning == "on-demand":
            t.problem("bid_percentage", 'applies to spot only; remove it or set provisioning = "spot"')
        subnets = t.strings(
            "subnets",
            pattern=_SUBNET,
            shape="a subnet id (subnet-0123456789abcdef0)",
            hint="list the ids of private subnets with a route to ECR, S3 and CloudWatch Logs",
        )
        groups = t.strings(
            "security_groups",
            pattern=_SECURITY_GROUP,
            shape="a security group id (sg-0123456789abcdef0)",
            hint="list security groups that allow outbound HTTPS",
        )
        instance_role = t.string(
            "instance_role",
            hint='give the ECS instance profile, e.g. "arn:aws:iam::123456789012:instance-profile/ecsInstanceRole"',
        )
        if instance_role is not None and not (_PROFILE_ARN.match(instance_role) or _PROFILE_NAME.match(instance_role)):
            if ":role/" in instance_role:
                t.problem(
                    "instance_role",
                    f"= {instance_role!r} is a role; AWS Batch wants the instance profile that holds it (arn:aws:iam::<account>:instance-profile/<name>)",
                )
            else:
                t.problem("instance_role", f"= {instance_role!r} is not an instance profile ARN or name")
            instance_role = None
        service_role = t.string(
            "service_role",
            pattern=_ROLE_ARN,
            shape="an IAM role ARN",
            hint=f"use the service-linked role arn:aws:iam::<account>:role/aws-service-role/batch.amazonaws.com/{SERVICE_LINKED_ROLE_NAME}",
        )
        if service_role is not None and not service_role.endswith("/" + SERVICE_LINKED_ROLE_NAME):
            self.warnings.append(
                f"compute.service_role is not the {SERVICE_LINKED_ROLE_NAME} service-linked role: AWS can then change only "
                "max_vcpus in place, and any other compute change needs a new compute environment"
            )
        if len(self.problems) > before:
            return None
        assert (
            types
            and max_vcpus
            and provisioning
            and allocation
            and subnets
            and groups
            and instance_role
            and service_role
        )
        return ComputeConfig(
            types, max_vcpus, provisioning, allocation, bid, subnets, groups, instance_role, service_role
        )

    # -- [job] -----------------------------------------------------------------
    def _job(self, t: _Table) -> JobConfig | None:
        before = len(self.problems)
        image = t.string(
            "image",
            hint='give the worker image URI, e.g. "123456789012.dkr.ecr.us-east-1.amazonaws.com/airflow-gpu-worker:0.1.0"',
        )
        if image is not None:
            if any(c.isspace() for c in image):
                t.problem("image", f"= {image!r} contains whitespace; give an image URI")
            elif image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
                self.warnings.append(
                    "job.image has no fixed tag: rebuilding the image under the same tag changes what jobs run "
                    "without a new job-definition revision; pin a version tag or a digest"
                )
        job_role = t.string(
            "job_role",
            pattern=_ROLE_ARN,
            shape="an IAM role ARN",
            hint='give the role the worker runs as (S3 read/write), e.g. "arn:aws:iam::123456789012:role/airflow-gpu-job"',
        )
        vcpus = t.integer("vcpus", low=1, high=192, hint="the vCPUs each job reserves, e.g. 4")
        memory = t.integer(
            "memory_mib", low=512, high=4 * 1024 * 1024, hint="the memory each job reserves in MiB, e.g. 15000"
        )
        gpus = t.integer(
            "gpus", low=1, high=8, hint="the GPUs each job reserves, usually 1 (the ALS worker uses one GPU)"
        )
        timeout = t.integer(
            "timeout_seconds",
            required=False,
            default=4 * 3600,
            low=60,
            high=14 * 24 * 3600,
            hint="the longest one attempt may run, in seconds (at least 60)",
        )
        attempts = t.integer(
            "retry_attempts",
            required=False,
            default=3,
            low=1,
            high=10,
            hint="attempts per job, 1 to 10; only Spot reclaims (Host EC2...) are retried",
        )
        command = None
        if t.data.get("command") is not None:
            command = t.strings(
                "command", required=False, hint='an argv list for the image\'s entrypoint, e.g. ["als", "--help"]'
            )
        shm = t.integer(
            "shared_memory_mib",
            required=False,
            low=64,
            high=1024 * 1024,
            hint="the size of /dev/shm in MiB (Docker's default is 64), e.g. 2048",
        )
        if shm is not None and memory is not None and shm >= memory:
            t.problem(
                "shared_memory_mib",
                f"= {shm} must be below job.memory_mib = {memory}: /dev/shm is part of the job's memory",
            )
        env = t.mapping("environment", hint='e.g. environment = { LOG_LEVEL = "INFO" }')
        if env:
            for name in env:
                if not _ENV_NAME.match(name):
                    t.problem(f"environment.{name}", "is not a valid environment variable name")
                elif name.startswith("AWS_BATCH"):
                    t.problem(f"environment.{name}", "uses the AWS_BATCH prefix, which AWS Batch reserves; rename it")
        if len(self.problems) > before:
            return None
        assert image and job_role and vcpus and memory and gpus and timeout and attempts and env is not None
        return JobConfig(image, job_role, vcpus, memory, gpus, timeout, attempts, command, env, shm)

    # -- [logs] ----------------------------------------------------------------
    def _logs(self, t: _Table, prefix: str | None) -> LogsConfig | None:
        before = len(self.problems)
        default_group = f"/aws/batch/{prefix}" if prefix else None
        group = t.string(
            "group",
            required=False,
            default=default_group,
            pattern=_LOG_GROUP,
            shape="a CloudWatch log group name",
            hint='e.g. "/aws/batch/airflow-gpu"',
        )
        retention = t.integer("retention_days", required=False, default=30, low=1, hint="e.g. 30")
        if retention is not None and retention not in RETENTION_DAYS:
            t.problem(
                "retention_days",
                f"= {retention} is not a value CloudWatch Logs accepts; use one of {', '.join(map(str, RETENTION_DAYS))}",
            )
        stream_prefix = t.string("stream_prefix", required=False, default=prefix, hint='e.g. "airflow-gpu"')
        if stream_prefix is not None and (":" in stream_prefix or "*" in stream_prefix):
            t.problem("stream_prefix", "may not contain ':' or '*'")
        if len(self.problems) > before or group is None or stream_prefix is None:
            return None
        return LogsConfig(group, retention or 30, stream_prefix)

    # -- [queue] ---------------------------------------------------------------
    def _queue(self, t: _Table) -> QueueConfig:
        low, high = TIME_LIMIT_RANGE

        def limit(name: str, default: int | None, what: str) -> int | None:
            value = t.data.get(name)
            if value == 0 and not isinstance(value, bool):
                return None  # 0 switches the action off
            return t.integer(
                name,
                required=False,
                default=default,
                low=low,
                high=high,
                hint=f"seconds a job may stay RUNNABLE {what} before AWS cancels it ({low}-{high}), or 0 for never",
            )

        return QueueConfig(
            cancel_misconfigured_after_seconds=limit(
                "cancel_misconfigured_after_seconds", 600, "blocked by a misconfiguration"
            ),
            cancel_no_capacity_after_seconds=limit(
                "cancel_no_capacity_after_seconds", None, "for want of instance capacity"
            ),
        )

    # -- [tags] ----------------------------------------------------------------
    def _tags(self, data: Any) -> dict[str, str] | None:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problems.append('tags must be a table of strings ([tags] with key = "value" lines)')
            return None
        good = True
        for key, value in data.items():
            if not isinstance(value, str):
                self.problems.append(f"tags.{key} = {value!r} must be a string")
                good = False
            elif key.lower().startswith("aws:") or len(key) > 128 or len(value) > 256:
                self.problems.append(
                    f"tags.{key}: keys may not start with 'aws:' and are at most 128 characters, values 256"
                )
                good = False
        if len(data) > 40:
            self.problems.append(
                f"tags has {len(data)} entries; AWS allows 50 per resource and batch-setup adds its own, so keep it to 40"
            )
            good = False
        return dict(data) if good else None

    # -- sizes -----------------------------------------------------------------
    def _check_fit(self, compute: ComputeConfig, job: JobConfig) -> None:
        """A job must fit on at least one listed instance type, or it would wait in RUNNABLE forever."""
        candidates: list[InstanceType] = [t for name in compute.instance_types for t in resolve(name)]
        fitting = [t for t in candidates if t.fits(job.gpus, job.vcpus, job.memory_mib)]
        if not fitting:
            need = f"{job.gpus} GPU(s), {job.vcpus} vCPUs and {job.memory_mib} MiB"
            reasons = []
            for t in candidates[:6]:
                short = []
                if job.gpus > t.gpus:
                    short.append(f"job.gpus {job.gpus} > {t.gpus}")
                if job.vcpus > t.vcpus:
                    short.append(f"job.vcpus {job.vcpus} > {t.vcpus}")
                if job.memory_mib > t.job_memory_mib:
                    short.append(
                        f"job.memory_mib {job.memory_mib} > ~{t.job_memory_mib} MiB left for jobs of {t.memory_gib} GiB"
                    )
                reasons.append(f"{t.name}: {', '.join(short)}")
            bigger = _smallest_fit(job, compute.instance_types)
            fix = (
                f"lower job.vcpus/memory_mib/gpus or add a larger type such as {bigger}"
                if bigger
                else "lower job.vcpus/memory_mib/gpus"
            )
            self.problems.append(
                f"job needs {need}, which no type in compute.instance_types offers ({'; '.join(reasons)}); {fix}"
            )
        else:
            unused = [
                name
                for name in compute.instance_types
                if not any(t.fits(job.gpus, job.vcpus, job.memory_mib) for t in resolve(name))
            ]
            if unused:
                self.warnings.append(
                    f"compute.instance_types {', '.join(unused)} cannot hold one job "
                    f"({job.gpus} GPU, {job.vcpus} vCPUs, {job.memory_mib} MiB); Batch will never launch them for this job definition"
                )
        if job.vcpus > compute.max_vcpus:
            self.problems.append(
                f"compute.max_vcpus = {compute.max_vcpus} is below job.vcpus = {job.vcpus}, so no job could ever start; raise compute.max_vcpus"
            )


def _smallest_fit(job: JobConfig, listed: tuple[str, ...] = ()) -> str | None:
    """The smallest type that holds the job, preferring the families already listed."""
    families = {name.split(".", 1)[0] for name in listed}
    fits = [t for t in INSTANCE_TYPES.values() if t.fits(job.gpus, job.vcpus, job.memory_mib)]
    preferred = [t for t in fits if t.name.split(".", 1)[0] in families] or fits
    if not preferred:
        return None
    return min(preferred, key=lambda t: (t.gpus, t.vcpus, t.memory_gib, t.name)).name
