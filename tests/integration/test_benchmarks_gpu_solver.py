"""benchmarks/gpu_solver.py's plumbing at tiny sizes on the CPU (its figures mean nothing here).

With ``--cpu`` the numpy reference stands in for the native solver and implicit runs on the
CPU; without it, on this GPU-less machine, every GPU step fails, and the report must still
come back with each failure recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_solver.py"


def run(tmp_path: Path, *flags: str) -> tuple[dict, str]:
    target = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--json",
            str(target),
            "--iterations",
            "2",
            "--quality-iterations",
            "3",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(target.read_text()), done.stdout


def test_cpu_plumbing_reports_every_step(tmp_path):
    report, out = run(tmp_path, "--cpu", "--only", "correctness", "native-20m", "implicit-20m", "quality", "bf16")
    assert {k: v["status"] for k, v in report["steps"].items()} == dict.fromkeys(
        ["correctness", "native-20m", "implicit-20m", "quality", "bf16"], "ok"
    )
    summary = report["summary"]
    assert summary["correctness"] == "PASS"
    assert summary["native_s_per_it_20m"] > 0 and summary["implicit_s_per_it_20m"] > 0
    assert len(report["steps"]["native-20m"]["stages"]["speed"]["iteration_seconds"]) == 2
    assert 0 < summary["p10_native"] and 0 < summary["p10_implicit"]
    assert (tmp_path / "report-quality.json").exists()  # each step's own file, beside the report
    # bf16 factor storage, last: the reference's bf16 mode in the native solver's place here
    assert 0 < summary["p10_native_bf16"] and summary["p10_bf16_over_f32"] > 0
    assert len(report["steps"]["bf16"]["stages"]["speed"]["iteration_seconds"]) == 3
    assert report["steps"]["bf16"]["stages"]["speed"]["factor_dtype"] == "bfloat16"
    last = out.strip().splitlines()[-1]
    assert last.startswith("gpu_solver: correctness=PASS ") and "p10_ratio=" in last


def test_without_a_gpu_each_gpu_step_fails_alone_and_the_report_comes_back(tmp_path):
    report, out = run(tmp_path, "--only", "correctness", "native-20m", "implicit-20m")
    steps = report["steps"]
    assert all(steps[name]["status"] == "failed" for name in ("correctness", "native-20m", "implicit-20m")), steps
    # both speed steps stop at the GPU data generator (cupy is missing here), each recording why
    assert "cupy" in steps["native-20m"]["errors"]["native-20m"].lower()
    assert "cupy" in steps["implicit-20m"]["errors"]["implicit-20m"].lower()
    assert "CuPy" in steps["correctness"]["errors"]["correctness"]  # the native solver's own refusal
    # the correctness step got as far as implicit's CPU spread before the native solver was refused
    assert steps["correctness"]["stages"]["correctness"]["implicit_f32_vs_f64"] > 0
    assert report["summary"]["correctness"] == "-"
    assert out.strip().splitlines()[-1].startswith("gpu_solver: correctness=- native_s_per_it_1e9=-")
