"""solver.py's driving of als.cu, with only the GPU replaced.

``FakeCupy`` is numpy behind CuPy's names, and its RawModule hands out kernels that (1) check
every argument against the parameter list parsed from als.cu itself (order, dtype, array or
scalar), and (2) do what the CUDA kernel does, written from its text, row by row on the host.
So a loader that passes arguments in the wrong order or of the wrong width fails here, and
so does a launch sequence that does not add up to the reference's results. What this cannot
check is the CUDA itself: tests/integration/test_gpu_native_emulated.py runs als.cu on the CPU,
and benchmarks/gpu_solver.py on a GPU.
"""

from __future__ import annotations

import re
import types

import numpy as np
import pytest

from airflow_gpu.worker.gpu import bfloat16, reference, solver
from tests.support.native_data import BF16_SPACING, ROUNDING, confidence_with_heavy_rows, implicit_fit, relative

EPS = 1e-20
PARAM_TYPES = {  # als.cu parameter type -> (is an array, numpy dtype)
    "i64*": (True, np.int64),
    "int*": (True, np.int32),
    "float*": (True, np.float32),
    "__nv_bfloat16*": (True, np.uint16),  # bfloat16 factors: CuPy holds them as their uint16 bits
    "unsigned long long*": (True, np.uint64),
    "int": (False, np.int32),
    "i64": (False, np.int64),
    "float": (False, np.float32),
}


def signatures() -> dict[str, list[tuple[bool, type]]]:
    source = solver.SOURCE.read_text()
    found = {}
    for name, params in re.findall(r'extern "C" __global__ void (\w+)\(([^)]*)\)', source):
        kinds = []
        for param in params.split(","):
            words = param.replace("__restrict__", "").replace("const", "").split()
            kind = " ".join(words[:-1]).replace(" *", "*")
            if words[-1].startswith("*"):
                kind += "*"
            kinds.append(PARAM_TYPES[kind])
        found[name] = kinds
    return found


# -- the kernels, from als.cu's text -------------------------------------------------------


def sparse_term(indices, data, Y, start, end, v, residual):
    acc = np.zeros(Y.shape[1], np.float32)
    for n in range(start, end):
        y = Y[indices[n]]
        conf = data[n]
        weight = (abs(conf) - np.float32(1)) * np.float32(y @ v)
        if residual:
            weight = max(conf, np.float32(0)) - weight
        acc += np.float32(weight) * y
    return acc


def cg_light(indptr, indices, data, rows, n_rows, X, Y, yty, cg_steps):
    for row in rows[:n_rows]:
        start, end = indptr[row], indptr[row + 1]
        if start == end:
            X[row] = 0
            continue
        x = X[row].copy()
        r = sparse_term(indices, data, Y, start, end, x, True) - yty @ x
        p = r.copy()
        rsold = r @ r
        if rsold < EPS:
            continue
        for _ in range(cg_steps):
            ap = yty @ p + sparse_term(indices, data, Y, start, end, p, False)
            alpha = rsold / (p @ ap)
            x += alpha * p
            r -= alpha * ap
            rsnew = r @ r
            if rsnew < EPS:
                break
            p = r + (rsnew / rsold) * p
            rsold = rsnew
        X[row] = x


def heavy_partials(
    indices, data, heavy_rows, chunk_heavy, chunk_start, chunk_end, n_chunks, X, P, active, Y, residual, partials
):
    for chunk in range(n_chunks):
        h = chunk_heavy[chunk]
        if not residual and not active[h]:
            continue
        v = X[heavy_rows[h]] if residual else P[h]
        partials[chunk] = sparse_term(indices, data, Y, chunk_start[chunk], chunk_end[chunk], v, bool(residual))


def heavy_start(heavy_rows, chunk_first, n_heavy, X, yty, partials, R, P, rs, active):
    for h in range(n_heavy):
        r = partials[chunk_first[h] : chunk_first[h + 1]].sum(axis=0, dtype=np.float32) - yty @ X[heavy_rows[h]]
        R[h] = P[h] = r
        rs[h] = r @ r
        active[h] = rs[h] >= EPS


