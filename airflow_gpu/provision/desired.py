"""What the AWS resources should look like, as the API requests that would create them.

Pure functions of the config: the planner compares them with what AWS reports, and a
test compares the job definition with container/job-definition.json.
"""

from __future__ import annotations

from typing import Any

from airflow_gpu.contract import REQUIREMENTS_CACHE_PATH

from .config import MISCONFIGURATION_REASONS, NO_CAPACITY_REASON, BatchSetupConfig

# Marks what batch-setup made, so --delete never removes a same-named resource someone else owns.
MANAGED_BY_KEY = "airflow-gpu:managed-by"
MANAGED_BY_VALUE = "batch-setup"

# The Amazon Linux 2023 ECS AMI with the NVIDIA driver (>= 580, what CUDA 13 needs).
IMAGE_TYPE = "ECS_AL2023_NVIDIA"

# Retry only when the host went away (a Spot reclaim reads "Host EC2 (instance i-...) terminated.");
# an application error is final, since running the same input again fails the same way.
RETRY_STRATEGY_RULES = [
    {"onStatusReason": "Host EC2*", "action": "RETRY"},
    {"onStatusReason": "*", "action": "EXIT"},
]


def resource_tags(cfg: BatchSetupConfig) -> dict[str, str]:
    return {**cfg.tags, MANAGED_BY_KEY: MANAGED_BY_VALUE}


def compute_environment_request(cfg: BatchSetupConfig) -> dict[str, Any]:
    """CreateComputeEnvironment: managed EC2/Spot GPU capacity that scales to zero when idle."""
    c = cfg.compute
    resources: dict[str, Any] = {
        "type": c.batch_type,
        "allocationStrategy": c.allocation_strategy,
        "minvCpus": 0,  # scale to zero: no GPU instance runs while no job waits
        "desiredvCpus": 0,
        "maxvCpus": c.max_vcpus,
        "instanceTypes": list(c.instance_types),
        "subnets": list(c.subnets),
        "securityGroupIds": list(c.security_groups),
        "instanceRole": c.instance_role,
        "ec2Configuration": [{"imageType": IMAGE_TYPE}],
        # Instance tags, so the GPU hours show up under the same cost tags.
        "tags": resource_tags(cfg),
    }
    if c.batch_type == "SPOT":
        resources["bidPercentage"] = c.bid_percentage or 100
    return {
        "computeEnvironmentName": cfg.compute_environment_name,
        "type": "MANAGED",
        "state": "ENABLED",
        "computeResources": resources,
        "serviceRole": c.service_role,
        "tags": resource_tags(cfg),
    }


def job_queue_request(cfg: BatchSetupConfig, compute_environment_arn: str) -> dict[str, Any]:
    return {
        "jobQueueName": cfg.job_queue_name,
        "state": "ENABLED",
        "priority": 1,
        "computeEnvironmentOrder": [{"order": 1, "computeEnvironment": compute_environment_arn}],
        "jobStateTimeLimitActions": job_state_time_limit_actions(cfg),
        "tags": resource_tags(cfg),
    }


def job_state_time_limit_actions(cfg: BatchSetupConfig) -> list[dict[str, Any]]:
    """Cancel jobs blocked at the head of the queue, so one bad job cannot hold up the rest for ever."""
    q = cfg.queue
    reasons: list[tuple[str, int]] = []
    if q.cancel_misconfigured_after_seconds is not None:
        reasons += [(reason, q.cancel_misconfigured_after_seconds) for reason in MISCONFIGURATION_REASONS]
    if q.cancel_no_capacity_after_seconds is not None:
        reasons.append((NO_CAPACITY_REASON, q.cancel_no_capacity_after_seconds))
    return [{"reason": r, "state": "RUNNABLE", "maxTimeSeconds": t, "action": "CANCEL"} for r, t in reasons]


REQUIREMENTS_VOLUME = "airflow-gpu-requirements"


def job_definition_request(cfg: BatchSetupConfig) -> dict[str, Any]:
    """RegisterJobDefinition for the GPU worker container."""
    j = cfg.job
    container: dict[str, Any] = {
        "image": j.image,
        "jobRoleArn": j.job_role,
        "resourceRequirements": [
            {"type": "GPU", "value": str(j.gpus)},
            {"type": "VCPU", "value": str(j.vcpus)},
            {"type": "MEMORY", "value": str(j.memory_mib)},
        ],
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {
                "awslogs-group": cfg.logs.group,
                "awslogs-region": cfg.region,
                "awslogs-stream-prefix": cfg.logs.stream_prefix,
            },
        },
    }
    # A code bundle's requirements are installed once per host and reused by the jobs after it:
    # the worker finds this host folder at REQUIREMENTS_CACHE_PATH (see airflow_gpu/worker/requirements.py).
    container["volumes"] = [{"name": REQUIREMENTS_VOLUME, "host": {"sourcePath": REQUIREMENTS_CACHE_PATH}}]
    container["mountPoints"] = [
        {"sourceVolume": REQUIREMENTS_VOLUME, "containerPath": REQUIREMENTS_CACHE_PATH, "readOnly": False}
    ]
    if j.shared_memory_mib:
        container["linuxParameters"] = {"sharedMemorySize": j.shared_memory_mib}
    if j.command:
        container["command"] = list(j.command)
    if j.environment:
        container["environment"] = [{"name": k, "value": v} for k, v in sorted(j.environment.items())]
    return {
        "jobDefinitionName": cfg.job_definition_name,
        "type": "container",
        "platformCapabilities": ["EC2"],
        "containerProperties": container,
        "retryStrategy": {"attempts": j.retry_attempts, "evaluateOnExit": [dict(r) for r in RETRY_STRATEGY_RULES]},
        "timeout": {"attemptDurationSeconds": j.timeout_seconds},
        "propagateTags": True,
        "tags": resource_tags(cfg),
    }


def log_group_request(cfg: BatchSetupConfig) -> dict[str, Any]:
    return {"logGroupName": cfg.logs.group, "tags": resource_tags(cfg)}
