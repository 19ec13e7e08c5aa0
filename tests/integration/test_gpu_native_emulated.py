"""als.cu itself, compiled by g++ with tests/support/cuda_on_cpu and driven by solver.py's own host code.

Every CUDA thread of every launch runs the kernel's real code on the CPU (a cooperative thread
each; warps meet at each shuffle, blocks at __syncthreads), over numpy arrays standing in for
device memory. So these tests fail on a wrong lane, offset, index or barrier in the CUDA
source, which the reference and loader tests (Python re-implementations) cannot see. What the
emulation leaves out (memory model, occupancy, timing) is listed in cuda_on_cpu.h.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import scipy.sparse

from airflow_gpu.worker.gpu import bfloat16, reference, solver
from airflow_gpu.worker.matrix import confidence
from tests.support.cuda_on_cpu import EmulationError, NumpyCupy
from tests.support.native_data import (
    BF16_SPACING,
    ROUNDING,
    SMOKE_FACTORS,
    SMOKE_ITERATIONS,
    SMOKE_SEED,
    bfloat16_test_values,
    confidence_with_heavy_rows,
    implicit_fit,
    nearest_bfloat16_bits,
    relative,
    smoke_split,
)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")

# 334 users x 66 items x 3,251 interactions: with rows above 24 interactions split into chunks
# of 8, both sides have light rows and heavy rows, the heavy ones cut into 4 to 29 chunks.
INTERACTIONS, THRESHOLD, CHUNK, REGULARIZATION, ITERATIONS = 10_000, 24, 8, 2.0, 2


@pytest.fixture
def emulated(monkeypatch):
    def install(**options):
        fake = NumpyCupy(**options)
        monkeypatch.setattr(solver, "_cupy", lambda: fake)
        solver._module.cache_clear()
        return fake

    yield install
    solver._module.cache_clear()


@pytest.fixture(scope="module")
def matrix():
    return confidence_with_heavy_rows(INTERACTIONS, heavy_users=2, seed=4)


def start(matrix, factors):
    rng = np.random.default_rng(2)
    users, items = matrix.shape
    return rng.random((users, factors), dtype=np.float32) * 0.01, rng.random((items, factors), dtype=np.float32) * 0.01


def native_fit(matrix, X0, Y0, factors):
    model = solver.NativeAls(
        factors=factors, regularization=REGULARIZATION, iterations=ITERATIONS, threshold=THRESHOLD, chunk=CHUNK
    )
    model.user_factors, model.item_factors = X0, Y0
    model.fit(matrix)
    return model.user_factors, model.item_factors


def worst(ours, theirs) -> str:
    return f"relative {relative(ours, theirs):.2e}, largest element {np.abs(ours - theirs).max():.2e}"


@pytest.mark.parametrize("factors", [8, 64])
def test_als_cu_run_on_the_cpu_matches_the_reference_and_implicit(emulated, matrix, factors, capsys):
    fake = emulated()
    X0, Y0 = start(matrix, factors)
    X, Y = native_fit(matrix, X0, Y0, factors)
    # both sides took both paths: a light-row launch and a heavy-row residual per half-step
    assert fake.launches.count("cg_light") == 2 * ITERATIONS and fake.launches.count("heavy_start") == 2 * ITERATIONS
    assert np.isfinite(X).all() and np.isfinite(Y).all()
    Xr, Yr = reference.fit(matrix, X0, Y0, REGULARIZATION, ITERATIONS, threshold=THRESHOLD, chunk=CHUNK)
    X32, Y32 = implicit_fit(matrix, X0, Y0, REGULARIZATION, ITERATIONS)
    X64, Y64 = implicit_fit(matrix, X0, Y0, REGULARIZATION, ITERATIONS, dtype=np.float64)
    with capsys.disabled():
        print(
            f"\nals.cu on the CPU, {factors} factors: users vs reference {worst(X, Xr)}; vs implicit {worst(X, X32)};"
            f" items vs reference {worst(Y, Yr)}; vs implicit {worst(Y, Y32)};"
            f" implicit float32 vs float64: {relative(X32, X64):.2e} / {relative(Y32, Y64):.2e}"
        )
    for ours, ref, f32, f64 in ((X, Xr, X32, X64), (Y, Yr, Y32, Y64)):
        bound = max(ROUNDING * relative(f32, f64), 1e-5)
        assert relative(ours, ref) <= bound, (relative(ours, ref), bound)
        assert relative(ours, f32) <= bound, (relative(ours, f32), bound)
    assert relative(X, X0) > 100 * max(ROUNDING * relative(X32, X64), 1e-5)  # it trained: the bound is not trivial


def test_a_one_lane_shuffle_bug_in_als_cu_fails_the_comparison(emulated, matrix, tmp_path):
    """The control: lane 3 adds its own partial instead of its neighbour's at the last step of
    sparse_term's reduction. The loader and reference tests pass with this bug; this must not."""
    good = "dot[u] += __shfl_xor_sync(FULL_MASK, dot[u], offset);"
    bad = "dot[u] += __shfl_xor_sync(FULL_MASK, dot[u], (threadIdx.x % WARP == 3 && offset == 1) ? 0 : offset);"
    text = solver.SOURCE.read_text()
    assert text.count(good) == 1
    mutated = tmp_path / "als.cu"
    mutated.write_text(text.replace(good, bad))
    emulated(source=mutated)
    X0, Y0 = start(matrix, 8)
    X = native_fit(matrix, X0, Y0, 8)[0]
    Xr = reference.fit(matrix, X0, Y0, REGULARIZATION, ITERATIONS, threshold=THRESHOLD, chunk=CHUNK)[0]
    X32, X64 = (
        implicit_fit(matrix, X0, Y0, REGULARIZATION, ITERATIONS)[0],
        implicit_fit(matrix, X0, Y0, REGULARIZATION, ITERATIONS, dtype=np.float64)[0],
    )
    assert relative(X, Xr) > 10 * max(ROUNDING * relative(X32, X64), 1e-5), relative(X, Xr)