def heavy_step(heavy_rows, chunk_first, n_heavy, X, yty, partials, R, P, rs, active):
    for h in range(n_heavy):
        if not active[h]:
            continue
        row = heavy_rows[h]
        ap = yty @ P[h] + partials[chunk_first[h] : chunk_first[h + 1]].sum(axis=0, dtype=np.float32)
        alpha = rs[h] / (P[h] @ ap)
        X[row] += alpha * P[h]
        R[h] -= alpha * ap
        rsnew = R[h] @ R[h]
        if rsnew < EPS:
            active[h] = 0
            continue
        P[h] = R[h] + (rsnew / rs[h]) * P[h]
        rs[h] = rsnew


def count_columns(indices, nnz, counts):
    np.add.at(counts, indices[:nnz], 1)


def scatter_columns(indptr, indices, data, n_rows, cursor, out_indices, out_data):
    for row in range(n_rows):
        for n in range(indptr[row], indptr[row + 1]):
            at = cursor[indices[n]]
            cursor[indices[n]] += 1
            out_indices[at] = row
            out_data[at] = data[n]


def row_sums(indptr, data, n_rows, sums):
    for row in range(n_rows):
        sums[row] = data[indptr[row] : indptr[row + 1]].sum(dtype=np.float32)


def bm25_confidence(indptr, indices, data, n_rows, norm, idf, k1, alpha):
    for row in range(n_rows):
        span = slice(indptr[row], indptr[row + 1])
        r = data[span]
        data[span] = 1 + alpha * (r * (k1 + 1) / (k1 * norm[row] + r) * idf[indices[span]])


def spmv_rows(indptr, indices, data, n_rows, v, out):
    for row in range(n_rows):
        span = slice(indptr[row], indptr[row + 1])
        out[row] = data[span] @ v[indices[span]]


def stored_as_bf16(kernel, factors: tuple[int, ...], stored: tuple[int, ...]):
    """The *_bf16 kernel of ``kernel``: the arguments at ``factors`` are bfloat16 bits, widened to
    compute, and those at ``stored`` are written back rounded to nearest even, once per launch."""

    def run(*args):
        wide = list(args)
        for n in factors:
            wide[n] = bfloat16.to_float(args[n])
        kernel(*wide)
        for n in stored:
            args[n][...] = bfloat16.to_bits(wide[n])

    run.__name__ = f"{kernel.__name__}_bf16"
    return run


EMULATED = {
    f.__name__: f
    for f in (
        cg_light,
        heavy_partials,
        heavy_start,
        heavy_step,
        count_columns,
        scatter_columns,
        row_sums,
        bm25_confidence,
        spmv_rows,
        stored_as_bf16(cg_light, factors=(5, 6), stored=(5,)),
        stored_as_bf16(heavy_partials, factors=(7, 10), stored=()),
        stored_as_bf16(heavy_start, factors=(3,), stored=()),
        stored_as_bf16(heavy_step, factors=(3,), stored=(3,)),
    )
}


