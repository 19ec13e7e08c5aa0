"""Where an AWS Batch job ran, and for how long: what its bill needs, read once when it ends.

DescribeJobs gives the job's times, its GPUs and the ECS container instance each attempt ran
on. ECS DescribeContainerInstances turns that instance into an EC2 instance type (its
``ecs.instance-type`` attribute), one call per cluster for all the jobs asked about; Batch
DescribeComputeEnvironments says whether a cluster's instances are Spot or on-demand. Both
answers never change for an instance, so they are cached per process: a triggerer or a
terminal listing a week of jobs asks about each instance once.

Nothing here is on the polling path; a failed lookup leaves the type or market unknown (the
bill then says "cost unknown") rather than failing the task.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from airflow_gpu.jobs.cost import ON_DEMAND, SPOT, JobUsage

if TYPE_CHECKING:
    from airflow_gpu.jobs.aws.backend import AwsBatchBackend

log = logging.getLogger(__name__)

#: DescribeContainerInstances takes up to 100 instances per call.
ECS_BATCH = 100
_SPOT_TYPES = frozenset({"SPOT", "FARGATE_SPOT"})

# (region, container instance ARN) -> (EC2 instance type, ECS cluster ARN); (region, cluster ARN) -> market.
_instance_types: dict[tuple[str, str], tuple[str, str | None]] = {}
_cluster_markets: dict[tuple[str, str], str] = {}
_cache_lock = threading.Lock()


def forget_cached_placements() -> None:
    """For tests: the caches outlive a moto reset, which reuses ARNs."""
    with _cache_lock:
        _instance_types.clear()
        _cluster_markets.clear()


def _ms(value: Any) -> float | None:
    return value / 1000 if isinstance(value, (int, float)) and value else None


def _container_instance(job: dict[str, Any]) -> str | None:
    """The instance of the job's last attempt (a retry may move; the last one is where it ended)."""
    attempts = job.get("attempts") or ()
    for container in ((attempts[-1].get("container") if attempts else None), job.get("container")):
        arn = (container or {}).get("containerInstanceArn")
        if isinstance(arn, str) and arn.startswith("arn:"):
            return arn
    return None


def _gpus(job: dict[str, Any]) -> int:
    for requirement in (job.get("container") or {}).get("resourceRequirements") or ():
        if requirement.get("type") == "GPU":
            try:
                return int(requirement.get("value") or 0)
            except ValueError:
                return 0
    return 0


def run_seconds(job: dict[str, Any]) -> float | None:
    """Seconds the job held an instance, summed over its attempts; 0 for a job that never started."""
    attempts = job.get("attempts") or ()
    spans = [(_ms(a.get("startedAt")), _ms(a.get("stoppedAt"))) for a in attempts]
    if not spans and job.get("startedAt"):
        spans = [(_ms(job.get("startedAt")), _ms(job.get("stoppedAt")))]
    if not spans:
        return 0.0 if job.get("stoppedAt") else None
    total = 0.0
    for start, stop in spans:
        if start is None or stop is None:
            return None  # an attempt still running, or a reply without its times
        total += max(0.0, stop - start)
    return total


def cluster_of(instance_arn: str) -> str | None:
    """The cluster name in a long-format container instance ARN (…:container-instance/CLUSTER/ID)."""
    parts = instance_arn.split(":", 5)[-1].split("/")
    return parts[1] if len(parts) == 3 else None


async def job_usage(backend: AwsBatchBackend, job_ids: Sequence[str]) -> list[JobUsage]:
    """The usage of ``job_ids`` (unknown ids are left out), with instance types and markets looked up."""
    raws: list[dict[str, Any]] = []
    ids = list(job_ids)
    for start in range(0, len(ids), backend.describe_batch_size):
        chunk = ids[start : start + backend.describe_batch_size]
        reply = await backend.backoff.call(partial(backend._batch.describe_jobs, jobs=chunk))
        raws.extend(reply.get("jobs", ()))
    placed = {arn for arn in map(_container_instance, raws) if arn}
    types = await _instance_types_of(backend, placed) if placed else {}
    markets = await _markets_of(backend, {cluster for _, cluster in types.values() if cluster}) if types else {}
    usages = []
    for job in raws:
        arn = _container_instance(job)
        instance_type, cluster = types.get(arn, (None, None)) if arn else (None, None)
        usages.append(
            JobUsage(
                job_id=job["jobId"],
                status=job["status"],
                created_at=_ms(job.get("createdAt")),
                stopped_at=_ms(job.get("stoppedAt")),
                run_s=run_seconds(job),
                gpus=_gpus(job),
                instance_type=instance_type,
                market=markets.get(cluster) if cluster else None,
                tags=job.get("tags") or {},
                queue=(job.get("jobQueue") or "").rsplit("job-queue/", 1)[-1] or None,
            )
        )
    return usages