def test_als_cu_transpose_matches_scipy(emulated, matrix):
    fake = emulated()
    model = solver.NativeAls(factors=8)
    side = model._upload(fake, matrix)
    item_side = model._transpose(fake, model._kernels(fake), side, matrix.shape[1])
    ours = scipy.sparse.csr_matrix(
        (item_side["data"], item_side["indices"], item_side["indptr"]), shape=matrix.shape[::-1]
    )
    expected = matrix.T.tocsr()
    assert np.array_equal(ours.indptr, expected.indptr)
    ours.sort_indices()  # the order within a column follows the atomics' order, as on a GPU
    expected.sort_indices()
    assert np.array_equal(ours.indices, expected.indices) and np.array_equal(ours.data, expected.data)
    assert fake.launches == ["count_columns", "scatter_columns"]


@pytest.mark.parametrize("weighting", ["bm25", "log", "linear", "none"])
def test_als_cu_weighting_matches_the_hosts(emulated, matrix, weighting, capsys):
    fake = emulated()
    counts = matrix.copy()
    counts.data = np.random.default_rng(0).integers(1, 30, counts.nnz).astype(np.float32)  # play counts
    model = solver.NativeAls(factors=8)
    side = model._upload(fake, counts)
    model._weigh(fake, model._kernels(fake), side, counts.shape[1], weighting, None)
    expected = confidence(counts, weighting).data
    with capsys.disabled():
        print(
            f"\nals.cu weighting {weighting}: largest relative difference from the host's "
            f"{np.max(np.abs(side['data'] - expected) / np.abs(expected)):.2e}"
        )
    assert np.allclose(side["data"], expected, rtol=1e-5, atol=0) and not np.allclose(expected, counts.data)
    assert ("bm25_confidence" in fake.launches) == (weighting == "bm25")


def test_the_emulation_refuses_a_launch_a_gpu_would_refuse(emulated, matrix):
    """Above 48 KiB of dynamic shared memory a kernel must opt in; launching without it fails on a GPU."""
    fake = emulated()
    model = solver.NativeAls(factors=128)
    kernels = model._kernels(fake)
    kernels["cg_light"].max_dynamic_shared_size_bytes = 0
    with pytest.raises(EmulationError, match="without opting in"):
        kernels["cg_light"]((1,), (256,), (), shared_mem=kernels["shared"])


