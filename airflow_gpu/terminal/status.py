"""`airflow-gpu status JOB_ID`: one job's state, reason, exit code, owner and links."""

from __future__ import annotations

import argparse

from airflow_gpu.terminal.options import add_target_arguments, call, give_up_after, describe_one, guarded, owner, target_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="JOB_ID")
    add_target_arguments(parser)


def _status(args: argparse.Namespace) -> int:
    async def look(backend):
        state = await describe_one(backend, args.job_id)
        return state, backend.job_url(state.job_id), backend.log_url(state)

    state, job_url, log_url = call(target_of(args), look, timeout=give_up_after(args))
    rows = [
        ("job", f"{state.job_id} ({state.name})"),
        ("status", state.status),
        ("reason", state.status_reason or "-"),
        ("exit code", "-" if state.exit_code is None else str(state.exit_code)),
        ("attempts", str(state.attempts)),
        ("from", owner(state)),
        ("job page", job_url or "-"),
        ("log", log_url or (f"{state.log_group}/{state.log_stream}" if state.log_stream else "-")),
    ]
    for label, value in rows:
        print(f"{label:>10}: {value}")
    return 0


def run(args: argparse.Namespace) -> int:
    return guarded("status", lambda: _status(args), args)