class FakeKernel:
    def __init__(self, name: str, signature, launches: list) -> None:
        self.name, self.signature, self.launches = name, signature, launches
        self.max_dynamic_shared_size_bytes = 0

    def __call__(self, grid, block, args, shared_mem=0):
        assert len(args) == len(self.signature), f"{self.name}: {len(args)} arguments for {len(self.signature)}"
        for n, (arg, (is_array, dtype)) in enumerate(zip(args, self.signature)):
            if is_array:
                assert isinstance(arg, np.ndarray) and arg.dtype == dtype and arg.flags.c_contiguous, (
                    f"{self.name} argument {n}: {type(arg).__name__} {getattr(arg, 'dtype', '')}, expected {dtype}"
                )
            else:
                assert type(arg) is dtype, f"{self.name} argument {n}: {type(arg).__name__}, expected {dtype.__name__}"
        assert len(grid) == 1 and grid[0] >= 1 and block[0] % 32 == 0
        if self.name.removesuffix("_bf16") in ("cg_light", "heavy_start", "heavy_step"):
            factors = args[5].shape[1] if self.name.startswith("cg_light") else args[3].shape[1]
            assert shared_mem >= (factors * factors + block[0] // 32 * factors) * 4  # YtY + a vector per warp
        self.launches.append(self.name)
        EMULATED[self.name](*args)


class RandomState:
    """cupy.random.RandomState's random_sample, which takes a dtype (numpy's does not)."""

    def __init__(self, seed: int) -> None:
        self.generator = np.random.default_rng(seed)

    def random_sample(self, size, dtype=np.float64):
        # held here too, so numpy cannot reuse the draw as the temporary of `draw * scale`: CuPy never does
        self.drawn = self.generator.random(size, dtype=dtype)
        return self.drawn

    def standard_normal(self, size, dtype=np.float64):
        return self.generator.standard_normal(size, dtype=dtype)


class FakeCupy(types.SimpleNamespace):
    def __init__(self, free_bytes: int, shared_limit: int = 232_448) -> None:
        super().__init__()
        self.launches: list[str] = []
        self.options = None
        self.ndarray = np.ndarray
        sig = signatures()
        fake = self

        class RawModule:
            def __init__(self, code, options):
                assert code == solver.SOURCE.read_text()
                fake.options = options

            def get_function(self, name):
                return FakeKernel(name, sig[name], fake.launches)

        self.RawModule = RawModule
        # host <-> device always copies, as it does on a real GPU
        self.asarray = lambda a, dtype=None: np.array(a, dtype=dtype)
        self.asnumpy = lambda a: np.array(a)
        self.random = types.SimpleNamespace(RandomState=RandomState)
        device = types.SimpleNamespace(
            synchronize=lambda: None,
            attributes={"MultiProcessorCount": 2, "MaxSharedMemoryPerBlockOptin": shared_limit},
        )
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(memGetInfo=lambda: (free_bytes, free_bytes * 2)), Device=lambda *a: device
        )

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(free_bytes=1 << 34, shared_limit=232_448):
        fake = FakeCupy(free_bytes, shared_limit)
        monkeypatch.setattr(solver, "_cupy", lambda: fake)
        solver._module.cache_clear()
        return fake

    yield install
    solver._module.cache_clear()


def test_every_kernel_in_als_cu_has_a_checked_signature():
    assert set(signatures()) == set(EMULATED) == set(solver.KERNELS)


def test_native_fit_with_bfloat16_factors_drives_the_bf16_kernels_to_the_bf16_reference(fake_gpu):
    """--factor-dtype bfloat16: the module is built with the bf16 kernels, only they solve, the factors
    travel as uint16 bits (the signatures check it), and the result is the bf16 reference's."""
    fake = fake_gpu()
    matrix = confidence_with_heavy_rows(8_000, heavy_users=2, seed=4)
    users, items = matrix.shape
    rng = np.random.default_rng(2)
    X0 = rng.random((users, 8), dtype=np.float32) * 0.01
    Y0 = rng.random((items, 8), dtype=np.float32) * 0.01
    model = solver.NativeAls(
        factors=8, regularization=2.0, iterations=2, threshold=20, chunk=8, factor_dtype="bfloat16"
    )
    model.user_factors, model.item_factors = X0, Y0
    model.fit(matrix)
    assert fake.options == ("-DFACTORS=8", "--std=c++17", "-DBF16_FACTORS=1")
    half = ["cg_light_bf16", "heavy_partials_bf16", "heavy_start_bf16"] + ["heavy_partials_bf16", "heavy_step_bf16"] * 3
    assert fake.launches == ["count_columns", "scatter_columns"] + half * 4
    # handed back as float32, each value a bfloat16 one
    for ours in (model.user_factors, model.item_factors):
        assert ours.dtype == np.float32 and np.array_equal(ours, bfloat16.round_float32(ours))
    X, Y = reference.fit(matrix, X0, Y0, 2.0, 2, threshold=20, chunk=8, factor_dtype="bfloat16")
    X32, X64 = implicit_fit(matrix, X0, Y0, 2.0, 2)[0], implicit_fit(matrix, X0, Y0, 2.0, 2, dtype=np.float64)[0]
    bound = max(ROUNDING * relative(X32, X64), 1e-5) + BF16_SPACING
    assert relative(model.user_factors, X) <= bound and relative(model.item_factors, Y) <= bound