def test_als_cu_gives_rows_without_interactions_zero_factors(emulated, matrix):
    """As implicit's GPU solver: an empty user row and an empty item column come back as zeros."""
    fake = emulated()
    users, items = matrix.shape
    padded = scipy.sparse.csr_matrix(
        (matrix.data, matrix.indices, np.append(matrix.indptr, matrix.nnz)), shape=(users + 1, items + 1)
    )  # user `users` and item `items` have nothing
    X0, Y0 = start(padded, 8)
    X, Y = native_fit(padded, X0, Y0, 8)
    assert not X[users].any() and not Y[items].any() and X0[users].any() and Y0[items].any()
    Xr, Yr = reference.fit(padded, X0, Y0, REGULARIZATION, ITERATIONS, threshold=THRESHOLD, chunk=CHUNK)
    assert relative(X, Xr) < 1e-2 and relative(Y, Yr) < 1e-2
    assert "cg_light" in fake.launches


def test_the_pipeline_with_solver_native_weighs_and_transposes_on_the_gpu(emulated, monkeypatch, tmp_path):
    """run_als with --solver native hands the raw counts to the solver: bm25, the transpose and the
    automatic regularization run in als.cu (here on the CPU), and metrics.json says so."""
    import pyarrow.parquet as pq

    from airflow_gpu.demo.synthetic import synthetic_interactions
    from airflow_gpu.worker.config import AlsConfig
    from airflow_gpu.worker.ingest import Columns
    from airflow_gpu.worker.pipeline import run_als
    from airflow_gpu.worker.regularization import AUTO_REGULARIZATION_SHARE, auto_regularization
    from airflow_gpu.worker.train import TrainParams

    fake = emulated()
    monkeypatch.setattr(solver, "gpu_available", lambda: None)
    (tmp_path / "in").mkdir()
    pq.write_table(synthetic_interactions(3_000, n_users=150, n_items=60, seed=4), tmp_path / "in" / "part.parquet")
    config = AlsConfig(
        input=str(tmp_path / "in"),
        columns=Columns(weight="plays"),
        similar_n=0,
        top_n=3,
        train=TrainParams(solver="native", factors=8, iterations=2, loss=False),
    )
    run = run_als(config)
    training = run.metrics["training"]
    assert training["weighted_on"] == "gpu" and "weighting" not in run.metrics["stages"]
    assert {"upload_s", "weighting_s", "transpose_s", "regularization_s", "setup_s"} <= set(training["setup_seconds"])
    assert {"row_sums", "bm25_confidence", "count_columns", "scatter_columns", "spmv_rows"} <= set(fake.launches)
    counts = run.interactions.matrix
    host_weighted = confidence(counts, "bm25")
    # the GPU's sigma is over the whole matrix, the host's over the same (small) matrix: the same rule
    assert training["regularization"] == pytest.approx(auto_regularization(host_weighted)[0], rel=2e-2)
    assert training["regularization_share"] == AUTO_REGULARIZATION_SHARE
    # the same fit as the solver given the host's weighting and that regularization
    host = solver.NativeAls(factors=8, regularization=training["regularization"], iterations=2)
    host.fit(host_weighted)
    assert relative(run.training.user_factors(), host.user_factors) < 1e-4
    assert relative(run.training.item_factors(), host.item_factors) < 1e-4


HARNESS_CHECKS = r"""
extern "C" __global__ void shuffles(const int* in, int* out_up, int* out_xor, float* out_sum) {
    const int lane = threadIdx.x % 32;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    out_up[i] = __shfl_sync(0xffffffffu, in[i], (lane + 1) % 32);
    out_xor[i] = __shfl_xor_sync(0xffffffffu, in[i], 5);
    extern __shared__ float stage[];
    stage[threadIdx.x] = (float)in[i];
    __syncthreads();
    float total = 0.f;
    for (int k = 0; k < (int)blockDim.x; ++k) total += stage[k];
    out_sum[i] = total;
}

extern "C" __global__ void early_return(int* out) {
    if (threadIdx.x % 32 == 7) return;
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0);
}
"""


