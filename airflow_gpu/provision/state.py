"""Read-only look-ups of what exists in AWS now. Nothing here writes."""

from __future__ import annotations

from typing import Any

from .aws import Clients, call, paginate

GONE = ("DELETED",)


def compute_environment(clients: Clients, name: str) -> dict[str, Any] | None:
    found = call(
        clients.batch,
        "describe_compute_environments",
        f"describing compute environment {name}",
        computeEnvironments=[name],
    )["computeEnvironments"]
    live = [c for c in found if c.get("computeEnvironmentName") == name and c.get("status") not in GONE]
    return live[0] if live else None


def job_queue(clients: Clients, name: str) -> dict[str, Any] | None:
    found = call(clients.batch, "describe_job_queues", f"describing job queue {name}", jobQueues=[name])["jobQueues"]
    live = [q for q in found if q.get("jobQueueName") == name and q.get("status") not in GONE]
    return live[0] if live else None


def all_job_queues(clients: Clients) -> list[dict[str, Any]]:
    return [
        q
        for q in paginate(clients.batch, "describe_job_queues", "jobQueues", "listing job queues")
        if q.get("status") not in GONE
    ]


def active_job_definitions(clients: Clients, name: str) -> list[dict[str, Any]]:
    """Every ACTIVE revision of ``name``, oldest first."""
    found = paginate(
        clients.batch,
        "describe_job_definitions",
        "jobDefinitions",
        f"describing job definition {name}",
        jobDefinitionName=name,
        status="ACTIVE",
    )
    return sorted(
        (d for d in found if d.get("jobDefinitionName") == name and d.get("status") == "ACTIVE"),
        key=lambda d: int(d["revision"]),
    )


def log_group(clients: Clients, name: str) -> dict[str, Any] | None:
    groups = paginate(
        clients.logs, "describe_log_groups", "logGroups", f"describing log group {name}", logGroupNamePrefix=name
    )
    exact = [g for g in groups if g.get("logGroupName") == name]
    return exact[0] if exact else None


LIVE_JOB_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")


def live_job_ids(clients: Clients, queue: str, limit: int = 5) -> list[str]:
    """Up to ``limit`` jobs still queued or running in ``queue`` (deleting a queue terminates them)."""
    ids: list[str] = []
    for status in LIVE_JOB_STATES:
        page = call(
            clients.batch,
            "list_jobs",
            f"listing {status} jobs in {queue}",
            jobQueue=queue,
            jobStatus=status,
            maxResults=limit,
        )
        ids.extend(j["jobId"] for j in page.get("jobSummaryList", []))
        if len(ids) >= limit:
            break
    return ids[:limit]
