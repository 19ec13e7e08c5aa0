"""The native solver's memory plan and how the worker selects it, on a machine without a GPU."""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse

from airflow_gpu.worker.__main__ import build_parser, main
from airflow_gpu.worker.errors import WorkerError
from airflow_gpu.worker.gpu.memory import HEADROOM, GiB, check_fits, plan_memory
from airflow_gpu.worker.train import TrainParams, fit

SEED = dict(users=25_000_000, items=8_400_000, nnz=1_000_000_000, factors=64)
HAS_CUPY = importlib.util.find_spec("cupy") is not None


def test_memory_plan_at_seed_scale_counts_each_array():
    plan = plan_memory(**SEED)
    # 64-bit offsets, int32 indices, fp32 confidences, both orientations
    assert plan.parts["user_rows"] == 25_000_001 * 8 + 1_000_000_000 * 8
    assert plan.parts["item_rows"] == 8_400_001 * 8 + 1_000_000_000 * 8
    assert plan.parts["user_factors"] == 25_000_000 * 64 * 4 and plan.parts["item_factors"] == 8_400_000 * 64 * 4
    assert plan.peak == plan.training + plan.setup_peak_extra + HEADROOM
    assert 24.0 * GiB < plan.peak < 25.0 * GiB  # so: not on a 24 GB L4 or A10G (about 22 GiB free)
    check_fits(plan, free_bytes=int(139 * GiB), total_bytes=int(140 * GiB))  # an H200 holds it


def test_memory_plan_refusal_names_the_figures_and_the_fixes():
    plan = plan_memory(**SEED)
    with pytest.raises(WorkerError) as refused:
        check_fits(plan, free_bytes=int(22.0 * GiB), total_bytes=int(22.5 * GiB))
    message = str(refused.value)
    assert "will not fit" in message and "24.67 GiB" in message and "22.00 GiB free" in message
    assert "--solver implicit" in message and "--factors" in message


def test_default_solver_is_implicit():
    assert TrainParams().solver == "implicit"
    args = build_parser().parse_args(["als", "--input", "in", "--output", "out"])
    assert args.solver == "implicit"


def test_unknown_solver_is_refused():
    with pytest.raises(WorkerError, match="unknown --solver 'fast'"):
        TrainParams(solver="fast").check()


def test_native_solver_with_device_cpu_is_refused():
    with pytest.raises(WorkerError, match="GPU only; use --solver implicit with --device cpu"):
        TrainParams(solver="native", device="cpu").check()


@pytest.mark.skipif(HAS_CUPY, reason="CuPy installed: the refusal for a missing CuPy cannot be seen here")
def test_native_solver_without_cupy_says_what_to_install():
    matrix = scipy.sparse.random(50, 20, density=0.2, format="csr", dtype=np.float32, random_state=0)
    with pytest.raises(
        WorkerError,
        match=r"needs CuPy and a CUDA GPU: CuPy \(cupy-cuda13x\) is not installed.*airflow-gpu\[gpu\].*--solver implicit",
    ):
        fit(matrix, TrainParams(solver="native", factors=4, iterations=1))


@pytest.mark.skipif(HAS_CUPY, reason="CuPy installed: the refusal for a missing CuPy cannot be seen here")
def test_cli_solver_native_without_gpu_fails_before_reading_and_writes_nothing(tmp_path, capsys):
    rows = 200
    pq.write_table(
        pa.table({"user_id": [f"u{n % 40}" for n in range(rows)], "item_id": [f"i{n % 13}" for n in range(rows)]}),
        tmp_path / "in.parquet",
    )
    code = main(
        [
            "als",
            "--input",
            str(tmp_path / "in.parquet"),
            "--output",
            str(tmp_path / "out"),
            "--solver",
            "native",
            "--factors",
            "4",
            "--iterations",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert "--solver native needs" in err and "--solver implicit" in err and "Traceback" not in err
    assert "ingest" not in err.lower()  # refused before any data was read
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_cli_solver_implicit_trains_on_the_cpu_as_before(tmp_path, capsys):
    rng = np.random.default_rng(0)
    pq.write_table(
        pa.table({"user_id": rng.integers(0, 60, 1_500), "item_id": rng.integers(0, 25, 1_500)}),
        tmp_path / "in.parquet",
    )
    code = main(
        [
            "als",
            "--input",
            str(tmp_path / "in.parquet"),
            "--output",
            str(tmp_path / "out"),
            "--solver",
            "implicit",
            "--device",
            "cpu",
            "--factors",
            "4",
            "--iterations",
            "2",
            "--similar-n",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "ALS on CPU (implicit solver)" in err
    assert list((tmp_path / "out").rglob("manifest.json"))