def test_the_emulation_exchanges_lanes_and_blocks_as_cuda_does_and_refuses_a_hang():
    """The harness itself: shuffles read the named lane's value of the same call, __syncthreads makes
    every thread's shared-memory write visible, and a full-mask shuffle after a lane returned (a
    hang or undefined on a GPU) is refused with the line."""
    module = NumpyCupy().RawModule(code=HARNESS_CHECKS, options=())
    values = np.arange(128, dtype=np.int32) * 3
    up, xor, total = np.zeros(128, np.int32), np.zeros(128, np.int32), np.zeros(128, np.float32)
    module.get_function("shuffles")((2,), (64,), (values, up, xor, total), shared_mem=64 * 4)
    lane = np.arange(128) % 32
    warp_base = np.arange(128) - lane
    assert np.array_equal(up, values[warp_base + (lane + 1) % 32])
    assert np.array_equal(xor, values[warp_base + (lane ^ 5)])
    assert np.array_equal(total, np.repeat([values[:64].sum(), values[64:].sum()], 64).astype(np.float32))
    with pytest.raises(
        EmulationError, match="thread 7 returned while 7 lanes of its warp wait at __shfl_sync on line 17"
    ):
        module.get_function("early_return")((1,), (32,), (np.zeros(32, np.int32),))


# -- bfloat16 factor storage (--factor-dtype bfloat16): the *_bf16 kernels ----------------------------


def native_fit_bf16(matrix, X0, Y0, factors, factor_dtype="bfloat16"):
    model = solver.NativeAls(
        factors=factors,
        regularization=REGULARIZATION,
        iterations=ITERATIONS,
        threshold=THRESHOLD,
        chunk=CHUNK,
        factor_dtype=factor_dtype,
    )
    model.user_factors, model.item_factors = X0, Y0
    model.fit(matrix)
    return model.user_factors, model.item_factors


@pytest.mark.parametrize("factors", [8, 64])
def test_als_cu_bf16_kernels_run_on_the_cpu_match_the_bf16_reference(emulated, matrix, factors, capsys):
    """The bf16 kernels against the reference's bf16 mode (the same stores rounded to nearest even),
    within the float32 bound plus one bfloat16 step; their distance from float32 is printed."""
    fake = emulated()
    X0, Y0 = start(matrix, factors)
    X, Y = native_fit_bf16(matrix, X0, Y0, factors)
    assert {"cg_light_bf16", "heavy_partials_bf16", "heavy_start_bf16", "heavy_step_bf16"} <= set(fake.launches)
    assert not {"cg_light", "heavy_partials", "heavy_start", "heavy_step"} & set(fake.launches)
    for ours in (X, Y):  # float32 out, every value a bfloat16 one
        assert ours.dtype == np.float32 and np.isfinite(ours).all()
        assert np.array_equal(ours, bfloat16.round_float32(ours))
    options = {"threshold": THRESHOLD, "chunk": CHUNK}
    Xr, Yr = reference.fit(matrix, X0, Y0, REGULARIZATION, ITERATIONS, factor_dtype="bfloat16", **options)
    Xf, Yf = native_fit_bf16(matrix, X0, Y0, factors, factor_dtype="float32")
    X32, Y32 = implicit_fit(matrix, X0, Y0, REGULARIZATION, ITERATIONS)
    X64, Y64 = implicit_fit(matrix, X0, Y0, REGULARIZATION, ITERATIONS, dtype=np.float64)
    with capsys.disabled():
        print(
            f"\nals.cu bf16 on the CPU, {factors} factors: users vs bf16 reference {worst(X, Xr)}; vs als.cu float32"
            f" {worst(X, Xf)}; items vs bf16 reference {worst(Y, Yr)}; vs als.cu float32 {worst(Y, Yf)}"
        )
    for ours, ref, f32, f64 in ((X, Xr, X32, X64), (Y, Yr, Y32, Y64)):
        bound = max(ROUNDING * relative(f32, f64), 1e-5) + BF16_SPACING
        assert relative(ours, ref) <= bound, (relative(ours, ref), bound)
    assert relative(X, X0) > 100 * max(ROUNDING * relative(X32, X64), 1e-5)  # it trained


