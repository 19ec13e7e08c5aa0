"""The write steps of a plan. Each one says what it will do, then does it and waits as AWS requires.

A plan is a list of these, built from read-only calls; ``--dry-run`` prints them and
stops. Executing them in order is safe to interrupt: the next run re-reads AWS and
plans only what is still missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from . import state
from .aws import SETTLING, Clients, WaitPolicy, call, wait_for
from .compare import Change


@dataclass
class Context:
    """What executing actions needs, and the ARNs they learn on the way."""

    clients: Clients
    wait: WaitPolicy
    say: Callable[[str], None]
    compute_environment_arn: str | None = None
    job_queue_arn: str | None = None
    job_definition_arn: str | None = None


@dataclass
class Action:
    resource: str
    name: str
    verb: str
    changes: list[Change] = field(default_factory=list)
    note: str = ""

    def headline(self) -> str:
        return f"{self.resource} {self.name}: {self.verb}" + (f" ({self.note})" if self.note else "")

    def execute(self, ctx: Context) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


def _status(item: dict[str, Any] | None) -> str:
    if item is None:
        return "gone"
    return f"status {item.get('status')}, state {item.get('state')}" + (
        f", reason: {item['statusReason']}" if item.get("statusReason") else ""
    )


def _settled(item: dict[str, Any] | None) -> bool:
    return item is not None and item.get("status") not in SETTLING


def _wait_ce(
    ctx: Context, name: str, what: str, done: Callable[[dict[str, Any] | None], bool]
) -> dict[str, Any] | None:
    return wait_for(
        ctx.wait,
        f"compute environment {name} {what}",
        lambda: state.compute_environment(ctx.clients, name),
        done,
        show=_status,
    )


def _wait_queue(
    ctx: Context, name: str, what: str, done: Callable[[dict[str, Any] | None], bool]
) -> dict[str, Any] | None:
    return wait_for(
        ctx.wait, f"job queue {name} {what}", lambda: state.job_queue(ctx.clients, name), done, show=_status
    )


def _valid(item: dict[str, Any] | None) -> bool:
    return item is not None and item.get("status") == "VALID"


def _gone(item: dict[str, Any] | None) -> bool:
    return item is None


# -- log group -----------------------------------------------------------------------


@dataclass
class CreateLogGroup(Action):
    request: dict[str, Any] = field(default_factory=dict)
    retention_days: int = 30

    def execute(self, ctx: Context) -> None:
        call(ctx.clients.logs, "create_log_group", f"creating log group {self.name}", **self.request)
        call(
            ctx.clients.logs,
            "put_retention_policy",
            f"setting retention of log group {self.name}",
            logGroupName=self.name,
            retentionInDays=self.retention_days,
        )


@dataclass
class SetLogRetention(Action):
    retention_days: int = 30

    def execute(self, ctx: Context) -> None:
        call(
            ctx.clients.logs,
            "put_retention_policy",
            f"setting retention of log group {self.name}",
            logGroupName=self.name,
            retentionInDays=self.retention_days,
        )


@dataclass
class DeleteLogGroup(Action):
    def execute(self, ctx: Context) -> None:
        call(ctx.clients.logs, "delete_log_group", f"deleting log group {self.name}", logGroupName=self.name)


# -- compute environment ---------------------------------------------------------------


@dataclass
class CreateComputeEnvironment(Action):
    request: dict[str, Any] = field(default_factory=dict)

    def execute(self, ctx: Context) -> None:
        out = call(
            ctx.clients.batch, "create_compute_environment", f"creating compute environment {self.name}", **self.request
        )
        ctx.compute_environment_arn = out["computeEnvironmentArn"]
        ctx.say(f"  waiting for compute environment {self.name} to be VALID")
        _wait_ce(ctx, self.name, "to be VALID", _valid)


@dataclass
class UpdateComputeEnvironment(Action):
    request: dict[str, Any] = field(default_factory=dict)

    def execute(self, ctx: Context) -> None:
        # Batch refuses an update while a previous one is still in progress.
        _wait_ce(ctx, self.name, "to finish its current change", _settled)
        out = call(
            ctx.clients.batch, "update_compute_environment", f"updating compute environment {self.name}", **self.request
        )
        ctx.compute_environment_arn = out["computeEnvironmentArn"]


@dataclass
class DisableComputeEnvironment(Action):
    def execute(self, ctx: Context) -> None:
        _wait_ce(ctx, self.name, "to finish its current change", _settled)
        call(
            ctx.clients.batch,
            "update_compute_environment",
            f"disabling compute environment {self.name}",
            computeEnvironment=self.name,
            state="DISABLED",
        )


@dataclass
class DeleteComputeEnvironment(Action):
    def execute(self, ctx: Context) -> None:
        ctx.say(f"  waiting for compute environment {self.name} to be DISABLED")
        _wait_ce(
            ctx, self.name, "to be DISABLED", lambda c: c is None or (_settled(c) and c.get("state") == "DISABLED")
        )
        call(
            ctx.clients.batch,
            "delete_compute_environment",
            f"deleting compute environment {self.name}",
            computeEnvironment=self.name,
        )
        ctx.say(f"  waiting for compute environment {self.name} to be deleted")
        _wait_ce(ctx, self.name, "to be deleted", _gone)


# -- job queue -------------------------------------------------------------------------


@dataclass
class CreateJobQueue(Action):
    request: dict[str, Any] = field(default_factory=dict)
    compute_environment: str = ""

    def execute(self, ctx: Context) -> None:
        # Batch attaches only a VALID compute environment to a queue.
        _wait_ce(ctx, self.compute_environment, "to be VALID", _valid)
        request = dict(self.request)
        request["computeEnvironmentOrder"] = [{"order": 1, "computeEnvironment": ctx.compute_environment_arn}]
        out = call(ctx.clients.batch, "create_job_queue", f"creating job queue {self.name}", **request)
        ctx.job_queue_arn = out["jobQueueArn"]
        ctx.say(f"  waiting for job queue {self.name} to be VALID")
        _wait_queue(ctx, self.name, "to be VALID", _valid)


@dataclass
class UpdateJobQueue(Action):
    request: dict[str, Any] = field(default_factory=dict)
    compute_environment: str = ""

    def execute(self, ctx: Context) -> None:
        _wait_queue(ctx, self.name, "to finish its current change", _settled)
        request = dict(self.request)
        if "computeEnvironmentOrder" in request:
            # Batch attaches only a VALID compute environment to a queue.
            _wait_ce(ctx, self.compute_environment, "to be VALID", _valid)
            request["computeEnvironmentOrder"] = [{"order": 1, "computeEnvironment": ctx.compute_environment_arn}]
        out = call(ctx.clients.batch, "update_job_queue", f"updating job queue {self.name}", **request)
        ctx.job_queue_arn = out["jobQueueArn"]


@dataclass
class DisableJobQueue(Action):
    def execute(self, ctx: Context) -> None:
        _wait_queue(ctx, self.name, "to finish its current change", _settled)
        call(
            ctx.clients.batch,
            "update_job_queue",
            f"disabling job queue {self.name}",
            jobQueue=self.name,
            state="DISABLED",
        )


@dataclass
class DeleteJobQueue(Action):
    def execute(self, ctx: Context) -> None:
        ctx.say(f"  waiting for job queue {self.name} to be DISABLED")
        _wait_queue(
            ctx, self.name, "to be DISABLED", lambda q: q is None or (_settled(q) and q.get("state") == "DISABLED")
        )
        call(ctx.clients.batch, "delete_job_queue", f"deleting job queue {self.name}", jobQueue=self.name)
        ctx.say(f"  waiting for job queue {self.name} to be deleted")
        _wait_queue(ctx, self.name, "to be deleted", _gone)


# -- tags and job definitions ---------------------------------------------------------------


@dataclass
class TagBatchResource(Action):
    arn: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def execute(self, ctx: Context) -> None:
        call(
            ctx.clients.batch,
            "tag_resource",
            f"tagging {self.resource} {self.name}",
            resourceArn=self.arn,
            tags=self.tags,
        )


@dataclass
class RegisterJobDefinition(Action):
    request: dict[str, Any] = field(default_factory=dict)

    def execute(self, ctx: Context) -> None:
        out = call(
            ctx.clients.batch, "register_job_definition", f"registering job definition {self.name}", **self.request
        )
        ctx.job_definition_arn = out["jobDefinitionArn"]


@dataclass
class DeregisterJobDefinition(Action):
    arn: str = ""

    def execute(self, ctx: Context) -> None:
        call(ctx.clients.batch, "deregister_job_definition", f"deregistering {self.arn}", jobDefinition=self.arn)
