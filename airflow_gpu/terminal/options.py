"""What every terminal subcommand shares: where the jobs are, and how a job is found or refused."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Awaitable, Callable, TypeVar

from airflow_gpu.jobs.backend import BUILTIN_BACKENDS, BackendTarget, JobBackend, JobState
from airflow_gpu.jobs.blocking import run_blocking
from airflow_gpu.jobs.spec import TAG_DAG_ID, TAG_MAP_INDEX, TAG_RUN_ID, TAG_TASK_ID, JobSpecError
from airflow_gpu.jobs.watcher import JobWatcher

T = TypeVar("T")

#: The dag_id tag of jobs submitted by ``airflow-gpu submit`` (they belong to no DAG).
TERMINAL_DAG_ID = "airflow-gpu-submit"


class TerminalError(Exception):
    """A user's mistake: printed as one line, exit code 2, no traceback."""


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where the jobs are")
    where.add_argument("--backend", default="aws_batch", choices=sorted(BUILTIN_BACKENDS),
                       help="aws_batch (default), or local processes on this machine")
    where.add_argument("--profile", default=None, help="AWS profile (else the standard chain: environment, config, role)")
    where.add_argument("--region", default=None, help="AWS region (else the profile's or $AWS_REGION)")
    where.add_argument("--endpoint-url", default=None, help="one endpoint for Batch, Logs and S3 (a test server, a VPC endpoint)")


def target_of(args: argparse.Namespace) -> BackendTarget:
    return BackendTarget(
        backend=args.backend, conn_id=None, region_name=args.region,
        standard_chain=True, profile=args.profile, endpoint_url=args.endpoint_url,
    )


def call(target: BackendTarget, fn: Callable[[JobBackend], Awaitable[T]]) -> T:
    """``fn(backend)`` on a loop of its own, closed after (clients included)."""

    async def main() -> T:
        async with JobWatcher.shared(target).backend() as backend:
            return await fn(backend)

    return run_blocking(main)


async def describe_one(backend: JobBackend, job_id: str) -> JobState:
    """The job, or TerminalError naming where it was looked for."""
    try:
        found = await backend.describe([job_id])
    except JobSpecError as exc:  # e.g. a local id with a slash
        raise TerminalError(str(exc)) from None
    except Exception as exc:
        import botocore.exceptions

        if not isinstance(exc, botocore.exceptions.ClientError):
            raise
        found = []  # Batch answers a malformed id with a client error: to the user, the same as unknown
    if not found:
        raise TerminalError(
            f"no job {job_id!r} in {backend.location}; check the id, and --backend, --region and --profile"
        )
    return found[0]


def owner(state: JobState) -> str:
    """dag / task / run from the airflow-gpu tags, or who submitted it from a terminal."""
    tags = state.tags
    if tags.get(TAG_DAG_ID) == TERMINAL_DAG_ID:
        return f"terminal ({tags.get(TAG_RUN_ID, '?')})"
    if TAG_DAG_ID not in tags:
        return "-"
    text = f"{tags.get(TAG_DAG_ID)}.{tags.get(TAG_TASK_ID)} run {tags.get(TAG_RUN_ID)}"
    if tags.get(TAG_MAP_INDEX) not in (None, "-1"):
        text += f" [{tags[TAG_MAP_INDEX]}]"
    return text


def guarded(prog: str, fn: Callable[[], int]) -> int:
    """Run a subcommand; a user's mistake is one line on stderr and exit code 2."""
    try:
        return fn()
    except (TerminalError, JobSpecError) as exc:
        print(f"airflow-gpu {prog}: error: {exc}", file=sys.stderr)
        return 2
    except asyncio.TimeoutError:
        print(f"airflow-gpu {prog}: error: the job system did not answer in time; try again", file=sys.stderr)
        return 1
