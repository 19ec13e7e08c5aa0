"""The native GPU ALS solver: als.cu loaded through CuPy's RawModule, driven half-step by half-step.

CuPy (cupy-cuda13x, the ``gpu`` extra and the image) is imported only when a fit starts, so
the worker imports and runs without it. The model keeps implicit's surface where the worker
uses it: ``fit(matrix, show_progress=..., callback=...)`` with ``callback(iteration, seconds,
loss)``, and ``user_factors`` / ``item_factors`` as numpy arrays afterwards (so recommend and
evaluate take their host path).
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse

from ..errors import WorkerError
from . import bfloat16
from .memory import STAGE_BYTES, check_fits, plan_memory
from .schedule import CHUNK, HEAVY_THRESHOLD, plan

log = logging.getLogger("airflow_gpu.worker")

SOURCE = Path(__file__).with_name("als.cu")
WARPS_PER_BLOCK = 8  # 256 threads: 8 light rows per block share one copy of YtY in shared memory
BLOCKS_PER_SM = 16  # grid-stride loops: enough blocks to fill each SM, few enough to load YtY rarely
# The per-lane arrays live in registers (nvcc's spill check covers 64 and 128); what a GPU takes
# is further bounded by its shared memory (YtY per block): see max_factors.
MAX_FACTORS = 160
# Every kernel of als.cu, by name (the benchmark reports each one's registers and spills). The
# *_bf16 ones (bfloat16 factor storage) are built only for --factor-dtype bfloat16: only they
# need CUDA's cuda_bf16.h, so the float32 solver compiles without any CUDA header.
KERNELS = (
    "cg_light",
    "heavy_partials",
    "heavy_start",
    "heavy_step",
    "count_columns",
    "scatter_columns",
    "row_sums",
    "bm25_confidence",
    "spmv_rows",
    "cg_light_bf16",
    "heavy_partials_bf16",
    "heavy_start_bf16",
    "heavy_step_bf16",
)
FACTOR_DTYPES = bfloat16.DTYPES
FINITE_CHECK_CHUNK = 1 << 26  # values checked at a time: a bool mask of the whole array would cost a byte each


def _cupy() -> Any:  # the cupy module (untyped)
    try:
        import cupy
    except ImportError:
        raise WorkerError(
            "--solver native needs CuPy (cupy-cuda13x), which this environment lacks; install airflow-gpu[gpu] "
            "(the worker image has it), or use --solver implicit"
        ) from None
    return cupy


def gpu_available() -> str | None:
    """None when CuPy sees a CUDA GPU of compute capability 8.0+, else why not (for an error message)."""
    try:
        import cupy
    except ImportError:
        return "CuPy (cupy-cuda13x) is not installed here; install airflow-gpu[gpu] (the worker image has it)"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
        capability = str(cupy.cuda.Device(0).compute_capability)  # "90" for 9.0
        if int(capability) < 80:
            return f"the GPU has compute capability {capability[:-1]}.{capability[-1]}; the native solver needs 8.0 or newer"
    except Exception as exc:  # noqa: BLE001 - no driver, no device: say why
        return f"CuPy cannot reach a CUDA device ({' '.join(str(exc).split())[:160]})"
    return None


def kernels_for(factor_dtype: str) -> tuple[str, ...]:
    """The kernels a fit with factors stored as ``factor_dtype`` loads."""
    return tuple(name for name in KERNELS if factor_dtype == "bfloat16" or not name.endswith("_bf16"))


def build_options(factors: int, factor_dtype: str = "float32") -> tuple[str, ...]:
    """The compiler's options for als.cu (NVRTC here, nvcc in the tests)."""
    return (f"-DFACTORS={factors}", "--std=c++17") + (("-DBF16_FACTORS=1",) if factor_dtype == "bfloat16" else ())


@lru_cache(maxsize=4)
def _module(factors: int, factor_dtype: str = "float32") -> Any:
    cupy = _cupy()
    return cupy.RawModule(code=SOURCE.read_text(), options=build_options(factors, factor_dtype))


def shared_bytes(factors: int) -> int:
    """Dynamic shared memory of cg_light, heavy_start and heavy_step: YtY and one staged vector per warp."""
    return (factors * factors + WARPS_PER_BLOCK * factors) * 4


