"""The native GPU solver's schedule, in its numpy reference, against implicit's CPU ALS.

The reference (airflow_gpu/worker/gpu/reference.py) follows als.cu's decomposition, the
heavy rows' chunked sums included, so agreeing with implicit here checks the method and the
split; benchmarks/gpu_solver.py checks the CUDA kernels against this reference on a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from airflow_gpu.worker.evaluate import evaluate, holdout_split
from airflow_gpu.worker.gpu import reference
from airflow_gpu.worker.gpu.bfloat16 import round_float32
from airflow_gpu.worker.gpu.schedule import plan
from airflow_gpu.worker.regularization import auto_regularization
from tests.support.native_data import (
    ROUNDING,
    SMOKE_FACTORS,
    SMOKE_ITERATIONS,
    SMOKE_SEED,
    confidence_with_heavy_rows,
    implicit_fit,
    relative,
    smoke_split,
)

# Small enough that the planted users (333 items each) and the popular items (up to ~1,800
# users) are heavy rows, each cut into several chunks.
THRESHOLD, CHUNK = 256, 64


@pytest.fixture(scope="module")
def matrix():
    return confidence_with_heavy_rows(100_000, seed=0)


def initial(matrix, factors, seed=1):
    rng = np.random.default_rng(seed)
    users, items = matrix.shape
    return (
        rng.random((users, factors), dtype=np.float32) * 0.01,
        rng.random((items, factors), dtype=np.float32) * 0.01,
    )


def test_schedule_splits_heavy_rows_into_chunks_that_cover_them(matrix):
    for side in (matrix, matrix.T.tocsr()):
        schedule = plan(side.indptr, THRESHOLD, CHUNK)
        lengths = np.diff(side.indptr)
        assert len(schedule.heavy_rows) > 0 and schedule.chunks > len(schedule.heavy_rows)
        assert sorted(np.concatenate([schedule.light_rows, schedule.heavy_rows])) == list(range(side.shape[0]))
        assert np.all(lengths[schedule.heavy_rows] > THRESHOLD) and np.all(lengths[schedule.light_rows] <= THRESHOLD)
        assert np.all(np.diff(lengths[schedule.light_rows]) <= 0)  # longest first
        for h, row in enumerate(schedule.heavy_rows):
            chunks = slice(schedule.chunk_first[h], schedule.chunk_first[h + 1])
            assert np.all(schedule.chunk_heavy[chunks] == h)
            starts, ends = schedule.chunk_start[chunks], schedule.chunk_end[chunks]
            assert starts[0] == side.indptr[row] and ends[-1] == side.indptr[row + 1]
            assert np.all(starts[1:] == ends[:-1]) and np.all(ends - starts <= CHUNK)


@pytest.mark.parametrize("iterations", [1, 5])
def test_reference_factors_match_implicit_cpu_to_float32_rounding(matrix, iterations):
    """Ours against implicit in float32 may differ no more than implicit's own float32 run
    differs from its float64 run: that spread is what rounding alone does to these solves."""
    X0, Y0 = initial(matrix, 16)
    X, Y = reference.fit(matrix, X0, Y0, 5.0, iterations, threshold=THRESHOLD, chunk=CHUNK)
    X32, Y32 = implicit_fit(matrix, X0, Y0, 5.0, iterations)
    X64, Y64 = implicit_fit(matrix, X0, Y0, 5.0, iterations, dtype=np.float64)
    for ours, theirs, exact in ((X, X32, X64), (Y, Y32, Y64)):
        rounding = relative(theirs, exact)
        assert relative(ours, theirs) <= max(ROUNDING * rounding, 1e-5), (relative(ours, theirs), rounding)
        assert relative(ours, exact) <= max(ROUNDING * rounding, 1e-5)
    # control: the bound catches a change of meaning as small as confidence c read as 1 + c
    shifted = matrix.copy()
    shifted.data += 1
    wrong = reference.fit(shifted, X0, Y0, 5.0, iterations, threshold=THRESHOLD, chunk=CHUNK)
    assert relative(wrong[0], X32) > 10 * ROUNDING * relative(X32, X64)


def test_heavy_split_changes_nothing_but_rounding(matrix):
    """Split or whole, the heavy rows' solves differ by no more than float32 rounding does (as above)."""
    X0, Y0 = initial(matrix, 16)
    split = reference.fit(matrix, X0, Y0, 5.0, 2, threshold=THRESHOLD, chunk=CHUNK)
    whole = reference.fit(matrix, X0, Y0, 5.0, 2, threshold=10**9, chunk=CHUNK)
    X32, Y32 = implicit_fit(matrix, X0, Y0, 5.0, 2)
    X64, Y64 = implicit_fit(matrix, X0, Y0, 5.0, 2, dtype=np.float64)
    for ours, whole_rows, theirs, exact in ((split[0], whole[0], X32, X64), (split[1], whole[1], Y32, Y64)):
        assert 0 < relative(ours, whole_rows) <= max(ROUNDING * relative(theirs, exact), 1e-5)


