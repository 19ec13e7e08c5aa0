"""`airflow-gpu status JOB_ID`: one job's state, reason, exit code, owner and links."""

from __future__ import annotations

import argparse

from airflow_gpu.terminal.costs import bills_of, status_rows, usages_of
from airflow_gpu.terminal.options import (
    add_target_arguments,
    call,
    describe_one,
    give_up_after,
    guarded,
    owner,
    target_of,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="JOB_ID")
    add_target_arguments(parser)


def _status(args: argparse.Namespace) -> int:
    async def look(backend):
        state = await describe_one(backend, args.job_id)
        usage = (await usages_of(backend, [state.job_id])).get(state.job_id) if state.is_terminal else None
        return state, backend.job_url(state.job_id), backend.log_url(state), usage

    state, job_url, log_url, usage = call(target_of(args), look, timeout=give_up_after(args))
    made = bills_of([usage])[state.job_id] if usage is not None else None
    rows = [
        ("job", f"{state.job_id} ({state.name})"),
        ("status", state.status),
        ("reason", state.status_reason or "-"),
        ("exit code", "-" if state.exit_code is None else str(state.exit_code)),
        ("attempts", str(state.attempts)),
        ("from", owner(state)),
        ("job page", job_url or "-"),
        ("log", log_url or (f"{state.log_group}/{state.log_stream}" if state.log_stream else "-")),
        *(status_rows(made) if state.is_terminal else ()),
    ]
    for label, value in rows:
        print(f"{label:>10}: {value}")
    return 0


def run(args: argparse.Namespace) -> int:
    return guarded("status", lambda: _status(args), args)
