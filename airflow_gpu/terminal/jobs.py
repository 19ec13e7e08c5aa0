"""`airflow-gpu jobs [--queue Q] [--status S] [--since 7d] [--cost]`: the jobs airflow-gpu submitted (by
its tags), with the DAG, task and run each belongs to, and each ended job's duration, GPU-hours and
estimated cost; ``--cost`` sums them per queue and per DAG."""

from __future__ import annotations

import argparse

from airflow_gpu.jobs.backend import LIVE_STATES, TERMINAL_STATES
from airflow_gpu.terminal.costs import bills_of, columns, parse_since, since_cutoff, totals, usages_of
from airflow_gpu.terminal.options import add_target_arguments, call, give_up_after, guarded, owner, target_of

ORDER = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
assert set(ORDER) == LIVE_STATES | TERMINAL_STATES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--queue", action="append", default=None, help="Batch job queue (required for AWS Batch; repeatable)"
    )
    parser.add_argument(
        "--status",
        action="append",
        default=None,
        choices=ORDER,
        type=str.upper,
        help="only jobs in this status (repeatable); default: all",
    )
    parser.add_argument(
        "--since",
        default=None,
        metavar="AGE",
        help="only jobs created within this age: 7d, 24h, 30m, 2w (Batch keeps ended jobs about 7 days)",
    )
    parser.add_argument(
        "--cost",
        action="store_true",
        help="also sum GPU-hours and estimated cost per queue and per DAG ($AIRFLOW_GPU_PRICES overrides the prices)",
    )
    add_target_arguments(parser)


def _jobs(args: argparse.Namespace) -> int:
    statuses = args.status or list(ORDER)
    cutoff = since_cutoff(parse_since(args.since) if args.since else None)
    queues = args.queue or [None]

    async def look(backend):
        states = [s for queue in queues for s in await backend.list_jobs(queue, statuses)]
        return states, await usages_of(backend, [s.job_id for s in states if s.is_terminal])

    states, usages = call(target_of(args), look, timeout=give_up_after(args))
    if cutoff is not None:
        # A live job has no usage yet; it is listed while it is recent by its queue time, if known.
        states = [s for s in states if (created := _created(s, usages)) is None or created >= cutoff]
    if not states:
        where = f" in queue {', '.join(args.queue)}" if args.queue else ""
        print(
            f"No airflow-gpu jobs{where} with status {', '.join(statuses)}"
            + (f" since {args.since}." if args.since else ".")
        )
        return 0
    bills = bills_of(usages.values())
    rows = [("JOB ID", "STATUS", "NAME", "DURATION", "GPU-H", "COST", "FROM")] + [
        (s.job_id, s.status, s.name or "-", *columns(bills.get(s.job_id)), owner(s)) for s in states
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths)) + "  " + row[6])
    if args.cost:
        print()
        print(
            f"GPU-hours and estimated cost of the {len(bills)} ended job(s) above"
            + (f", created within {args.since}" if args.since else "")
            + ":"
        )
        for line in totals(states, usages, bills):
            print(line)
    return 0


def _created(state, usages) -> float | None:
    usage = usages.get(state.job_id)
    return usage.created_at if usage is not None else state.queued_since


def run(args: argparse.Namespace) -> int:
    return guarded("jobs", lambda: _jobs(args), args)
