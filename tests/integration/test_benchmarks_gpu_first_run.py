"""benchmarks/gpu_first_run.py's plan and plumbing on a machine without a GPU (its figures need one)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_first_run.py"


def test_the_plan_puts_the_kernels_first_and_fits_four_minutes():
    done = subprocess.run([sys.executable, str(SCRIPT), "--plan"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert [s["step"] for s in plan["steps"]] == ["kernels", "correctness", "seed"]
    assert plan["caps_total_s"] <= plan["budget_s"] <= 240
    assert plan["seed"] == {"users": 25_000_000, "items": 8_400_000, "nnz": 1_000_000_000}
    assert plan["correctness_interactions"] == 1_000_000


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy installed: the steps would run")
def test_without_a_gpu_every_step_fails_alone_and_the_report_comes_back(tmp_path):
    target = tmp_path / "first.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(target)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(target.read_text())
    steps = report["steps"]
    assert list(steps) == ["kernels", "correctness", "seed"]
    assert all(step["status"] == "failed" for step in steps.values()), steps
    assert "cupy" in steps["kernels"]["error"].lower() and "cupy" in steps["seed"]["error"].lower()
    assert "CuPy" in steps["correctness"]["error"]  # the native solver's own refusal, after implicit's spread
    assert done.stdout.strip().splitlines()[-1] == ("gpu_first_run: kernels=- correctness=- native_s_per_it_1e9=- "
                                                     "setup_1e9_s=- gpu_peak_gib=-")
