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
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--plan"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert [s["step"] for s in plan["steps"]] == ["kernels", "correctness", "seed", "bf16"]
    assert plan["caps_total_s"] <= plan["budget_s"] <= 240
    assert plan["seed"] == {"users": 25_000_000, "items": 8_400_000, "nnz": 1_000_000_000}
    assert plan["correctness_interactions"] == 1_000_000


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy installed: the steps would run")
def test_without_a_gpu_every_step_fails_alone_and_the_report_comes_back(tmp_path):
    target = tmp_path / "first.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(target)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(target.read_text())
    steps = report["steps"]
    assert list(steps) == ["kernels", "correctness", "seed", "bf16"]
    assert all(step["status"] == "failed" for step in steps.values()), steps
    assert "cupy" in steps["kernels"]["error"].lower() and "cupy" in steps["seed"]["error"].lower()
    assert "CuPy" in steps["correctness"]["error"]  # the native solver's own refusal, after implicit's spread
    assert done.stdout.strip().splitlines()[-1] == (
        "gpu_first_run: kernels=- correctness=- native_s_per_it_1e9=- setup_1e9_s=- gpu_peak_gib=- bf16=-"
    )


DRIVER = """
import sys
from tests.support.cuda_on_cpu import as_cupy_module
sys.modules["cupy"] = as_cupy_module()
sys.argv[0] = {script!r}
sys.path.insert(0, {folder!r})
import gpu_first_run
sys.exit(gpu_first_run.main({argv!r}))
"""


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy installed: the stand-in would shadow it")
def test_every_step_runs_through_als_cu_on_the_cpu(tmp_path):
    """The steps' code paths, kernel timing and figures included, with als.cu run by the CPU emulation
    standing in for CuPy (tests/support/cuda_on_cpu): so the first GPU run does not fail on plumbing."""
    target = tmp_path / "first.json"
    argv = ["--quick", "--factors", "8", "--json", str(target)]
    code = DRIVER.format(script=str(SCRIPT), folder=str(SCRIPT.parent), argv=argv)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=400, check=False, cwd=SCRIPT.parents[1]
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = json.loads(target.read_text())["steps"]
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(
        ["kernels", "correctness", "seed", "bf16"], "ok"
    ), steps
    kernels = steps["kernels"]["figures"]
    assert kernels["dynamic_shared_bytes"] == (8 * 8 + 8 * 8) * 4 and "cg_light" in kernels
    correctness = steps["correctness"]["figures"]
    assert correctness["pass"] is True and correctness["transpose_matches_scipy"] is True
    seed = steps["seed"]["figures"]
    assert len(seed["iteration_seconds"]) == 2 and seed["regularization"] > 0
    for side in ("users", "items"):
        times = seed["kernels_ms"][side]
        assert times["cg_light"] > 0 and times["half_step"] >= times["cg_light"]
        assert seed[f"{side}_effective_gb_per_s"] > 0
    assert {"upload_s", "weighting_s", "transpose_s", "regularization_s", "setup_s"} <= set(seed["setup_timings_s"])
    bf16 = steps["bf16"]["figures"]
    assert bf16["pass"] is True and bf16["spills"] == [] and "cg_light_bf16" in bf16
    assert 0 < bf16["bf16_vs_float32_native"]["users"] and bf16["bf16_vs_bf16_reference"]["users"] <= bf16["tolerance"]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_first_run: kernels=ok correctness=PASS native_s_per_it_1e9=")
    assert last.endswith(" bf16=PASS")
