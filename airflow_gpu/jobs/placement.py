"""Why a RUNNABLE job does not start: AWS Batch's "blocked queue" reasons, parsed once.

When the job at the head of a queue cannot be placed, AWS Batch writes a reason into the
job's ``statusReason`` while it stays RUNNABLE, as ``CATEGORY:CODE - message`` (for
example ``MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement ...``).
A MISCONFIGURATION never clears by waiting: the job would sit until ``max_queued`` (or for
ever) and block every job behind it, so the watcher fails it at once. A CAPACITY reason
(and anything else) may clear when instances free up, so the job keeps waiting and the
reason is logged each time it changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MISCONFIGURATION = "MISCONFIGURATION"
CAPACITY = "CAPACITY"

# "CATEGORY:CODE - message"; AWS has used both a hyphen and an en dash as the separator.
_REASON = re.compile(r"^\s*([A-Z_]+):([A-Z0-9_]+)\s*(?:[-\u2013]\s*(.*))?$", re.DOTALL)

# What to change, per code. The codes are the ones AWS Batch documents for blocked jobs.
_FIXES = {
    "JOB_RESOURCE_REQUIREMENT": (
        "no instance type of the queue's compute environments has the GPUs, vCPUs or memory the job asks for; "
        "lower gpus/vcpus/memory_mib, or add a bigger instance type (batch-setup: compute.instance_types)"
    ),
    "COMPUTE_ENVIRONMENT_MAX_RESOURCE": (
        "the job needs more vCPUs than the compute environments' maxvCpus allows; "
        "raise maxvCpus (batch-setup: compute.max_vcpus) or ask for fewer vcpus"
    ),
    "EC2_INSTANCE_CONFIGURATION_UNSUPPORTED": (
        "the compute environment's instances cannot run this job (instance type, AMI or launch template); "
        "use GPU instance types with the ECS_AL2023_NVIDIA image type, as batch-setup configures them"
    ),
    "SERVICE_ROLE_PERMISSIONS": (
        "the compute environment's Batch service role lacks permissions; use the AWSServiceRoleForBatch "
        "service-linked role (aws iam create-service-linked-role --aws-service-name batch.amazonaws.com)"
    ),
}
_GENERIC_FIX = "fix the job queue's compute environments (see AWS Batch's 'Jobs stuck in a RUNNABLE status')"


@dataclass(frozen=True, slots=True)
class BlockedReason:
    """A RUNNABLE job's blocked reason, as AWS Batch gave it."""

    category: str  # MISCONFIGURATION, CAPACITY, ...
    code: str  # JOB_RESOURCE_REQUIREMENT, INSUFFICIENT_INSTANCE_CAPACITY, ...
    message: str  # AWS's full statusReason, kept verbatim

    @property
    def key(self) -> str:
        """``CATEGORY:CODE``, the value ``jobStateTimeLimitActions`` matches on."""
        return f"{self.category}:{self.code}"

    @property
    def never_starts(self) -> bool:
        """True when waiting cannot help: the job can only fail, and it blocks the queue meanwhile."""
        return self.category == MISCONFIGURATION

    @property
    def fix(self) -> str:
        return _FIXES.get(self.code, _GENERIC_FIX)


def parse_blocked(status: str, status_reason: str | None) -> BlockedReason | None:
    """The blocked reason of a RUNNABLE job, or None (not RUNNABLE, no reason, or not a blocked reason)."""
    if status != "RUNNABLE" or not status_reason:
        return None
    match = _REASON.match(status_reason)
    if match is None:
        return None
    return BlockedReason(category=match.group(1), code=match.group(2), message=status_reason.strip())


def never_starts_reason(blocked: BlockedReason) -> str:
    """The failure reason of a job terminated because it can never start: AWS's reason, then the fix."""
    return f"the job can never start: AWS Batch reports {blocked.message}; {blocked.fix}. airflow-gpu terminated it"


def waiting_line(job_id: str, status: str, blocked: BlockedReason | None) -> str:
    """One log line per change of a live job's state: the status, and while blocked, why."""
    if blocked is None:
        return f"Job {job_id} is {status}"
    return f"Job {job_id} is {status}, waiting: AWS Batch reports {blocked.message}"