def test_native_fit_drives_the_kernels_to_the_reference_result(fake_gpu):
    fake = fake_gpu()
    matrix = confidence_with_heavy_rows(8_000, heavy_users=2, seed=4)
    users, items = matrix.shape
    rng = np.random.default_rng(2)
    X0 = rng.random((users, 8), dtype=np.float32) * 0.01
    Y0 = rng.random((items, 8), dtype=np.float32) * 0.01
    seen = []
    model = solver.NativeAls(factors=8, regularization=2.0, iterations=2, threshold=20, chunk=8)
    model.user_factors, model.item_factors = X0, Y0
    model.fit(matrix, callback=lambda it, seconds, loss: seen.append((it, loss)))
    X, Y = reference.fit(matrix, X0, Y0, 2.0, 2, threshold=20, chunk=8)
    assert fake.options == ("-DFACTORS=8", "--std=c++17")
    assert seen == [(0, None), (1, None)]
    # per half-iteration: cg_light, then the residual pass and 3 CG steps of the heavy rows
    half = ["cg_light", "heavy_partials", "heavy_start"] + ["heavy_partials", "heavy_step"] * 3
    assert fake.launches == ["count_columns", "scatter_columns"] + half * 4
    # as close as float32 rounding allows (the bound of tests/unit/test_gpu_native_reference.py)
    X32, Y32 = implicit_fit(matrix, X0, Y0, 2.0, 2)
    X64, Y64 = implicit_fit(matrix, X0, Y0, 2.0, 2, dtype=np.float64)
    for ours, theirs, f32, f64 in ((model.user_factors, X, X32, X64), (model.item_factors, Y, Y32, Y64)):
        assert relative(ours, theirs) <= max(ROUNDING * relative(f32, f64), 1e-5)


@pytest.mark.parametrize("weighting", ["bm25", "log"])
def test_weighting_on_the_gpu_matches_the_hosts(fake_gpu, weighting):
    from airflow_gpu.worker.matrix import confidence

    fake = fake_gpu()
    counts = confidence_with_heavy_rows(8_000, heavy_users=2, seed=4)
    counts.data = np.random.default_rng(0).integers(1, 30, counts.nnz).astype(np.float32)  # play counts
    model = solver.NativeAls(factors=4)
    side = model._upload(fake, counts)
    model._weigh(fake, model._kernels(fake), side, counts.shape[1], weighting, None)
    expected = confidence(counts, weighting).data
    assert np.allclose(side["data"], expected, rtol=1e-5) and not np.allclose(expected, counts.data)
    assert ("bm25_confidence" in fake.launches) == (weighting == "bm25")


def test_native_fit_refuses_a_matrix_that_will_not_fit_before_uploading(fake_gpu):
    fake = fake_gpu(free_bytes=1 << 20)
    matrix = confidence_with_heavy_rows(8_000, heavy_users=1, seed=4)
    with pytest.raises(solver.WorkerError, match="will not fit"):
        solver.NativeAls(factors=8, iterations=1).fit(matrix)
    assert fake.launches == []


