"""What the terminal shows of a job's bill: the columns of `status` and `jobs`, and `jobs --since 7d --cost`.

The bills are made as the operator makes them (:mod:`airflow_gpu.jobs.cost`), with the prices
of ``$AIRFLOW_GPU_PRICES`` or the shipped table: a terminal reads no Airflow configuration.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Iterable, Sequence

from airflow_gpu.jobs.backend import JobBackend, JobState
from airflow_gpu.jobs.cost import LOCAL, Bill, JobUsage, bill, duration
from airflow_gpu.jobs.spec import TAG_DAG_ID, JobSpecError

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str) -> float:
    """``7d``, ``24h``, ``30m``, ``2w`` -> seconds."""
    match = _SINCE.match(text or "")
    if not match:
        raise JobSpecError(f"--since takes an age such as 7d, 24h, 30m or 2w, got {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


async def usages_of(backend: JobBackend, job_ids: Sequence[str]) -> dict[str, JobUsage]:
    found: dict[str, JobUsage] = {}
    size = backend.describe_batch_size
    for start in range(0, len(job_ids), size):
        for usage in await backend.usage(job_ids[start : start + size]):
            found[usage.job_id] = usage
    return found


def bills_of(usages: Iterable[JobUsage]) -> dict[str, Bill]:
    from airflow_gpu.config import price_table
    from airflow_gpu.jobs.cost import PriceFileError

    try:
        prices = price_table(airflow_config=False)
    except PriceFileError as exc:
        raise JobSpecError(str(exc)) from None
    return {u.job_id: bill(u, prices) for u in usages}


def columns(made: Bill | None) -> tuple[str, str, str]:
    """DURATION, GPU-H and COST of one job ("-" while it runs or when its backend cannot tell)."""
    if made is None:
        return "-", "-", "-"
    hours = "-" if made.gpu_hours is None or made.market == LOCAL else f"{made.gpu_hours:.3f}"
    cost = "local" if made.market == LOCAL else ("unknown" if made.cost_usd is None else f"${made.cost_usd:,.2f}")
    return duration(made.wall_s), hours, cost


def status_rows(made: Bill | None) -> list[tuple[str, str]]:
    """The bill's rows of `airflow-gpu status`."""
    if made is None:
        return [("cost", "- (not ended, or the backend does not report usage)")]
    if made.market == LOCAL:
        return [("duration", duration(made.wall_s)), ("cost", "local")]
    where = made.instance_type or "unknown"
    if made.market:
        where += f" ({made.market})"
    return [
        ("duration", f"{duration(made.wall_s)} (queued {duration(made.queue_s)}, ran {duration(made.run_s)})"),
        ("instance", where),
        ("GPU-hours", "-" if made.gpu_hours is None else f"{made.gpu_hours:.3f}"),
        ("cost", f"{made.cost_text()} ({made.basis})"),
    ]


def totals(states: Sequence[JobState], usages: dict[str, JobUsage], bills: dict[str, Bill]) -> list[str]:
    """`jobs --cost`: GPU-hours and cost summed per queue and per DAG, as printable lines."""
    lines: list[str] = []
    for title, key in (
        ("QUEUE", lambda s: (usages[s.job_id].queue if s.job_id in usages else None) or "-"),
        ("DAG", lambda s: s.tags.get(TAG_DAG_ID) or "-"),
    ):
        groups: dict[str, list[Bill]] = defaultdict(list)
        for state in states:
            if state.job_id in bills:
                groups[key(state)].append(bills[state.job_id])
        rows = [(title, "JOBS", "GPU-H", "COST", "UNPRICED")]
        for name in sorted(groups):
            rows.append(_total_row(name, groups[name]))
        if len(groups) > 1:
            rows.append(_total_row("all", [b for group in groups.values() for b in group]))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.extend(
            "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in rows
        )
        lines.append("")
    return lines[:-1]


def _total_row(name: str, group: list[Bill]) -> tuple[str, str, str, str, str]:
    hours = sum(b.gpu_hours or 0.0 for b in group if b.market != LOCAL)
    priced = [b.cost_usd for b in group if b.cost_usd is not None]
    unpriced = sum(1 for b in group if b.cost_usd is None and b.market != LOCAL)  # local jobs have no price to miss
    cost = f"${sum(priced):,.2f}" if priced else ("local" if any(b.market == LOCAL for b in group) else "-")
    return name, str(len(group)), f"{hours:.3f}", cost, str(unpriced) if unpriced else "-"


def since_cutoff(seconds: float | None) -> float | None:
    return None if seconds is None else time.time() - seconds
