"""Plan a set-up or a tear-down from read-only calls: what to create, update, register or delete.

Everything AWS would refuse is found here, before the first write, so a run either
does all of its work or stops having changed nothing. The rules for in-place updates
are AWS Batch's: scaling updates (maxvCpus, minvCpus, state, service role between two
ordinary roles) always work; infrastructure updates (instance types, subnets, security
groups, instance role, allocation strategy, EC2/Spot, AMI type, instance tags) need the
AWSServiceRoleForBatch service-linked role and a BEST_FIT_PROGRESSIVE or SPOT_*
allocation strategy; anything else needs a new compute environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import desired, state
from .actions import (
    Action,
    CreateComputeEnvironment,
    CreateJobQueue,
    CreateLogGroup,
    DeleteComputeEnvironment,
    DeleteJobQueue,
    DeleteLogGroup,
    DeregisterJobDefinition,
    DisableComputeEnvironment,
    DisableJobQueue,
    RegisterJobDefinition,
    SetLogRetention,
    TagBatchResource,
    UpdateComputeEnvironment,
    UpdateJobQueue,
)
from .aws import Clients
from .compare import (
    SCALING_FIELDS,
    Change,
    compute_environment_view,
    diff,
    job_definition_view,
    job_queue_view,
    missing_tags,
)
from .config import SERVICE_LINKED_ROLE_NAME, BatchSetupConfig
from .errors import ProvisionError

INFRASTRUCTURE_UPDATE_STRATEGIES = ("BEST_FIT_PROGRESSIVE", "SPOT_CAPACITY_OPTIMIZED", "SPOT_PRICE_CAPACITY_OPTIMIZED")
NEW_COMPUTE_ENVIRONMENT = "(the new compute environment)"


@dataclass
class Plan:
    config: BatchSetupConfig
    delete: bool
    actions: list[Action] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compute_environment_arn: str | None = None
    job_queue_arn: str | None = None
    job_definition_arn: str | None = None

    @property
    def changes_anything(self) -> bool:
        return bool(self.actions)


def is_service_linked(role_arn: str | None) -> bool:
    return role_arn is not None and role_arn.rstrip("/").endswith("/" + SERVICE_LINKED_ROLE_NAME)


def _managed_by_us(tags: dict[str, str] | None) -> bool:
    return (tags or {}).get(desired.MANAGED_BY_KEY) == desired.MANAGED_BY_VALUE


# -- set-up -------------------------------------------------------------------------------


def plan_setup(cfg: BatchSetupConfig, clients: Clients) -> Plan:
    plan = Plan(cfg, delete=False)
    blockers: list[str] = []
    _plan_log_group(cfg, clients, plan)
    ce_arn = _plan_compute_environment(cfg, clients, plan, blockers)
    _plan_job_queue(cfg, clients, plan, blockers, ce_arn)
    _plan_job_definition(cfg, clients, plan)
    if blockers:
        raise ProvisionError(
            "batch-setup cannot apply this config in place; nothing was changed.\n"
            + "\n".join(f"  - {b}" for b in blockers)
        )
    return plan


def _plan_log_group(cfg: BatchSetupConfig, clients: Clients, plan: Plan) -> None:
    name = cfg.logs.group
    group = state.log_group(clients, name)
    if group is None:
        plan.actions.append(
            CreateLogGroup(
                "log group",
                name,
                "create",
                [Change("retentionInDays", None, cfg.logs.retention_days)],
                request=desired.log_group_request(cfg),
                retention_days=cfg.logs.retention_days,
            )
        )
    elif group.get("retentionInDays") != cfg.logs.retention_days:
        plan.actions.append(
            SetLogRetention(
                "log group",
                name,
                "update",
                [Change("retentionInDays", group.get("retentionInDays"), cfg.logs.retention_days)],
                retention_days=cfg.logs.retention_days,
            )
        )
    else:
        plan.up_to_date.append(f"log group {name}")


def _plan_compute_environment(cfg: BatchSetupConfig, clients: Clients, plan: Plan, blockers: list[str]) -> str | None:
    name = cfg.compute_environment_name
    want = desired.compute_environment_request(cfg)
    ce = state.compute_environment(clients, name)
    if ce is None:
        plan.actions.append(
            CreateComputeEnvironment(
                "compute environment",
                name,
                "create",
                diff({}, compute_environment_view(want)),
                request=want,
            )
        )
        return None
    plan.compute_environment_arn = arn = ce["computeEnvironmentArn"]
    cr = ce.get("computeResources") or {}
    if ce.get("status") == "DELETING":
        blockers.append(
            f"compute environment {name} is being deleted; wait until it is gone, then run batch-setup again"
        )
        return arn
    if ce.get("type") != "MANAGED" or cr.get("type") not in ("EC2", "SPOT"):
        blockers.append(
            f"compute environment {name} exists but is {ce.get('type')} {cr.get('type')}, not a managed EC2/Spot one; "
            "delete it or choose another prefix"
        )
        return arn

    changes = [c for c in diff(compute_environment_view(ce), compute_environment_view(want)) if c.field != "type"]
    infrastructure = [c for c in changes if c.field not in SCALING_FIELDS]
    role_change = next((c for c in changes if c.field == "serviceRole"), None)
    current_role = ce.get("serviceRole")
    how = "scaling update"
    if role_change is not None and is_service_linked(role_change.old) != is_service_linked(role_change.new):
        blockers.append(
            f"compute environment {name}: serviceRole {role_change.old} -> {role_change.new}: AWS cannot switch a compute "
            "environment between the service-linked role and an ordinary role. Keep the current compute.service_role, or "
            "create a new compute environment (another prefix, or --delete first)"
        )
    elif infrastructure:
        how = (
            "infrastructure update: AWS replaces the instances; running jobs get up to "
            f"{_update_grace_minutes(cfg)} minutes to finish"
        )
        fields = ", ".join(c.field.removeprefix("computeResources.") for c in infrastructure)
        strategy = cr.get("allocationStrategy") or "BEST_FIT"
        if role_change is not None:
            blockers.append(
                f"compute environment {name}: {fields} and serviceRole cannot change in one update (AWS changes the "
                "service role only in a scaling update). Change them in two runs, or create a new compute environment"
            )
        elif not is_service_linked(current_role) or strategy not in INFRASTRUCTURE_UPDATE_STRATEGIES:
            why = []
            if not is_service_linked(current_role):
                why.append(
                    f"its service role is {current_role}, not the {SERVICE_LINKED_ROLE_NAME} service-linked role"
                )
            if strategy not in INFRASTRUCTURE_UPDATE_STRATEGIES:
                why.append(f"its allocation strategy is {strategy}")
            blockers.append(
                f"compute environment {name}: {fields} can change in place only with an infrastructure update, which AWS "
                f"refuses here because {' and '.join(why)}. Either keep these values, or replace the compute environment: "
                "run batch-setup --delete and then batch-setup again, or use a new prefix (blue/green)"
            )
    if changes:
        plan.actions.append(
            UpdateComputeEnvironment(
                "compute environment",
                name,
                "update in place",
                changes,
                note=how,
                request=_compute_update_request(
                    name, want, changes, _update_grace_minutes(cfg) if infrastructure else None
                ),
            )
        )
    tags = missing_tags(ce.get("tags"), want["tags"])
    if tags:
        plan.actions.append(
            TagBatchResource(
                "compute environment",
                name,
                "tag",
                tags,
                arn=arn,
                tags={c.field.removeprefix("tags."): c.new for c in tags},
            )
        )
    if not changes and not tags:
        if ce.get("status") == "INVALID":
            blockers.append(
                f"compute environment {name} is INVALID: {ce.get('statusReason') or 'no reason given'}. Fix the cause "
                "(roles, subnets, security groups, quotas) in AWS, then run batch-setup again"
            )
        plan.up_to_date.append(f"compute environment {name}")
    return arn


def _update_grace_minutes(cfg: BatchSetupConfig) -> int:
    """How long an infrastructure update lets running jobs finish: one full attempt (AWS allows 1-7200, default 30)."""
    return max(1, min(7200, -(-cfg.job.timeout_seconds // 60)))


def _compute_update_request(
    name: str, want: dict[str, Any], changes: list[Change], grace_minutes: int | None
) -> dict[str, Any]:
    """UpdateComputeEnvironment with only the changed fields: AWS keeps whatever is left out."""
    request: dict[str, Any] = {"computeEnvironment": name}
    if grace_minutes is not None:
        # AWS's default gives running jobs 30 minutes before replacing their instance; a GPU
        # training attempt may need its whole timeout.
        request["updatePolicy"] = {"terminateJobsOnUpdate": False, "jobExecutionTimeoutMinutes": grace_minutes}
    resources: dict[str, Any] = {}
    for change in changes:
        if change.field == "state":
            request["state"] = want["state"]
        elif change.field == "serviceRole":
            request["serviceRole"] = want["serviceRole"]
        elif change.field.startswith("computeResources."):
            key = change.field.removeprefix("computeResources.")
            # A field the config no longer sets (bidPercentage after a switch to On-Demand)
            # cannot be unset by an update, and AWS ignores it there.
            if key in want["computeResources"]:
                resources[key] = want["computeResources"][key]
    if resources:
        request["computeResources"] = resources
    return request


def _plan_job_queue(
    cfg: BatchSetupConfig, clients: Clients, plan: Plan, blockers: list[str], ce_arn: str | None
) -> None:
    name = cfg.job_queue_name
    ce_ref = ce_arn or NEW_COMPUTE_ENVIRONMENT
    want = desired.job_queue_request(cfg, ce_ref)
    queue = state.job_queue(clients, name)
    if queue is None:
        plan.actions.append(
            CreateJobQueue(
                "job queue",
                name,
                "create",
                diff({}, job_queue_view(want)),
                request=want,
                compute_environment=cfg.compute_environment_name,
            )
        )
        return
    plan.job_queue_arn = queue["jobQueueArn"]
    if queue.get("status") == "DELETING":
        blockers.append(f"job queue {name} is being deleted; wait until it is gone, then run batch-setup again")
        return
    changes = diff(job_queue_view(queue), job_queue_view(want))
    if changes:
        request: dict[str, Any] = {"jobQueue": name}
        for change in changes:
            request[change.field] = want[change.field]
        plan.actions.append(
            UpdateJobQueue(
                "job queue",
                name,
                "update in place",
                changes,
                request=request,
                compute_environment=cfg.compute_environment_name,
            )
        )
    tags = missing_tags(queue.get("tags"), want["tags"])
    if tags:
        plan.actions.append(
            TagBatchResource(
                "job queue",
                name,
                "tag",
                tags,
                arn=queue["jobQueueArn"],
                tags={c.field.removeprefix("tags."): c.new for c in tags},
            )
        )
    if not changes and not tags:
        plan.up_to_date.append(f"job queue {name}")


def _plan_job_definition(cfg: BatchSetupConfig, clients: Clients, plan: Plan) -> None:
    name = cfg.job_definition_name
    want = desired.job_definition_request(cfg)
    revisions = state.active_job_definitions(clients, name)
    latest = revisions[-1] if revisions else None
    if latest is None:
        plan.actions.append(
            RegisterJobDefinition(
                "job definition",
                name,
                "register",
                diff({}, job_definition_view(want)),
                request=want,
            )
        )
        return
    changes = diff(job_definition_view(latest), job_definition_view(want))
    if changes:
        plan.actions.append(
            RegisterJobDefinition(
                "job definition",
                name,
                f"register a new revision (latest is {latest['revision']})",
                changes,
                request=want,
            )
        )
    else:
        plan.job_definition_arn = latest["jobDefinitionArn"]
        plan.up_to_date.append(f"job definition {name}:{latest['revision']}")


# -- tear-down ------------------------------------------------------------------------------


def plan_teardown(cfg: BatchSetupConfig, clients: Clients, *, delete_logs: bool = False) -> Plan:
    """Disable and delete the queue, then the compute environment, then deregister the job definition."""
    plan = Plan(cfg, delete=True)
    blockers: list[str] = []
    queue = state.job_queue(clients, cfg.job_queue_name)
    ce = state.compute_environment(clients, cfg.compute_environment_name)

    for kind, item in (("job queue", queue), ("compute environment", ce)):
        if item is not None and not _managed_by_us(item.get("tags")):
            blockers.append(
                f"{kind} {item.get('jobQueueName') or item.get('computeEnvironmentName')} was not made by batch-setup "
                f"(no {desired.MANAGED_BY_KEY}={desired.MANAGED_BY_VALUE} tag), so batch-setup will not delete it; "
                "delete it yourself or check the prefix"
            )
    if queue is not None:
        live = state.live_job_ids(clients, cfg.job_queue_name)
        if live:
            blockers.append(
                f"job queue {cfg.job_queue_name} still has queued or running jobs ({', '.join(live)}{', ...' if len(live) >= 5 else ''}); "
                "deleting the queue would terminate them. Wait for them to finish or terminate them, then run --delete again"
            )
    if ce is not None:
        others = [
            q["jobQueueName"]
            for q in state.all_job_queues(clients)
            if q.get("jobQueueName") != cfg.job_queue_name
            and any(
                o.get("computeEnvironment") in (ce["computeEnvironmentArn"], ce["computeEnvironmentName"])
                for o in q.get("computeEnvironmentOrder") or []
            )
        ]
        if others:
            blockers.append(
                f"compute environment {cfg.compute_environment_name} also serves job queue(s) {', '.join(others)}; "
                "detach it from them first (AWS refuses to delete a compute environment a queue still uses)"
            )
    if blockers:
        raise ProvisionError(
            "batch-setup --delete stopped before deleting anything.\n" + "\n".join(f"  - {b}" for b in blockers)
        )

    if queue is not None:
        plan.job_queue_arn = queue["jobQueueArn"]
        if queue.get("state") != "DISABLED":
            plan.actions.append(DisableJobQueue("job queue", cfg.job_queue_name, "disable"))
        plan.actions.append(DeleteJobQueue("job queue", cfg.job_queue_name, "delete", note="after it is DISABLED"))
    if ce is not None:
        plan.compute_environment_arn = ce["computeEnvironmentArn"]
        if ce.get("state") != "DISABLED":
            plan.actions.append(
                DisableComputeEnvironment("compute environment", cfg.compute_environment_name, "disable")
            )
        plan.actions.append(
            DeleteComputeEnvironment(
                "compute environment",
                cfg.compute_environment_name,
                "delete",
                note="after the queue is gone and it is DISABLED",
            )
        )
    foreign = []
    for definition in state.active_job_definitions(clients, cfg.job_definition_name):
        revision = f"{cfg.job_definition_name}:{definition['revision']}"
        if not _managed_by_us(definition.get("tags")):
            foreign.append(revision)
            continue
        plan.actions.append(
            DeregisterJobDefinition("job definition", revision, "deregister", arn=definition["jobDefinitionArn"])
        )
    if foreign:
        plan.notes.append(
            f"job definition revision(s) {', '.join(foreign)} were not registered by batch-setup and are kept"
        )
    group = state.log_group(clients, cfg.logs.group)
    if group is not None:
        if delete_logs:
            plan.actions.append(DeleteLogGroup("log group", cfg.logs.group, "delete", note="its job logs go with it"))
        else:
            plan.notes.append(
                f"log group {cfg.logs.group} is kept with its job logs (pass --delete-logs to delete it too)"
            )
    return plan
