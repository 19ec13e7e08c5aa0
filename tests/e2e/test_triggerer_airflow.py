"""The real-triggerer benchmark runs end to end at a tiny size, on PostgreSQL: three sides, every task
leaves DEFERRED with its job's success, the delay's parts are measured, and the ratio lines come last."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


pytestmark = [pytest.mark.timeout(600), pytest.mark.airflow_behaviour]

N = 8


def test_small_run_through_airflow_triggerer(tmp_path, airflow_postgres_url):
    # On the session's PostgreSQL, in a copy of the database it migrated once (skips where there is none).
    run = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "triggerer_airflow.py"), "--jobs", str(N), "--poll", "2",
            "--job-seconds", "4", "--log-every", "1", "--finish-timeout", "90", "--workdir", str(tmp_path),
            "--database-url", airflow_postgres_url,
        ],
        capture_output=True, text=True, timeout=580, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    rows = {m.group(1): m.group(0) for m in re.finditer(rf"^\| {N} \| (anchor|ours|ours_quiet) \|.*$", out, re.M)}
    assert set(rows) == {"anchor", "ours", "ours_quiet"}, out[-3000:]
    for side, row in rows.items():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[-1] == f"{N}/{N}", row  # every task left DEFERRED on its job's success
        # The delay and its three parts (poll, trigger, supervisor) were all measured: "p50 / max", no nan.
        for cell in cells[7:11]:
            p50, worst = (float(x) for x in cell.split(" / "))
            assert 0 <= p50 <= worst, (side, row)
    lines = out.rstrip().splitlines()
    assert lines[-2].startswith(f"triggerer N={N}: calls_ratio=") and lines[-1].startswith(
        f"live logs N={N}: cpu_ratio_with_logs="
    )
    assert float(re.search(r"calls_ratio=([\d.]+)", lines[-2]).group(1)) > 1  # one call per poll against one per job
