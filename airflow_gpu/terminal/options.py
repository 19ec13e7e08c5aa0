"""What every terminal subcommand shares: where the jobs are, and how a job is found or refused."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Awaitable, Callable, TypeVar

from airflow_gpu.jobs.backend import BUILTIN_BACKENDS, BackendTarget, JobBackend, JobState
from airflow_gpu.jobs.blocking import run_blocking
from airflow_gpu.jobs.poll_errors import JobIdsRejected
from airflow_gpu.jobs.spec import TAG_DAG_ID, TAG_MAP_INDEX, TAG_RUN_ID, TAG_TASK_ID, JobSpecError
from airflow_gpu.jobs.watcher import JobWatcher

T = TypeVar("T")

#: The dag_id tag of jobs submitted by ``airflow-gpu submit`` (they belong to no DAG).
TERMINAL_DAG_ID = "airflow-gpu-submit"

#: The terminal's default backend when --backend is not given (else aws_batch).
BACKEND_ENV = "AIRFLOW_GPU_BACKEND"

#: Seconds a terminal command waits for an API that does not answer (or keeps failing) before it
#: gives up with one line. A person at a prompt is not a triggerer: the triggerer keeps retrying.
DEFAULT_GIVE_UP_AFTER = 30.0


class TerminalError(Exception):
    """A user's mistake: printed as one line, exit code 2, no traceback."""


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where the jobs are")
    where.add_argument(
        "--backend",
        default=_default_backend(),
        choices=sorted(BUILTIN_BACKENDS),
        help=f"aws_batch (default, or ${BACKEND_ENV}), or local processes on this machine",
    )
    where.add_argument(
        "--profile", default=None, help="AWS profile (else the standard chain: environment, config, role)"
    )
    where.add_argument("--region", default=None, help="AWS region (else the profile's or $AWS_REGION)")
    where.add_argument(
        "--endpoint-url", default=None, help="one endpoint for Batch, Logs and S3 (a test server, a VPC endpoint)"
    )
    where.add_argument(
        "--give-up-after",
        type=_seconds,
        default=DEFAULT_GIVE_UP_AFTER,
        metavar="S",
        help=f"give up when the job system does not answer for this long (default {DEFAULT_GIVE_UP_AFTER:g} s)",
    )


def _default_backend() -> str:
    chosen = os.environ.get(BACKEND_ENV, "").strip()
    return chosen if chosen in BUILTIN_BACKENDS else "aws_batch"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def target_of(args: argparse.Namespace) -> BackendTarget:
    return BackendTarget(
        backend=args.backend,
        conn_id=None,
        region_name=args.region,
        standard_chain=True,
        profile=args.profile,
        endpoint_url=args.endpoint_url,
    )


def target_flags(args: argparse.Namespace) -> str:
    """The options that reach this command's jobs again, for a hint that works when pasted."""
    flags = []
    if args.backend != "aws_batch":
        flags += ["--backend", args.backend]
    for option, value in (
        ("--profile", args.profile),
        ("--region", args.region),
        ("--endpoint-url", args.endpoint_url),
    ):
        if value:
            flags += [option, value]
    import shlex

    return "".join(" " + shlex.quote(flag) for flag in flags)


def give_up_after(args: argparse.Namespace) -> float:
    return float(getattr(args, "give_up_after", None) or DEFAULT_GIVE_UP_AFTER)


def call(
    target: BackendTarget, fn: Callable[[JobBackend], Awaitable[T]], *, timeout: float = DEFAULT_GIVE_UP_AFTER
) -> T:
    """``fn(backend)`` on a loop of its own, closed after (clients included); at most ``timeout``
    seconds, then :class:`GaveUp` (the backend's own retries would wait for ever)."""

    async def main() -> T:
        async with JobWatcher.shared(target).backend() as backend:
            return await fn(backend)

    try:
        return run_blocking(main, timeout=timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise GaveUp(timeout) from None


class GaveUp(Exception):
    """The job system did not answer within the command's --give-up-after."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer in {seconds:g} s")
        self.seconds = seconds


async def describe_one(backend: JobBackend, job_id: str) -> JobState:
    """The job, or TerminalError naming where it was looked for."""
    try:
        found = await backend.describe([job_id])
    except JobSpecError as exc:  # e.g. a local id with a slash
        raise TerminalError(str(exc)) from None
    except JobIdsRejected:
        found = []  # Batch answers a malformed id with a client error: to the user, the same as unknown
    except Exception as exc:
        import botocore.exceptions

        from airflow_gpu.faults import error_code
        from airflow_gpu.terminal.aws_errors import _DENIED, _EXPIRED

        # Credentials and permissions are not the id's fault: those go to the caller, explained.
        if not isinstance(exc, botocore.exceptions.ClientError) or error_code(exc) in _DENIED | _EXPIRED:
            raise
        found = []
    if not found:
        if backend.name == "local":
            from airflow_gpu.jobs.local.backend import STATE_DIR_ENV

            raise TerminalError(
                f"no job {job_id!r} in {backend.location}; check the id, or point {STATE_DIR_ENV} "
                "(else $AIRFLOW_HOME/airflow-gpu/local-jobs) at the folder that holds its record"
            )
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


def guarded(prog: str, fn: Callable[[], int], args: argparse.Namespace | None = None) -> int:
    """Run a subcommand; a user's mistake (its own, or one AWS names) is one line on stderr and exit code 2."""
    from airflow_gpu.terminal.aws_errors import explain, gave_up

    endpoint = getattr(args, "endpoint_url", None)
    try:
        return fn()
    except (TerminalError, JobSpecError) as exc:
        line = str(exc)
    except GaveUp as exc:
        line = gave_up(exc.seconds, endpoint)
    except (asyncio.TimeoutError, TimeoutError):
        line = gave_up(give_up_after(args) if args is not None else DEFAULT_GIVE_UP_AFTER, endpoint)
    except Exception as exc:
        explained = explain(exc, profile=getattr(args, "profile", None), endpoint_url=endpoint)
        if explained is None:
            raise
        line = explained
    print(f"airflow-gpu {prog}: error: {line}", file=sys.stderr)
    return 2