def max_factors(shared_limit: int) -> int:
    """The most factors whose YtY fits ``shared_limit`` (the device's opt-in shared memory per block):
    155 on an A10G, L4 or RTX (99 KiB), MAX_FACTORS on an A100 or H100."""
    factors = MAX_FACTORS
    while factors > 0 and shared_bytes(factors) > shared_limit:
        factors -= 1
    return factors


def first_non_finite(xp: Any, values: Any, widen: Callable[[Any], Any] | None = None) -> tuple[int, int] | None:
    """(index of the first non-finite value, how many there are) in a 1-D array, or None; a chunk
    at a time, so a 1e9-value array needs no 1 GB mask on the GPU. ``widen``: how a chunk of
    stored values becomes floats (bfloat16 bits)."""
    first, count = None, 0
    for begin in range(0, int(values.shape[0]), FINITE_CHECK_CHUNK):
        chunk = values[begin : begin + FINITE_CHECK_CHUNK]
        finite = xp.isfinite(chunk if widen is None else widen(chunk))
        bad = int(finite.size - xp.count_nonzero(finite))
        if bad and first is None:
            first = begin + int(xp.argmin(finite.view(xp.uint8)))  # the first False
        count += bad
    return None if first is None else (first, count)


def resolve_native_device(requested: str) -> str:
    """The native solver runs on the GPU only: refuse, saying why, rather than fall back silently."""
    if requested == "cpu":
        raise WorkerError("--solver native runs on the GPU only; use --solver implicit with --device cpu")
    why = gpu_available()
    if why is not None:
        raise WorkerError(
            f"--solver native needs CuPy and a CUDA GPU: {why}; or use --solver implicit (it falls back to the CPU)"
        )
    return "gpu"


