"""Carry out a plan, one action at a time, and collect the values a DAG needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .actions import Context
from .aws import Clients, WaitPolicy
from .errors import ProvisionError
from .plan import Plan


@dataclass
class Outputs:
    """What a DAG (or a script) needs from the set-up."""

    region: str
    job_queue: str
    job_queue_arn: str | None
    job_definition: str
    job_definition_arn: str | None
    compute_environment: str
    compute_environment_arn: str | None
    log_group: str
    changed: bool
    dry_run: bool
    delete: bool
    actions: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_actions(plan: Plan) -> list[dict[str, Any]]:
    return [
        {
            "resource": a.resource,
            "name": a.name,
            "action": a.verb,
            "note": a.note or None,
            "changes": [{"field": c.field, "old": c.old, "new": c.new} for c in a.changes],
        }
        for a in plan.actions
    ]


def outputs_of(plan: Plan, ctx: Context | None, *, dry_run: bool) -> Outputs:
    cfg = plan.config
    pick = (lambda learned, planned: learned or planned) if ctx is not None else (lambda _l, planned: planned)
    deleted = plan.delete and not dry_run
    return Outputs(
        region=cfg.region,
        job_queue=cfg.job_queue_name,
        job_queue_arn=None if deleted else pick(ctx and ctx.job_queue_arn, plan.job_queue_arn),
        job_definition=cfg.job_definition_name,
        job_definition_arn=None if deleted else pick(ctx and ctx.job_definition_arn, plan.job_definition_arn),
        compute_environment=cfg.compute_environment_name,
        compute_environment_arn=None
        if deleted
        else pick(ctx and ctx.compute_environment_arn, plan.compute_environment_arn),
        log_group=cfg.logs.group,
        changed=plan.changes_anything and not dry_run,
        dry_run=dry_run,
        delete=plan.delete,
        actions=describe_actions(plan),
    )


def execute(plan: Plan, clients: Clients, wait: WaitPolicy, say: Callable[[str], None]) -> Outputs:
    """Run every action in order. On failure, say what was done so far: a re-run continues from there."""
    ctx = Context(
        clients=clients,
        wait=wait,
        say=say,
        compute_environment_arn=plan.compute_environment_arn,
        job_queue_arn=plan.job_queue_arn,
        job_definition_arn=plan.job_definition_arn,
    )
    done: list[str] = []
    for action in plan.actions:
        say(f"{action.resource} {action.name}: {action.verb} ...")
        try:
            action.execute(ctx)
        except ProvisionError as exc:
            finished = f"Done before the failure: {'; '.join(done)}. " if done else "Nothing was changed. "
            raise ProvisionError(
                f"{exc}\n{finished}Fix the cause and run the same command again; it picks up from here."
            ) from None
        done.append(f"{action.resource} {action.name}: {action.verb}")
    return outputs_of(plan, ctx, dry_run=False)