def one_half_step(fake, matrix, X0, Y0, factor_dtype):
    """New user factors after one half-step with one CG step: each row's x is then stored exactly
    once, by cg_light or heavy_step, whatever the storage."""
    model = solver.NativeAls(
        factors=X0.shape[1],
        regularization=REGULARIZATION,
        cg_steps=1,
        threshold=THRESHOLD,
        chunk=CHUNK,
        factor_dtype=factor_dtype,
    )
    kernels = model._kernels(fake)
    side = model._prepare(fake, model._upload(fake, matrix))
    assert int(side["schedule"].heavy_rows.shape[0]) > 0  # both paths store
    X = model._initial(fake, X0, X0.shape[0], 0)
    model._half_step(fake, kernels, side, X, model._initial(fake, Y0, Y0.shape[0], 1))
    return model._download(fake, X)


def bf16_kernels_against_float32(fake, matrix) -> tuple[int, int]:
    """(values where the bf16 kernels' store is not the float32 kernels' result rounded to nearest
    even, values the rounding changed) for one half-step from the same bfloat16 factors: the kernels
    share every float32 operation, so the bf16 ones must be exactly float32 plus that rounding."""
    X0, Y0 = (bfloat16.round_float32(f) for f in start(matrix, 8))
    ours = one_half_step(fake, matrix, X0, Y0, "bfloat16")
    full = one_half_step(fake, matrix, X0, Y0, "float32")
    expected = bfloat16.to_bits(full)
    return int(np.count_nonzero(bfloat16.to_bits(ours) != expected)), int(np.count_nonzero(full != ours))


def test_als_cu_bf16_kernels_are_the_float32_ones_rounded_to_nearest_even_once_per_store(emulated, matrix):
    fake = emulated()
    mismatched, rounded = bf16_kernels_against_float32(fake, matrix)
    assert mismatched == 0
    assert rounded > matrix.shape[0]  # not trivial: the rounding changed most values
    assert {"cg_light_bf16", "heavy_step_bf16"} <= set(fake.launches)


BF16_PLANTS = {
    # rounding toward zero where the kernels must round to nearest even
    "rounding": (
        "*at = __float2bfloat16_rn(value);",
        "*at = __float2bfloat16_rz(value);",
    ),
    # lane 3 widens every bfloat16 it loads to zero
    "lane": (
        "return __bfloat162float(value);",
        "return threadIdx.x % WARP == 3 ? 0.f : __bfloat162float(value);",
    ),
}


@pytest.mark.parametrize("bug", sorted(BF16_PLANTS))
def test_a_bug_planted_in_the_bf16_kernels_fails_the_comparisons(emulated, matrix, tmp_path, bug):
    """The control of the two tests above: als.cu with one bf16-only line broken."""
    good, bad = BF16_PLANTS[bug]
    text = solver.SOURCE.read_text()
    assert text.count(good) == 1
    mutated = tmp_path / "als.cu"
    mutated.write_text(text.replace(good, bad))
    fake = emulated(source=mutated)
    mismatched, _ = bf16_kernels_against_float32(fake, matrix)
    assert mismatched > matrix.shape[0], mismatched  # the exact comparison fails on most values
    if bug == "lane":  # and the comparison with the reference, too
        X0, Y0 = start(matrix, 8)
        X = native_fit_bf16(matrix, X0, Y0, 8)[0]
        Xr = reference.fit(
            matrix, X0, Y0, REGULARIZATION, ITERATIONS, threshold=THRESHOLD, chunk=CHUNK, factor_dtype="bfloat16"
        )[0]
        X32, X64 = (
            implicit_fit(matrix, X0, Y0, REGULARIZATION, ITERATIONS)[0],
            implicit_fit(matrix, X0, Y0, REGULARIZATION, ITERATIONS, dtype=np.float64)[0],
        )
        assert relative(X, Xr) > 10 * (max(ROUNDING * relative(X32, X64), 1e-5) + BF16_SPACING), relative(X, Xr)


BF16_CONVERSIONS = r"""
#include <cuda_bf16.h>
extern "C" __global__ void round_trip(const float* values, __nv_bfloat16* rounded, float* widened, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        rounded[i] = __float2bfloat16_rn(values[i]);
        widened[i] = __bfloat162float(rounded[i]);
    }
}
"""