class NativeAls:
    """ALS by conjugate gradient on the GPU, the same objective and steps as implicit's."""

    def __init__(
        self,
        factors: int = 64,
        regularization: float | None = 0.01,
        iterations: int = 15,
        random_state: int = 0,
        cg_steps: int = 3,
        threshold: int = HEAVY_THRESHOLD,
        chunk: int = CHUNK,
        *,
        regularization_share: float | None = None,
        factor_dtype: str = "float32",
    ) -> None:
        """``regularization=None``: ``regularization_share`` times the largest singular value of the
        confidence matrix, found on the GPU once it is weighted (regularization.auto_regularization's rule).

        ``factor_dtype="bfloat16"``: the user and item factors are held on the GPU as bfloat16 (half
        the memory); every product, Gram matrix and CG step still computes in float32. The factors
        handed back (``user_factors``, ``item_factors``) are float32 either way."""
        if not 1 <= factors <= MAX_FACTORS:  # the device's own bound (shared memory) is checked in fit
            raise WorkerError(
                f"--solver native supports 1 to {MAX_FACTORS} factors, got {factors}; use --solver implicit"
            )
        if factor_dtype not in FACTOR_DTYPES:
            raise WorkerError(f"unknown --factor-dtype '{factor_dtype}'; use {' or '.join(FACTOR_DTYPES)}")
        self.factor_dtype = factor_dtype
        if regularization is None and regularization_share is None:
            raise WorkerError("NativeAls: regularization=None needs regularization_share")
        self.factors, self.iterations = factors, iterations
        self.regularization = None if regularization is None else float(regularization)
        self.regularization_share = regularization_share
        self.sigma: float | None = None  # the largest singular value, when the regularization is automatic
        self.random_state, self.cg_steps, self.threshold, self.chunk = random_state, cg_steps, threshold, chunk
        self.user_factors: np.ndarray | None = None  # set before fit for a warm start, as with implicit
        self.item_factors: np.ndarray | None = None
        self.timings: dict[str, float] = {}

    def fit(
        self,
        user_items: scipy.sparse.csr_matrix,
        show_progress: bool = False,
        callback: Callable[[int, float, float | None], object] | None = None,
        *,
        weighting: str | None = None,
        alpha: float | None = None,
    ) -> None:
        """Train on ``user_items``: confidences, or with ``weighting`` raw counts weighted here on the GPU
        (matrix.confidence's formulas), so the host's single-threaded bm25 pass is skipped."""
        cupy = _cupy()
        matrix = user_items.tocsr()
        users, items = matrix.shape
        self._check_shared_memory(cupy)
        for name, preset in (("user", self.user_factors), ("item", self.item_factors)):
            if preset is not None and not np.isfinite(preset).all():
                raise WorkerError(f"the preset {name} factors hold non-finite values; start from finite factors")
        memory = plan_memory(
            users,
            items,
            matrix.nnz,
            self.factors,
            threshold=self.threshold,
            chunk=self.chunk,
            factor_dtype=self.factor_dtype,
        )
        free, total = cupy.cuda.runtime.memGetInfo()
        check_fits(memory, free, total)
        log.info("train: native solver: %s", memory.describe())

        started = time.perf_counter()
        user_side = self._upload(cupy, matrix)
        cupy.cuda.Device().synchronize()
        self.timings["upload_s"] = time.perf_counter() - started

        started = time.perf_counter()
        kernels = self._kernels(cupy)
        self.timings["compile_s"] = time.perf_counter() - started

        started = time.perf_counter()
        self._refuse_non_finite(cupy, user_side, "")
        if weighting is not None:
            self._weigh(cupy, kernels, user_side, items, weighting, alpha)
            self._refuse_non_finite(cupy, user_side, f" after --weighting {weighting}")
            cupy.cuda.Device().synchronize()
            self.timings["weighting_s"] = time.perf_counter() - started
            started = time.perf_counter()
        item_side = self._transpose(cupy, kernels, user_side, items)
        cupy.cuda.Device().synchronize()
        self.timings["transpose_s"] = time.perf_counter() - started
        started = time.perf_counter()
        if self.regularization is None:
            assert self.regularization_share is not None  # __init__ refuses the two None together
            sigma = self.sigma = self._largest_singular_value(cupy, kernels, user_side, item_side)
            self.regularization = self.regularization_share * sigma
            log.info(
                "train: regularization %.4g (auto: %g x %.4g, the largest singular value of the confidence "
                "matrix, on the GPU)",
                self.regularization,
                self.regularization_share,
                self.sigma,
            )
            self.timings["regularization_s"] = time.perf_counter() - started
            started = time.perf_counter()
        sides = [self._prepare(cupy, user_side), self._prepare(cupy, item_side)]
        X = self._initial(cupy, self.user_factors, users, 0)
        Y = self._initial(cupy, self.item_factors, items, 1)
        cupy.cuda.Device().synchronize()
        self.timings["setup_s"] = time.perf_counter() - started  # row plans, initial factors: on the GPU

        for iteration in range(self.iterations):
            started = time.perf_counter()
            self._half_step(cupy, kernels, sides[0], X, Y)
            self._half_step(cupy, kernels, sides[1], Y, X)
            cupy.cuda.Device().synchronize()
            if callback is not None:
                callback(iteration, time.perf_counter() - started, None)
        widen = (lambda bits: bfloat16.to_float(bits, cupy)) if self.factor_dtype == "bfloat16" else None
        for name, factors in (("user", X), ("item", Y)):  # as implicit checks its factors after a fit
            found = first_non_finite(cupy, factors.reshape(-1), widen)
            if found is not None:
                raise WorkerError(
                    f"the native solver's {name} factors are not finite after {self.iterations} iterations ({found[1]:,} "
                    f"values, the first in {name} row {found[0] // self.factors}): the confidences are too large for "
                    "float32 or the regularization too small; lower --alpha, raise --regularization, or use "
                    "--solver implicit"
                )
        self.user_factors, self.item_factors = self._download(cupy, X), self._download(cupy, Y)

    # -- setup -----------------------------------------------------------------------------

    def _check_shared_memory(self, cupy: Any) -> None:
        """Refuse, before anything is uploaded, factors whose YtY the GPU cannot hold in shared memory."""
        limit = int(cupy.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"])
        if shared_bytes(self.factors) > limit:
            raise WorkerError(
                f"--factors {self.factors} needs {shared_bytes(self.factors):,} bytes of shared memory per block "
                f"for the native solver's YtY, but this GPU allows {limit:,} (its opt-in limit per block); use "
                f"--factors {max_factors(limit)} or fewer, or --solver implicit"
            )

    @staticmethod
    def _refuse_non_finite(cupy: Any, side: dict[str, Any], when: str) -> None:
        """One line naming the first row with a NaN or infinite value: one such row would poison every
        factor through YtY, so the fit does not start."""
        found = first_non_finite(cupy, side["data"])
        if found is None:
            return
        at, count = found
        row = int(cupy.searchsorted(side["indptr"], cupy.asarray([at], dtype=cupy.int64), side="right")[0]) - 1
        raise WorkerError(
            f"user row {row} has a non-finite value{when} ({float(side['data'][at])} at item column "
            f"{int(side['indices'][at])}; {count:,} such values in all); drop or fix them before training"
        )

    @staticmethod
    def _upload(cupy: Any, matrix: scipy.sparse.csr_matrix) -> dict[str, Any]:
        return {
            "indptr": cupy.asarray(matrix.indptr).astype(cupy.int64),
            "indices": cupy.asarray(matrix.indices.astype(np.int32, copy=False)),
            "data": cupy.asarray(matrix.data.astype(np.float32, copy=False)),
            "rows": matrix.shape[0],
        }

    def _kernels(self, cupy: Any) -> dict[str, Any]:
        """Every kernel this fit loads, by its name in als.cu."""
        names = kernels_for(self.factor_dtype)
        try:
            module = _module(self.factors, self.factor_dtype)
            kernels = {name: module.get_function(name) for name in names}
        except Exception as exc:
            if self.factor_dtype == "bfloat16" and "cuda_bf16" in str(exc):
                raise WorkerError(
                    "--factor-dtype bfloat16 needs CUDA's cuda_bf16.h, which CuPy's compiler cannot find here "
                    "(the CUDA headers: a CUDA devel image, or CUDA_PATH set to a toolkit); or use "
                    "--factor-dtype float32"
                ) from None
            raise
        shared = shared_bytes(self.factors)
        for name in (self._solve("cg_light"), self._solve("heavy_start"), self._solve("heavy_step")):
            if shared > 48 * 1024:  # above 48 KiB a kernel must opt in to more dynamic shared memory
                kernels[name].max_dynamic_shared_size_bytes = shared
        kernels["shared"] = shared
        kernels["grid"] = cupy.cuda.Device().attributes["MultiProcessorCount"] * BLOCKS_PER_SM
        return kernels

    def _grid(self, kernels: dict[str, Any], work: int) -> tuple[int]:
        return (max(1, min(kernels["grid"], -(-work // WARPS_PER_BLOCK))),)

    def _weigh(
        self,
        cupy: Any,
        kernels: dict[str, Any],
        side: dict[str, Any],
        columns: int,
        weighting: str,
        alpha: float | None,
    ) -> None:
        """matrix.confidence on the GPU, in place on the uploaded counts: C = 1 + alpha * f(r)."""
        from ..matrix import BM25_B, BM25_K1, DEFAULT_ALPHA, WEIGHTINGS

        if weighting not in WEIGHTINGS:
            raise WorkerError(f"unknown weighting '{weighting}'; use one of {', '.join(WEIGHTINGS)}")
        alpha = DEFAULT_ALPHA[weighting] if alpha is None else float(alpha)
        data, rows = side["data"], side["rows"]
        if weighting == "none":
            data.fill(1.0 + alpha)
        elif weighting == "linear":
            data *= cupy.float32(alpha)
            data += cupy.float32(1)
        elif weighting == "log":
            cupy.log1p(data, out=data)
            data *= cupy.float32(alpha)
            data += cupy.float32(1)
        else:
            sums = cupy.empty(rows, dtype=cupy.float32)
            block = (WARPS_PER_BLOCK * 32,)
            kernels["row_sums"](self._grid(kernels, rows), block, (side["indptr"], data, np.int32(rows), sums))
            mean = float(sums.mean()) if rows else 1.0
            norm = ((1.0 - BM25_B) + BM25_B * sums / cupy.float32(mean or 1.0)).astype(cupy.float32)
            per_item = cupy.bincount(side["indices"], minlength=columns)
            idf = cupy.maximum(float(np.log(max(rows, 1))) - cupy.log1p(per_item), 0).astype(cupy.float32)
            kernels["bm25_confidence"](
                self._grid(kernels, rows),
                block,
                (
                    side["indptr"],
                    side["indices"],
                    data,
                    np.int32(rows),
                    norm,
                    idf,
                    np.float32(BM25_K1),
                    np.float32(alpha),
                ),
            )

    def _transpose(self, cupy: Any, kernels: dict[str, Any], side: dict[str, Any], columns: int) -> dict[str, Any]:
        """The item x user CSR from the user x item one: count, scan, scatter, all on the GPU."""
        nnz = side["indices"].shape[0]
        counts = cupy.zeros(columns + 1, dtype=cupy.uint64)
        threads = 256
        blocks = max(1, min(kernels["grid"] * 8, -(-nnz // threads)))
        kernels["count_columns"]((blocks,), (threads,), (side["indices"], np.int64(nnz), counts[1:]))
        indptr = cupy.cumsum(counts).astype(cupy.int64)
        del counts
        cursor = indptr[:-1].astype(cupy.uint64)
        indices = cupy.empty(nnz, dtype=cupy.int32)
        data = cupy.empty(nnz, dtype=cupy.float32)
        block = WARPS_PER_BLOCK * 32
        kernels["scatter_columns"](
            self._grid(kernels, side["rows"]),
            (block,),
            (side["indptr"], side["indices"], side["data"], np.int32(side["rows"]), cursor, indices, data),
        )
        return {"indptr": indptr, "indices": indices, "data": data, "rows": columns}

    def _largest_singular_value(
        self,
        cupy: Any,
        kernels: dict[str, Any],
        user_side: dict[str, Any],
        item_side: dict[str, Any],
        iterations: int = 16,
    ) -> float:
        """sigma_1 of the confidence matrix C by power iteration on C'C, as regularization.largest_singular_value
        does on the host, but over the whole matrix (the host takes a sample of rows): C v over the
        user rows, C'u over the item rows, each a pass of spmv_rows."""
        users, items = user_side["rows"], item_side["rows"]
        if users == 0 or items == 0 or user_side["indices"].shape[0] == 0:
            return 0.0
        rng = cupy.random.RandomState(int(self.random_state or 0))
        v = rng.standard_normal(items, dtype=cupy.float32)
        v /= cupy.float32(float(cupy.linalg.norm(v)))
        u = cupy.empty(users, dtype=cupy.float32)
        w = cupy.empty(items, dtype=cupy.float32)
        block = (WARPS_PER_BLOCK * 32,)
        squared = 0.0
        for _ in range(iterations):
            kernels["spmv_rows"](
                self._grid(kernels, users),
                block,
                (user_side["indptr"], user_side["indices"], user_side["data"], np.int32(users), v, u),
            )
            squared = float(u @ u)  # v is a unit vector: |C v|^2 tends to sigma_1^2
            kernels["spmv_rows"](
                self._grid(kernels, items),
                block,
                (item_side["indptr"], item_side["indices"], item_side["data"], np.int32(items), u, w),
            )
            norm = float(cupy.linalg.norm(w))
            if norm == 0.0:
                break
            cupy.multiply(w, cupy.float32(1.0 / norm), out=v)
        return float(np.sqrt(squared))

    def _prepare(self, cupy: Any, side: dict[str, Any]) -> dict[str, Any]:
        schedule = plan(side["indptr"], self.threshold, self.chunk, xp=cupy)
        heavy = int(schedule.heavy_rows.shape[0])
        side["schedule"] = schedule
        side["R"] = cupy.empty((heavy, self.factors), dtype=cupy.float32)
        side["P"] = cupy.empty((heavy, self.factors), dtype=cupy.float32)
        side["rs"] = cupy.empty(heavy, dtype=cupy.float32)
        side["active"] = cupy.empty(heavy, dtype=cupy.int32)
        side["partials"] = cupy.empty((schedule.chunks, self.factors), dtype=cupy.float32)
        return side

    def _solve(self, name: str) -> str:
        """The name in als.cu of solve kernel ``name`` for this fit's factor storage."""
        return f"{name}_bf16" if self.factor_dtype == "bfloat16" else name

    def _initial(self, cupy: Any, preset: np.ndarray | None, rows: int, offset: int) -> Any:
        """The factors as stored on the GPU: float32, or bfloat16 bits (uint16) rounded to nearest even."""
        if preset is not None:
            if preset.shape != (rows, self.factors):
                raise WorkerError(f"preset factors have shape {preset.shape}, expected {(rows, self.factors)}")
            preset = np.ascontiguousarray(preset, dtype=np.float32)
            return cupy.asarray(bfloat16.to_bits(preset) if self.factor_dtype == "bfloat16" else preset)
        # implicit's CPU scale (uniform in [0, 0.01)), drawn on the GPU rather than the host
        rng = cupy.random.RandomState(int(self.random_state or 0) * 2 + offset)
        if self.factor_dtype == "float32":
            factors = rng.random_sample((rows, self.factors), dtype=cupy.float32)
            factors *= cupy.float32(0.01)  # in place: the factors are the largest arrays but the matrix's
            return factors
        # drawn a stretch of rows at a time, so no float32 copy of the whole matrix is ever held
        stored = cupy.empty((rows, self.factors), dtype=cupy.uint16)
        step = max(1, STAGE_BYTES // (4 * self.factors))
        for begin in range(0, rows, step):
            drawn = rng.random_sample((min(step, rows - begin), self.factors), dtype=cupy.float32)
            drawn *= cupy.float32(0.01)
            stored[begin : begin + drawn.shape[0]] = bfloat16.to_bits(drawn, cupy)
        return stored

    def _download(self, cupy: Any, factors: Any) -> np.ndarray:
        """float32 on the host whatever the storage: the outputs and evaluate read float32."""
        host: np.ndarray = cupy.asnumpy(factors)
        return bfloat16.to_float(host) if self.factor_dtype == "bfloat16" else host

    def _gram(self, cupy: Any, Y: Any) -> Any:
        """Y'Y + lambda I in float32. bfloat16 factors are widened a stretch of rows at a time (exact)
        and their products summed in float32, so the Gram costs no float32 copy of Y."""
        if self.factor_dtype == "float32":
            yty = Y.T @ Y
        else:
            yty = cupy.zeros((self.factors, self.factors), dtype=cupy.float32)
            step = max(1, STAGE_BYTES // (4 * self.factors))
            for begin in range(0, int(Y.shape[0]), step):
                rows = bfloat16.to_float(Y[begin : begin + step], cupy)
                yty += rows.T @ rows
        yty += cupy.eye(self.factors, dtype=cupy.float32) * cupy.float32(self.regularization)
        return cupy.ascontiguousarray(yty)

    # -- one half-iteration -----------------------------------------------------------------

    def _half_step(self, cupy: Any, kernels: dict[str, Any], side: dict[str, Any], X: Any, Y: Any) -> None:
        """New X for every row of this side, Y fixed: YtY once, light rows, then the heavy rows' chunks."""
        yty = self._gram(cupy, Y)
        schedule = side["schedule"]
        block, shared = (WARPS_PER_BLOCK * 32,), kernels["shared"]
        light = int(schedule.light_rows.shape[0])
        if light:
            kernels[self._solve("cg_light")](
                self._grid(kernels, light),
                block,
                (
                    side["indptr"],
                    side["indices"],
                    side["data"],
                    schedule.light_rows,
                    np.int32(light),
                    X,
                    Y,
                    yty,
                    np.int32(self.cg_steps),
                ),
                shared_mem=shared,
            )
        heavy = int(schedule.heavy_rows.shape[0])
        if not heavy:
            return
        chunks = schedule.chunks

        def partial_args(residual: int) -> tuple[Any, ...]:  # the same arguments but one, four times
            return (
                side["indices"],
                side["data"],
                schedule.heavy_rows,
                schedule.chunk_heavy,
                schedule.chunk_start,
                schedule.chunk_end,
                np.int32(chunks),
                X,
                side["P"],
                side["active"],
                Y,
                np.int32(residual),
                side["partials"],
            )

        state = (side["R"], side["P"], side["rs"], side["active"])
        kernels[self._solve("heavy_partials")](self._grid(kernels, chunks), block, partial_args(1))
        kernels[self._solve("heavy_start")](
            self._grid(kernels, heavy),
            block,
            (schedule.heavy_rows, schedule.chunk_first, np.int32(heavy), X, yty, side["partials"], *state),
            shared_mem=shared,
        )
        for _ in range(self.cg_steps):
            kernels[self._solve("heavy_partials")](self._grid(kernels, chunks), block, partial_args(0))
            kernels[self._solve("heavy_step")](
                self._grid(kernels, heavy),
                block,
                (schedule.heavy_rows, schedule.chunk_first, np.int32(heavy), X, yty, side["partials"], *state),
                shared_mem=shared,
            )
