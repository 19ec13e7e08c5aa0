"""The triggerer-scale benchmark runs end to end at a tiny size, and prints its machine-readable lines."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import triggerer_scale

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.timeout(300)


def test_small_run_end_to_end(tmp_path):
    run = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "triggerer_scale.py"),
            "--jobs", "12", "--job-seconds", "2", "--poll", "1", "--log-every", "0.5", "--workdir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=280, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| 12 \| (anchor|ours) \|.*$", out, re.M)}
    assert set(rows) == {"anchor", "ours"}
    assert all("| 12/12 |" in row for row in rows.values())  # every trigger fired, with success
    [line] = [text for text in out.splitlines() if text.startswith("triggers N=12:")]
    m = re.fullmatch(
        r"triggers N=12: calls_ratio=([\d.]+) cpu_ratio=([\d.]+) rss_ratio=([\d.]+) max_delay_s=([\d.]+)", line
    )
    assert m, line
    assert float(m.group(1)) > 2  # 12 jobs: one DescribeJobs per poll against one per job per poll
    assert out.rstrip().endswith(line)  # the machine-readable lines come last
    # Ours relayed the jobs' log lines into the triggers' log, read from the server, none twice.
    [(written, relayed)] = re.findall(r"^\| 12 \|.* \| (\d+) / (\d+) \|$", out, re.M)
    assert 0 < int(relayed) <= int(written)


def test_skipped_anchor_reads_na(capsys):
    anchor = triggerer_scale.SideResult("anchor", 10_000, skipped="N > --anchor-max 1000")
    ours = triggerer_scale.SideResult(
        "ours",
        10_000,
        calls_per_poll=95.0,
        max_calls_in_a_cycle=100,
        cpu_s=8.0,
        wall_s=120.0,
        cpu_watch_pct=4.0,
        peak_rss_mb=280.0,
        max_delay_s=30.5,
        p50_delay_s=15.0,
        events_ok=10_000,
    )
    args = argparse.Namespace(poll=30.0, job_seconds=60.0, log_every=10.0, no_live_logs=False)
    triggerer_scale.print_table([(anchor, ours)], args)
    out = capsys.readouterr().out
    assert "triggers N=10000: calls_ratio=na cpu_ratio=na rss_ratio=na max_delay_s=30.50" in out
    assert "skipped: N > --anchor-max 1000" in out
    assert "target N=10000: DescribeJobs calls in a cycle 100.00 <= 100: met" in out
    assert "target N=10000: slowest event after its job's end, s 30.50 <= 32: met" in out


def test_cycles_and_windows():
    assert [len(c) for c in triggerer_scale._cycles([0.0, 0.1, 0.2, 5.0, 5.05, 10.0], gap=1.0)] == [3, 2, 1]
    assert triggerer_scale._max_in_window([0.0, 0.2, 0.4, 0.9, 1.5, 3.0], 1.0) == 4
    assert triggerer_scale._ratio(10.0, 4.0) == "2.5"
    assert triggerer_scale._ratio(float("nan"), 4.0) == "na"