def test_the_emulated_bfloat16_rounds_to_nearest_even_as_the_gpu_does():
    """The stand-in cuda_bf16.h: __float2bfloat16_rn against the nearest bfloat16 found by distances
    (ties to even, overflow to infinity, subnormals kept, NaN to 0x7FFF), and an exact widening."""
    values = bfloat16_test_values(20_000)
    n = values.shape[0]
    rounded, widened = np.zeros(n, np.uint16), np.zeros(n, np.float32)
    module = NumpyCupy().RawModule(code=BF16_CONVERSIONS, options=())
    module.get_function("round_trip")((-(-n // 256),), (256,), (values, rounded, widened, np.int32(n)))
    expected = nearest_bfloat16_bits(values)
    assert np.array_equal(rounded, expected), np.flatnonzero(rounded != expected)[:5]
    assert np.array_equal(widened.view(np.uint32), expected.astype(np.uint32) << np.uint32(16))


def test_precision_at_10_with_bf16_factors_is_within_one_percent_of_float32_through_als_cu(emulated, capsys):
    """The smoke split (tests/support/native_data.py: benchmarks/gpu_smoke.py's recipe) at 40,000
    interactions, so the emulation runs its 15 iterations at 64 factors in about a minute each."""
    from airflow_gpu.worker.evaluate import evaluate
    from airflow_gpu.worker.regularization import auto_regularization

    emulated()
    train, test, weighted = smoke_split(40_000)
    regularization, _ = auto_regularization(weighted, SMOKE_SEED)
    rng = np.random.default_rng(SMOKE_SEED)
    X0 = rng.random((weighted.shape[0], SMOKE_FACTORS), dtype=np.float32) * 0.01
    Y0 = rng.random((weighted.shape[1], SMOKE_FACTORS), dtype=np.float32) * 0.01
    scores, fitted = {}, {}
    for factor_dtype in ("float32", "bfloat16"):
        model = solver.NativeAls(
            factors=SMOKE_FACTORS, regularization=regularization, iterations=SMOKE_ITERATIONS, factor_dtype=factor_dtype
        )
        model.user_factors, model.item_factors = X0, Y0
        model.fit(weighted)
        metrics = evaluate(model, train, test, k=10, max_users=50_000, seed=SMOKE_SEED)
        scores[factor_dtype] = metrics["als"]["precision_at_10"]
        fitted[factor_dtype] = model.user_factors, model.item_factors
        assert scores[factor_dtype] > 1.2 * metrics["popularity"]["precision_at_10"]  # it learned something
    (Xf, Yf), (Xb, Yb) = fitted["float32"], fitted["bfloat16"]
    with capsys.disabled():
        print(
            f"\nsmoke split (40,000 interactions) through als.cu: precision@10 float32 {scores['float32']:.5f}, "
            f"bfloat16 {scores['bfloat16']:.5f}; bf16 vs float32 factors: users {worst(Xb, Xf)}, items {worst(Yb, Yf)}"
        )
    assert abs(scores["bfloat16"] - scores["float32"]) <= 0.01 * scores["float32"], scores


def test_the_pipeline_with_bf16_factors_writes_float32_factors(emulated, monkeypatch, tmp_path):
    """--factor-dtype bfloat16 through run_als: the bf16 kernels train, the factors written out are float32."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_gpu.demo.synthetic import synthetic_interactions
    from airflow_gpu.worker.ingest import Columns
    from airflow_gpu.worker.pipeline import AlsConfig, run_als
    from airflow_gpu.worker.train import TrainParams

    fake = emulated()
    monkeypatch.setattr(solver, "gpu_available", lambda: None)
    (tmp_path / "in").mkdir()
    pq.write_table(synthetic_interactions(3_000, n_users=150, n_items=60, seed=4), tmp_path / "in" / "part.parquet")
    config = AlsConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        columns=Columns(weight="plays"),
        similar_n=0,
        top_n=3,
        train=TrainParams(solver="native", factor_dtype="bfloat16", factors=8, iterations=2, loss=False),
    )
    run_als(config)
    assert "cg_light_bf16" in fake.launches and "cg_light" not in fake.launches
    parts = sorted((tmp_path / "out").rglob("*.parquet"))
    factor_parts = [part for part in parts if "user_factors" in str(part) or "item_factors" in str(part)]
    assert factor_parts, parts
    for part in factor_parts:
        table = pq.read_table(part)
        assert table.schema.field("factors").type.value_type == pa.float32()
        values = np.asarray(table["factors"].combine_chunks().flatten(), dtype=np.float32)
        assert np.array_equal(values, bfloat16.round_float32(values))  # trained in bf16
