"""`airflow-gpu cancel JOB_ID [--reason TEXT]`: terminate a job (marked, so no task reattaches to it)."""

from __future__ import annotations

import argparse
import getpass

from airflow_gpu.terminal.options import add_target_arguments, call, describe_one, give_up_after, guarded, target_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="JOB_ID")
    parser.add_argument("--reason", default=None, help="why (shown as the job's status reason)")
    add_target_arguments(parser)


def _cancel(args: argparse.Namespace) -> int:
    reason = args.reason or f"cancelled from a terminal by {getpass.getuser()}"

    async def stop(backend):
        state = await describe_one(backend, args.job_id)
        if state.is_terminal:
            return state
        await backend.terminate(state.job_id, reason)
        return None

    ended = call(target_of(args), stop, timeout=give_up_after(args))
    if ended is not None:
        print(f"Job {args.job_id} already ended {ended.status}; nothing to cancel.")
        return 0
    print(f"Terminating job {args.job_id}: {reason}")
    return 0


def run(args: argparse.Namespace) -> int:
    return guarded("cancel", lambda: _cancel(args), args)