def test_native_fit_refuses_factors_beyond_the_gpus_shared_memory_naming_its_limit(fake_gpu):
    fake = fake_gpu(shared_limit=101_376)  # 99 KiB: an A10G, L4 or RTX card
    matrix = confidence_with_heavy_rows(2_000, heavy_users=1, seed=4)
    assert solver.max_factors(101_376) == 155 and solver.max_factors(232_448) == solver.MAX_FACTORS
    with pytest.raises(solver.WorkerError) as refused:
        solver.NativeAls(factors=156, iterations=1).fit(matrix)
    message = str(refused.value)
    assert "this GPU allows 101,376" in message and "--factors 155 or fewer" in message and "\n" not in message
    assert fake.launches == []


def test_native_fit_refuses_a_non_finite_value_naming_its_row_before_training(fake_gpu):
    fake = fake_gpu()
    matrix = confidence_with_heavy_rows(2_000, heavy_users=1, seed=4)
    matrix.data[matrix.indptr[7] + 1] = np.nan
    with pytest.raises(solver.WorkerError) as refused:
        solver.NativeAls(factors=4, iterations=1).fit(matrix)
    message = str(refused.value)
    assert message.startswith("user row 7 has a non-finite value (nan at item column ") and "\n" not in message
    assert "1 such values" in message
    assert fake.launches == []


def test_native_fit_refuses_a_value_its_weighting_makes_non_finite(fake_gpu):
    fake = fake_gpu()
    counts = confidence_with_heavy_rows(2_000, heavy_users=1, seed=4)
    counts.data[:] = 3
    counts.data[counts.indptr[5]] = -2  # log1p(-2) is nan
    with (
        np.errstate(invalid="ignore"),
        pytest.raises(solver.WorkerError, match=r"^user row 5 has a non-finite value after --weighting log \(nan"),
    ):
        solver.NativeAls(factors=4, iterations=1).fit(counts, weighting="log")
    assert "cg_light" not in fake.launches


def test_native_fit_checks_that_its_factors_are_finite(fake_gpu):
    fake_gpu()
    matrix = confidence_with_heavy_rows(2_000, heavy_users=1, seed=4)
    matrix.data[:] = 3e38  # finite, but the sums overflow float32
    with (
        np.errstate(all="ignore"),
        pytest.raises(solver.WorkerError, match="factors are not finite after 1 iterations"),
    ):
        solver.NativeAls(factors=4, iterations=1, threshold=20, chunk=8).fit(matrix)


def test_native_initial_factors_are_scaled_in_place(fake_gpu):
    """The factors are the largest arrays after the matrix: drawing them must not hold a second copy."""
    import tracemalloc

    fake = fake_gpu()
    model = solver.NativeAls(factors=8)
    tracemalloc.start()
    try:
        factors = model._initial(fake, None, 200_000, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert factors.dtype == np.float32 and 0 <= factors.min() and factors.max() < 0.01
    assert peak < 1.25 * factors.nbytes, (peak, factors.nbytes)


def test_bf16_factors_without_cudas_bf16_header_are_refused_in_one_line(fake_gpu, monkeypatch):
    """The *_bf16 kernels include cuda_bf16.h; where NVRTC cannot find it (no CUDA headers in the
    image), the fit stops with the fix rather than a compiler log. float32 never includes it."""
    fake = fake_gpu()

    def without_header(factors, factor_dtype="float32"):
        if factor_dtype == "bfloat16":
            raise RuntimeError('als.cu(35): catastrophic error: cannot open source file "cuda_bf16.h"\n1 error')
        return fake.RawModule(solver.SOURCE.read_text(), solver.build_options(factors, factor_dtype))

    without_header.cache_clear = lambda: None  # type: ignore[attr-defined]  # the fixture clears the cache
    monkeypatch.setattr(solver, "_module", without_header)
    with pytest.raises(solver.WorkerError) as refused:
        solver.NativeAls(factors=8, factor_dtype="bfloat16")._kernels(fake)
    message = str(refused.value)
    assert "needs CUDA's cuda_bf16.h" in message and message.endswith("or use --factor-dtype float32")
    assert "\n" not in message
    assert "cg_light" in solver.NativeAls(factors=8)._kernels(fake)  # float32 builds without it
