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
from airflow_gpu.worker.gpu.memory import HEADROOM, STAGE_BYTES, GiB, check_fits, most_factors, plan_memory
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


def test_memory_plan_with_bfloat16_factors_fits_a_24_gb_card_at_the_seeds_scale_with_64_factors():
    """bfloat16 storage halves both factor matrices and adds one float32 stretch for the Gram; the rest
    (both CSRs, the heavy rows' float32 CG state, set-up) is the float32 plan's."""
    full, half = plan_memory(**SEED), plan_memory(**SEED, factor_dtype="bfloat16")
    assert half.parts["user_factors"] == 25_000_000 * 64 * 2 and half.parts["item_factors"] == 8_400_000 * 64 * 2
    assert half.parts["gram_stage"] == STAGE_BYTES and "gram_stage" not in full.parts
    shared = {name: size for name, size in full.parts.items() if not name.endswith("_factors")}
    assert {name: half.parts[name] for name in shared} == shared
    assert half.peak == full.peak - (25_000_000 + 8_400_000) * 64 * 2 + STAGE_BYTES
    assert 20.5 * GiB < half.peak < 21.0 * GiB  # 20.75 GiB
    card = int(22.0 * GiB)  # what a 24 GB A10G or L4 has free
    check_fits(half, free_bytes=card, total_bytes=int(22.5 * GiB))
    with pytest.raises(WorkerError, match=r"will not fit: .* x 128 factors \(bfloat16\) needs 25\.08 GiB"):
        check_fits(plan_memory(**{**SEED, "factors": 128}, factor_dtype="bfloat16"), card, int(22.5 * GiB))
    # the most factors that fit there: each storage's plan at that count fits, one more does not
    for dtype, most in (("float32", 43), ("bfloat16", 82)):
        assert most_factors(SEED["users"], SEED["items"], SEED["nnz"], card, dtype) == most
        assert plan_memory(**{**SEED, "factors": most}, factor_dtype=dtype).peak <= card
        assert plan_memory(**{**SEED, "factors": most + 1}, factor_dtype=dtype).peak > card


def test_memory_plan_refusal_offers_bfloat16_factors_when_they_would_fit():
    with pytest.raises(WorkerError) as refused:
        check_fits(plan_memory(**SEED), free_bytes=int(22.0 * GiB), total_bytes=int(22.5 * GiB))
    assert "use --factor-dtype bfloat16 (20.75 GiB), --factors 42 or fewer," in str(refused.value)


def test_factor_dtype_defaults_to_float32_and_reaches_the_train_params():
    assert TrainParams().factor_dtype == "float32"
    parser = build_parser()
    assert parser.parse_args(["als", "--input", "in", "--output", "out"]).factor_dtype == "float32"
    args = parser.parse_args(["als", "--input", "in", "--output", "out", "--factor-dtype", "bfloat16"])
    assert args.factor_dtype == "bfloat16"


def test_unknown_factor_dtype_is_refused():
    with pytest.raises(WorkerError, match="unknown --factor-dtype 'float16'; use float32 or bfloat16"):
        TrainParams(solver="native", factor_dtype="float16").check()


def test_bfloat16_factors_with_implicit_are_refused_in_one_line_naming_the_fix():
    with pytest.raises(WorkerError) as refused:
        TrainParams(factor_dtype="bfloat16").check()
    assert str(refused.value) == (
        "--factor-dtype bfloat16 needs --solver native (implicit's solvers store float32 factors); "
        "add --solver native, or drop --factor-dtype"
    )


def test_cli_bfloat16_factors_with_implicit_fail_before_reading_and_write_nothing(tmp_path, capsys):
    code = main(
        [
            "als",
            "--input",
            str(tmp_path / "missing.parquet"),  # never read: the refusal comes first
            "--output",
            str(tmp_path / "out"),
            "--factor-dtype",
            "bfloat16",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--factor-dtype bfloat16 needs --solver native" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_fit_hands_the_factor_dtype_to_the_native_solver(monkeypatch):
    """train.fit with --solver native: the NativeAls it builds stores the factors as asked."""
    from airflow_gpu.worker.gpu import solver

    built = {}

    class Recording(solver.NativeAls):
        def fit(self, user_items, show_progress=False, callback=None, **options):
            built["factor_dtype"] = self.factor_dtype
            self.user_factors = np.zeros((user_items.shape[0], self.factors), np.float32)
            self.item_factors = np.zeros((user_items.shape[1], self.factors), np.float32)

    monkeypatch.setattr(solver, "resolve_native_device", lambda device: "gpu")
    monkeypatch.setattr(solver, "NativeAls", Recording)
    matrix = scipy.sparse.random(50, 20, density=0.2, format="csr", dtype=np.float32, random_state=0)
    fit(matrix, TrainParams(solver="native", factor_dtype="bfloat16", factors=4, iterations=1, regularization=1.0))
    assert built == {"factor_dtype": "bfloat16"}


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
