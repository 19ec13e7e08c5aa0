"""`airflow-gpu jobs [--queue Q] [--status S]`: the jobs airflow-gpu submitted (by its tags), with
the DAG, task and run each belongs to."""

from __future__ import annotations

import argparse

from airflow_gpu.jobs.backend import LIVE_STATES, TERMINAL_STATES
from airflow_gpu.terminal.options import add_target_arguments, call, give_up_after, guarded, owner, target_of

ORDER = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
assert set(ORDER) == LIVE_STATES | TERMINAL_STATES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", default=None, help="Batch job queue (required for AWS Batch)")
    parser.add_argument("--status", action="append", default=None, choices=ORDER, type=str.upper,
                        help="only jobs in this status (repeatable); default: all")
    add_target_arguments(parser)


def _jobs(args: argparse.Namespace) -> int:
    statuses = args.status or list(ORDER)
    states = call(target_of(args), lambda backend: backend.list_jobs(args.queue, statuses), timeout=give_up_after(args))
    if not states:
        print("No airflow-gpu jobs" + (f" in queue {args.queue}" if args.queue else "") + f" with status {', '.join(statuses)}.")
        return 0
    rows = [("JOB ID", "STATUS", "NAME", "FROM")] + [(s.job_id, s.status, s.name or "-", owner(s)) for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def run(args: argparse.Namespace) -> int:
    return guarded("jobs", lambda: _jobs(args), args)