async def _instance_types_of(backend: AwsBatchBackend, arns: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    region = backend.region
    with _cache_lock:
        found = {arn: _instance_types[(region, arn)] for arn in arns if (region, arn) in _instance_types}
    missing = [arn for arn in arns if arn not in found]
    by_cluster: dict[str | None, list[str]] = defaultdict(list)
    for arn in missing:
        by_cluster[cluster_of(arn)].append(arn)
    if None in by_cluster:  # short-format ARNs name no cluster: ask every Batch cluster
        unnamed = by_cluster.pop(None)
        for known in await _batch_clusters(backend):
            by_cluster[known].extend(unnamed)
    try:
        ecs = await backend.ecs_client()
        for cluster, cluster_arns in by_cluster.items():
            for start in range(0, len(cluster_arns), ECS_BATCH):
                chunk = cluster_arns[start : start + ECS_BATCH]
                reply = await backend.backoff.call(
                    partial(ecs.describe_container_instances, cluster=cluster, containerInstances=chunk)
                )
                for instance in reply.get("containerInstances", ()):
                    attributes = {a.get("name"): a.get("value") for a in instance.get("attributes") or ()}
                    instance_type = attributes.get("ecs.instance-type")
                    if instance_type and instance.get("containerInstanceArn") in cluster_arns:
                        found[instance["containerInstanceArn"]] = (instance_type, _cluster_arn(backend, cluster))
    except Exception as exc:  # the bill is an estimate: an unknown type is said, never fatal
        log.warning("Could not look up the instance types of %d container instance(s): %s", len(missing), exc)
    with _cache_lock:
        for arn, value in found.items():
            _instance_types[(region, arn)] = value
    return found


def _cluster_arn(backend: AwsBatchBackend, cluster: str | None) -> str | None:
    if cluster is None or cluster.startswith("arn:"):
        return cluster
    return f"cluster/{cluster}"  # matched by name against the compute environments' cluster ARNs


async def _batch_clusters(backend: AwsBatchBackend) -> list[str]:
    await _markets_of(backend, set())
    with _cache_lock:
        return [cluster for (region, cluster) in _cluster_markets if region == backend.region]


async def _markets_of(backend: AwsBatchBackend, clusters: set[str]) -> dict[str, str]:
    """Spot or on-demand per cluster, from the compute environments (read again only for an unknown cluster)."""
    region = backend.region

    def known() -> dict[str, str]:
        with _cache_lock:
            cached = {c: m for (r, c), m in _cluster_markets.items() if r == region}
        return {cluster: market for cluster in clusters if (market := _match(cached, cluster))}

    found = known()
    if clusters and len(found) == len(clusters):
        return found
    try:
        token = None
        while True:
            kwargs: dict[str, str] = {"nextToken": token} if token else {}
            page = await backend.backoff.call(partial(backend._batch.describe_compute_environments, **kwargs))
            for environment in page.get("computeEnvironments", ()):
                cluster = environment.get("ecsClusterArn")
                if cluster:
                    kind = (environment.get("computeResources") or {}).get("type")
                    with _cache_lock:
                        _cluster_markets[(region, cluster)] = SPOT if kind in _SPOT_TYPES else ON_DEMAND
            token = page.get("nextToken")
            if not token:
                break
    except Exception as exc:
        log.warning("Could not read the compute environments to tell Spot from on-demand: %s", exc)
    return known()


def _match(cached: dict[str, str], cluster: str) -> str | None:
    if cluster in cached:
        return cached[cluster]
    if cluster.startswith("cluster/"):  # a name from a long container instance ARN
        return next((m for arn, m in cached.items() if arn.endswith("/" + cluster[len("cluster/") :])), None)
    return None