def test_reference_precision_at_10_within_one_percent_of_implicit(matrix):
    train, test = holdout_split(matrix, 0.2, seed=0)
    regularization, _ = auto_regularization(train)
    X0, Y0 = initial(train, 32)
    ours = reference.fit(train, X0, Y0, regularization, 15, threshold=THRESHOLD, chunk=CHUNK)
    theirs = implicit_fit(train, X0, Y0, regularization, 15)
    scores = {}
    for name, (X, Y) in (("ours", ours), ("implicit", theirs)):
        metrics = evaluate(SimpleNamespace(user_factors=X, item_factors=Y), train, test, k=10)
        scores[name] = metrics["als"]["precision_at_10"]
        assert scores[name] > 1.2 * metrics["popularity"]["precision_at_10"]  # both learned something
    assert abs(scores["ours"] - scores["implicit"]) <= 0.01 * scores["implicit"], scores


def test_reference_gives_rows_without_interactions_zero_factors(matrix):
    users, items = matrix.shape
    padded = matrix[:, :].tolil()
    padded.resize((users + 1, items))  # user `users` has no interactions
    X0, Y0 = initial(padded.tocsr(), 4)
    X = reference.half_step(padded.tocsr(), X0, Y0, 5.0, threshold=THRESHOLD, chunk=CHUNK)
    assert not X[users].any() and X0[users].any() and X[:users].any()


def test_reference_precision_at_10_with_bf16_factors_within_one_percent_of_float32(capsys):
    """bfloat16 storage (fp32 arithmetic) on the smoke split (gpu_smoke.py's recipe: 64 factors, 15
    iterations, the automatic regularization), at 200,000 interactions: the full 2M takes minutes here."""
    train, test, weighted = smoke_split(200_000)
    regularization, _ = auto_regularization(weighted, SMOKE_SEED)
    X0, Y0 = initial(weighted, SMOKE_FACTORS, seed=SMOKE_SEED)
    scores, fitted = {}, {}
    for factor_dtype in ("float32", "bfloat16"):
        X, Y = fitted[factor_dtype] = reference.fit(
            weighted, X0, Y0, regularization, SMOKE_ITERATIONS, factor_dtype=factor_dtype
        )
        metrics = evaluate(
            SimpleNamespace(user_factors=X, item_factors=Y), train, test, k=10, max_users=50_000, seed=SMOKE_SEED
        )
        scores[factor_dtype] = metrics["als"]["precision_at_10"]
        assert scores[factor_dtype] > 1.2 * metrics["popularity"]["precision_at_10"]  # it learned something
    (Xf, Yf), (Xb, Yb) = fitted["float32"], fitted["bfloat16"]
    assert np.array_equal(Xb, round_float32(Xb)) and np.array_equal(Yb, round_float32(Yb))  # stored as bf16
    assert not np.array_equal(Xf, round_float32(Xf))  # and the float32 run is not
    with capsys.disabled():
        print(
            f"\nsmoke split (200,000 interactions) in the reference: precision@10 float32 {scores['float32']:.5f}, "
            f"bfloat16 {scores['bfloat16']:.5f}; bf16 vs float32 factors: users {relative(Xb, Xf):.2e}, "
            f"items {relative(Yb, Yf):.2e}"
        )
    assert abs(scores["bfloat16"] - scores["float32"]) <= 0.01 * scores["float32"], scores
