"""benchmarks/gpu_als.py and its CSR generator, at tiny sizes on the CPU (the GPU run needs a GPU machine)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.synthetic import seed_like_csr

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


TINY = [
    "--users",
    "2500",
    "--items",
    "4000",
    "--interactions",
    "100000",
    "--cpu-interactions",
    "25000",
    "--iterations",
    "2",
    "--recommend-users",
    "500",
    "--cpu-recommend-users",
    "200",
]
LAST_LINE = re.compile(
    r"^gpu_als: device=(\w+) nnz=(\d+|None) train_s=(\S+) s_per_iteration=(\S+) "
    r"cpu_over_gpu_same_size=(\S+) cpu_over_gpu_per_nnz_iteration=(\S+)$"
)


def test_generated_csr_is_canonical_and_near_the_target():
    made = seed_like_csr(3_000, 1_000, 60_000, device="cpu", seed=3, block_events=7_000)
    m = made.matrix
    assert m.shape == (3_000, 1_000)
    assert abs(m.nnz - 60_000) / 60_000 < 0.03, m.nnz  # repeats are summed, and the scale makes up for them
    assert made.raw_events > m.nnz
    assert m.indices.dtype == np.int32 and m.data.dtype == np.float32 and m.indptr.dtype == np.int32
    assert np.all(np.diff(m.indptr) >= 1)  # every user has at least one interaction
    assert m.has_canonical_format  # sorted columns, no repeated pair
    summed = m.copy()
    summed.sum_duplicates()
    assert summed.nnz == m.nnz
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    keys = rows.astype(np.int64) * m.shape[1] + m.indices
    assert np.all(np.diff(keys) > 0)
    assert m.data.min() >= 1
    # Power-law popularity: the top 1% of items hold far more than 1% of the interactions.
    popularity = np.sort(np.bincount(m.indices, minlength=m.shape[1]))[::-1]
    assert popularity[:10].sum() > 0.08 * m.nnz


def test_generated_csr_is_reproducible_across_threaded_blocks():
    first = seed_like_csr(2_000, 500, 30_000, device="cpu", seed=9, block_events=3_000, threads=4).matrix
    second = seed_like_csr(2_000, 500, 30_000, device="cpu", seed=9, block_events=3_000, threads=2).matrix
    other = seed_like_csr(2_000, 500, 30_000, device="cpu", seed=10, block_events=3_000).matrix
    assert (first != second).nnz == 0
    assert (first != other).nnz > 0


def test_generator_refuses_sizes_past_int32():
    with pytest.raises(ValueError, match="2\\^31"):
        seed_like_csr(10, 10, 2**31, device="cpu")


def run_benchmark(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_als.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_als.py"), *flags, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, json.loads(out.read_text())


def test_cpu_smoke_run_reports_every_stage_and_the_ratio(tmp_path):
    done, report = run_benchmark(tmp_path, "--device", "cpu", *TINY)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    main, cpu = report["runs"]["main"], report["runs"]["cpu"]
    for run in (main, cpu):
        assert run["status"] == "ok" and run["errors"] == {}
        assert set(run["stages"]) == {"generate", "weighting", "train", "recommend"}
        assert len(run["stages"]["train"]["iteration_seconds"]) == 2
        assert run["stages"]["recommend"]["recommendations"] > 0
    assert main["stages"]["generate"]["nnz"] > 4 * cpu["stages"]["generate"]["nnz"]
    # Users and items are scaled with the interactions, so the CPU run keeps the main run's shape.
    per_user = [r["stages"]["generate"]["interactions_per_user"] for r in (main, cpu)]
    assert abs(per_user[0] - per_user[1]) / per_user[0] < 0.1
    assert report["summary"]["cpu_over_device_per_nnz_iteration"] > 0
    # Each run's own record sits beside the report, so it survives a kill of the parent.
    assert json.loads((tmp_path / "gpu_als-cpu.json").read_text())["stages"] == cpu["stages"]
    last = done.stdout.strip().splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match, last
    assert match.group(1) == "cpu" and int(match.group(2)) == main["stages"]["generate"]["nnz"]


def test_a_failed_gpu_run_is_reported_and_the_cpu_figures_kept(tmp_path):
    from airflow_gpu.worker import models

    if models._gpu_als_class() is not None:
        pytest.skip("this machine has a GPU; the failure path needs one without")
    done, report = run_benchmark(tmp_path, "--device", "gpu", "--no-retry", *TINY)
    assert done.returncode == 1  # the main run failed
    for label in ("same-size", "main"):
        run = report["runs"][label]
        assert run["status"] == "failed"
        assert run["stages"]["generate"]["nnz"] > 0  # the stage before the failure kept its figures
        assert "--device cpu" in run["errors"]["train"]
        assert "recommend" not in run["stages"]
    cpu = report["runs"]["cpu"]
    assert cpu["status"] == "ok" and len(cpu["stages"]["train"]["iteration_seconds"]) == 2
    assert "main: train failed: WorkerError" in done.stdout
    assert LAST_LINE.match(done.stdout.strip().splitlines()[-1])


def test_a_run_past_its_timeout_is_stopped_and_keeps_what_it_finished(tmp_path):
    # 200 iterations cannot finish inside the ~9 s the budget leaves the main run.
    done, report = run_benchmark(
        tmp_path,
        "--device",
        "cpu",
        "--users",
        "5000",
        "--items",
        "8000",
        "--interactions",
        "400000",
        "--iterations",
        "200",
        "--budget",
        "12",
        "--cpu-timeout",
        "3",
    )
    main = report["runs"]["main"]
    assert main["status"].startswith("timed out")
    assert main["stages"]["generate"]["nnz"] > 0
    assert "recommend" not in main["stages"]
    assert len(main["stages"].get("train", {}).get("iteration_seconds", [])) < 200
    assert "cpu" not in report["runs"]  # too little time left for it, said so
    assert "skipping the CPU comparison" in done.stdout
    assert LAST_LINE.match(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 1


def test_the_gpu_branch_of_the_generator_runs_with_a_numpy_stand_in_for_cupy(monkeypatch):
    """The cupy path (sequential blocks, cuRAND-style RandomState, device-to-host copies, pool release)
    with numpy under cupy's names; only the arithmetic is shared with the CPU path."""
    import types

    from benchmarks import synthetic

    released = []

    class RandomState:
        def __init__(self, seed):
            self._rng = np.random.RandomState(seed)

        def random_sample(self, size, dtype):
            assert dtype == np.float64
            return self._rng.random_sample(size)

    fake = types.ModuleType("cupy")
    fake.__dict__.update({name: getattr(np, name) for name in dir(np) if not name.startswith("_")})
    fake.random = types.SimpleNamespace(RandomState=RandomState)
    fake.asnumpy = lambda array: np.array(array, copy=True)
    fake.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: released.append(True))
    monkeypatch.setattr(synthetic, "array_module", lambda device: (fake, "gpu"))
    made = seed_like_csr(3_000, 1_000, 60_000, device="gpu", seed=3, block_events=20_000)
    assert made.device == "gpu" and released == [True]
    assert abs(made.matrix.nnz - 60_000) / 60_000 < 0.03 and made.matrix.has_canonical_format
