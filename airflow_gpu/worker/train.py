"""implicit ALS on the GPU or the CPU, behind one function, with the GPU's limits checked first.

Both devices get the same confidence matrix (see ``matrix.confidence``) and implicit's own
alpha stays at 1, so they fit the same objective. Before touching the GPU we refuse sizes
that implicit's int32-indexed CUDA kernels cannot hold, with a message that says what to
change, rather than letting them overflow or fail deep inside CUDA.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.sparse

from . import early_stop as stopping
from .errors import WorkerError
from .gpu import bfloat16

log = logging.getLogger("airflow_gpu.worker")

DEVICES = ("auto", "gpu", "cpu")
SOLVERS = ("implicit", "native")  # native: our own CUDA solver (worker/gpu/), GPU only
FACTOR_DTYPES = bfloat16.DTYPES  # how the native solver stores the factors on the GPU
INT32_LIMIT = 2**31
MIN_COMPUTE_CAPABILITY = (8, 0)  # the CUDA 13 build of implicit ships sm_80+ kernels only


# The default regularization is this share of the largest singular value of the confidence
# matrix (see auto_regularization): the best mean precision@10 over four tuning sets, three
# synthetic shapes and MovieLens 100K (benchmarks/weighting.py; benchmarks/README.md, "Weighting").
AUTO_REGULARIZATION_SHARE = 0.2


@dataclass(frozen=True)
class TrainParams:
    factors: int = 64
    iterations: int = 15
    regularization: float | None = None  # None: scaled to the data (auto_regularization)
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # CPU threads; 0 means every core
    loss: bool = True  # compute the training loss after each iteration (costs about one extra pass)
    solver: str = "implicit"  # "native" trains with worker/gpu's CUDA solver (no training loss)
    # How the native solver stores the factors on the GPU: bfloat16 halves them (fp32 arithmetic
    # throughout); the factors it hands back, and the outputs, are float32 either way.
    factor_dtype: str = "float32"
    # Stop before `iterations` once the loss improves by less than this share for `patience`
    # iterations in a row (early_stop.py); 0 runs every iteration.
    early_stop: float = stopping.DEFAULT_TOLERANCE
    patience: int = stopping.DEFAULT_PATIENCE
    # Called after each iteration with (iteration from 0, its seconds, its loss or None), on the
    # training thread, once the result has recorded them: for progress and checkpoints of figures.
    on_iteration: Callable[[int, float, float | None], None] | None = field(default=None, compare=False, repr=False)

    def check(self) -> None:
        if self.factors < 1:
            raise WorkerError(f"--factors must be at least 1, got {self.factors}")
        if self.iterations < 1:
            raise WorkerError(f"--iterations must be at least 1, got {self.iterations}")
        if self.regularization is not None and (not np.isfinite(self.regularization) or self.regularization < 0):
            raise WorkerError(f"--regularization must be auto or a number >= 0, got {self.regularization}")
        if not 0 <= self.early_stop < 1 or self.patience < 1:
            raise WorkerError(
                f"--early-stop must be in [0, 1) and --patience at least 1, got {self.early_stop} and {self.patience}"
            )
        if self.device not in DEVICES:
            raise WorkerError(f"unknown --device '{self.device}'; use auto, gpu or cpu")
        if self.solver not in SOLVERS:
            raise WorkerError(f"unknown --solver '{self.solver}'; use implicit or native")
        if self.factor_dtype not in FACTOR_DTYPES:
            raise WorkerError(f"unknown --factor-dtype '{self.factor_dtype}'; use {' or '.join(FACTOR_DTYPES)}")
        if self.factor_dtype != "float32" and self.solver != "native":
            raise WorkerError(
                f"--factor-dtype {self.factor_dtype} needs --solver native (implicit's solvers store float32 "
                "factors); add --solver native, or drop --factor-dtype"
            )
        if self.solver == "native":  # here, so the pipeline refuses before it reads any data
            from .gpu.solver import resolve_native_device

            resolve_native_device(self.device)


@dataclass
class TrainResult:
    model: Any  # an implicit model: its recommend/similar_items run on the device it trained on
    device: str
    regularization: float = 0.0  # the value trained with (auto resolved)
    loss: list[float | None] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stop_reason: str = stopping.REACHED_MAXIMUM
    # The native solver's steps before its first iteration, on the GPU (upload_s, compile_s,
    # weighting_s, transpose_s, regularization_s, setup_s), and where the weighting ran.
    setup_seconds: dict[str, float] = field(default_factory=dict)
    weighted_on: str = "host"
    warm_start: bool = False  # began from another fit's factors (fit's ``start``)

    @property
    def iterations_run(self) -> int:
        return len(self.iteration_seconds)

    def user_factors(self) -> np.ndarray:
        return _host(self.model.user_factors)

    def item_factors(self) -> np.ndarray:
        return _host(self.model.item_factors)


def _host(factors: Any) -> np.ndarray:  # numpy, or implicit's GPU Matrix
    return factors if isinstance(factors, np.ndarray) else factors.to_numpy()


_gpu_unavailable: list[str] = []


def _gpu_als_class() -> type[Any] | None:
    """implicit's GPU ALS class, or None when no usable CUDA device is visible. Tests replace this."""
    with warnings.catch_warnings(record=True) as caught:
        # implicit warns on import when its CUDA extension cannot load (no driver, no cuBLAS):
        # expected on CPU machines, so keep the reason for --device gpu's error instead.
        warnings.simplefilter("always")
        import implicit.gpu
    if caught and not _gpu_unavailable:
        _gpu_unavailable.extend(str(w.message) for w in caught)
    if not implicit.gpu.HAS_CUDA:
        return None
    from implicit.gpu.als import AlternatingLeastSquares

    als_class: type[Any] = AlternatingLeastSquares  # implicit is untyped
    return als_class


def _compute_capability() -> tuple[int, int] | None:
    """The first GPU's compute capability, if cuda-python can tell."""
    from .run_info import device_properties

    props = device_properties()
    return None if props is None else (int(props.major), int(props.minor))


def resolve_device(requested: str) -> str:
    """``gpu`` when asked for or when ``auto`` finds a usable GPU; otherwise ``cpu``."""
    gpu = _gpu_als_class() is not None
    capability = _compute_capability() if gpu else None
    too_old = capability is not None and capability < MIN_COMPUTE_CAPABILITY
    if requested == "gpu":
        if not gpu:
            why = f" ({'; '.join(_gpu_unavailable)[:200]})" if _gpu_unavailable else ""
            raise WorkerError(
                f"--device gpu, but implicit sees no CUDA GPU (implicit.gpu.HAS_CUDA is False{why}); check the job has "
                "a GPU and the image has rmm-cu13, or use --device cpu"
            )
        if too_old:
            assert capability is not None  # too_old says so
            raise WorkerError(
                f"--device gpu, but the GPU has compute capability {capability[0]}.{capability[1]} and implicit's CUDA 13 "
                "build needs 8.0 or newer (A10G, A100, L4, L40S, H100, H200); use a newer GPU or --device cpu"
            )
        return "gpu"
    if requested == "auto" and gpu and not too_old:
        return "gpu"
    if requested == "auto" and too_old:
        assert capability is not None  # too_old says so
        log.warning("train: GPU compute capability %d.%d is below 8.0; training on the CPU", *capability)
    return "cpu"


def check_gpu_limits(users: int, items: int, nnz: int, factors: int) -> None:
    """Refuse sizes whose GPU arrays would need indices of 2^31 or more."""
    problems = []
    if users * factors >= INT32_LIMIT:
        problems.append(f"users x factors = {users:,} x {factors} = {users * factors:,}")
    if items * factors >= INT32_LIMIT:
        problems.append(f"items x factors = {items:,} x {factors} = {items * factors:,}")
    if nnz >= INT32_LIMIT:
        problems.append(f"interactions = {nnz:,}")
    if not problems:
        return
    fitting = (INT32_LIMIT - 1) // max(users, items, 1)
    fewer = f"--factors {fitting} or fewer, or " if nnz < INT32_LIMIT and fitting >= 1 else ""
    raise WorkerError(
        f"too large for implicit's GPU kernels, which index with int32: {'; '.join(problems)} reaches 2^31 "
        f"({INT32_LIMIT:,}); use {fewer}--device cpu"
    )


def largest_singular_value(
    matrix: scipy.sparse.csr_matrix, *, iterations: int = 16, max_nnz: int = 1 << 22, seed: int = 0
) -> float:
    """The largest singular value of a sparse matrix, by power iteration on a sample of its rows.

    A uniform sample of a share f of the rows has a Gram matrix close to f times the whole
    one, so sigma_1 is sqrt(sigma_1(sample)^2 / f): a few million stored values settle it
    to a few per cent, at any size. Power iteration approaches sigma_1 from below, and when
    the top of the spectrum is flat it lands between sigma_2 and sigma_1, which is as good here.
    """
    rng = np.random.default_rng(seed)
    rows = matrix.shape[0]
    share = 1.0
    if matrix.nnz > max_nnz:
        chosen = np.flatnonzero(rng.random(rows) < max_nnz / matrix.nnz)
        if len(chosen) >= 2_000:
            matrix, share = matrix[chosen], len(chosen) / rows
    if matrix.nnz == 0:
        return 0.0
    transposed = matrix.T  # a CSC view: no copy
    v = rng.standard_normal(matrix.shape[1]).astype(np.float32)
    v /= np.linalg.norm(v)
    squared = 0.0
    for _ in range(iterations):
        u = matrix @ v
        squared = float(u @ u)  # v is a unit vector: ||C v||^2 tends to sigma_1^2
        w = transposed @ u
        norm = float(np.linalg.norm(w))
        if norm == 0.0:
            break
        v = (w / norm).astype(np.float32, copy=False)
    return float(np.sqrt(squared / share))


def auto_regularization(confidence: scipy.sparse.csr_matrix, seed: int = 0) -> tuple[float, float]:
    """(regularization, sigma_1): a fixed share of the regularization at which ALS learns nothing.

    With factors near zero, an ALS half-step maps the other side's factors through the
    confidence matrix C divided by the regularization (x_u ~ sum_i c_ui y_i / lambda), so
    factors grow only while lambda is below C's largest singular value sigma_1, and every
    factor dimension whose singular value is below lambda is shrunk away. sigma_1 thus sets
    the scale of useful regularization whatever the data's size, density and weighting: on
    the tuning sets the best lambda lay at 10-30% of it, and ALS fell to popularity's level
    from about 35-45%. No constant serves them all: the best for MovieLens 100K (about 40)
    is a seventh of the best for the synthetic data at 1M interactions (about 300), and a
    regularization that is good for the same generator at 10M (600 or more) wipes out the
    1M model (benchmarks/README.md, "Weighting").
    """
    sigma = largest_singular_value(confidence, seed=seed)
    return AUTO_REGULARIZATION_SHARE * sigma, sigma


def _blas_single_threaded(device: str) -> contextlib.AbstractContextManager[object]:
    """On the CPU, implicit runs its own threads; a multithreaded BLAS underneath slows it badly."""
    if device != "cpu":
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    limits: contextlib.AbstractContextManager[object] = threadpool_limits(1, "blas")  # threadpoolctl is untyped
    return limits


class _StopTraining(Exception):
    """Raised from implicit's per-iteration callback to end its loop early."""


def _fit_until_stopped(
    model: Any,
    confidence: scipy.sparse.csr_matrix,
    callback: Callable[[int, float, float | None], None],
    **options: Any,
) -> None:
    """implicit's fit, ended early when the callback raises _StopTraining.

    implicit (0.7.3, CPU and GPU alike) updates model.user_factors and model.item_factors in
    place and calls the callback after each full iteration, so the model then holds that
    iteration's factors. Leaving the loop skips only the CPU fit's closing check for
    non-finite factors (the GPU fit has none), so that one is run here.
    """
    try:
        model.fit(confidence, show_progress=False, callback=callback, **options)
    except _StopTraining:
        if isinstance(model.user_factors, np.ndarray) and hasattr(model, "_check_fit_errors"):
            model._check_fit_errors()


def _can_start_from(start: TrainResult, model: Any, shape: tuple[int, int]) -> bool:
    from implicit.cpu.als import AlternatingLeastSquares

    return (
        isinstance(model, AlternatingLeastSquares)
        and isinstance(start.model, AlternatingLeastSquares)
        and start.model.user_factors is not None
        and start.model.user_factors.shape == (shape[0], model.factors)
        and start.model.item_factors.shape == (shape[1], model.factors)
    )


def fit(
    confidence: scipy.sparse.csr_matrix,
    params: TrainParams,
    *,
    weighting: str | None = None,
    alpha: float | None = None,
    start: TrainResult | None = None,
) -> TrainResult:
    """Fit ALS to a user x item confidence matrix; log the loss and time of each iteration.

    With ``weighting`` set, ``confidence`` holds the raw weights: the native solver weighs them
    on the GPU (matrix.confidence's formulas, and the automatic regularization from the weighted
    matrix there too); implicit's solvers get them weighted on the host first.

    ``start``: a fit of the same shape whose factors (copied) this one begins from instead of
    random ones, so that it needs fewer iterations (the settings search's candidates). Only
    implicit's CPU model takes them; elsewhere the fit starts as usual.
    """
    params.check()
    if weighting is not None and params.solver != "native":
        from .matrix import confidence as weigh

        confidence = weigh(confidence, weighting, alpha)
        weighting = None
    if params.solver == "native":
        from .gpu.solver import resolve_native_device

        device = resolve_native_device(params.device)
    else:
        device = resolve_device(params.device)
    users, items = confidence.shape
    regularization = params.regularization
    if regularization is None and not (params.solver == "native" and weighting is not None):  # else on the GPU
        regularization, sigma = auto_regularization(confidence, params.seed)
        log.info(
            "train: regularization %.4g (auto: %g x %.4g, the largest singular value of the confidence matrix)",
            regularization,
            AUTO_REGULARIZATION_SHARE,
            sigma,
        )
    if params.solver == "native":
        from .gpu.solver import NativeAls

        model = NativeAls(
            factors=params.factors,
            regularization=regularization,
            iterations=params.iterations,
            random_state=params.seed,
            regularization_share=AUTO_REGULARIZATION_SHARE,
            factor_dtype=params.factor_dtype,
        )
    else:
        if device == "gpu":
            check_gpu_limits(users, items, confidence.nnz, params.factors)
            als_class, device_options = _gpu_als_class(), {}
            assert als_class is not None  # resolve_device chose the GPU because implicit has it
        else:
            from implicit.cpu.als import AlternatingLeastSquares

            als_class, device_options = AlternatingLeastSquares, {"num_threads": params.threads}
        with _blas_single_threaded(device):  # implicit checks (and warns about) BLAS threads here
            model = als_class(
                factors=params.factors,
                regularization=regularization,
                alpha=1.0,  # the confidence is already in the matrix
                dtype=np.float32,
                iterations=params.iterations,
                calculate_training_loss=params.loss,
                random_state=params.seed,
                **device_options,
            )
    result = TrainResult(
        model=model, device=device, regularization=float("nan") if regularization is None else float(regularization)
    )
    if start is not None and _can_start_from(start, model, confidence.shape):
        model.user_factors = start.model.user_factors.copy()
        model.item_factors = start.model.item_factors.copy()
        result.warm_start = True
    log.info(
        "train: ALS on %s (%s solver), %d factors, at most %d iterations, %s users x %s items, %s distinct pairs",
        device.upper(),
        params.solver,
        params.factors,
        params.iterations,
        f"{users:,}",
        f"{items:,}",
        f"{confidence.nnz:,}",
    )

    def on_iteration(iteration: int, seconds: float, loss: float | None) -> None:
        result.iteration_seconds.append(float(seconds))
        result.loss.append(None if loss is None else float(loss))
        shown = "" if loss is None else f", loss {loss:.6f}"
        log.info("train: iteration %d/%d in %.2fs%s", iteration + 1, params.iterations, seconds, shown)
        if params.on_iteration is not None:
            params.on_iteration(iteration, float(seconds), result.loss[-1])

        reason = plateau.update(result.loss[-1]) if plateau is not None else None
        if reason is not None and iteration + 1 < params.iterations:
            result.stop_reason = reason
            log.info("train: stopping after iteration %d: %s", iteration + 1, reason)
            raise _StopTraining

    plateau = stopping.LossPlateau(params.early_stop, params.patience) if params.early_stop and params.loss else None
    if not params.loss:
        result.stop_reason = stopping.NO_LOSS
    elif not params.early_stop:
        result.stop_reason = stopping.OFF
    started = time.monotonic()
    try:
        with _blas_single_threaded(device):
            _fit_until_stopped(
                model,
                confidence,
                on_iteration,
                **({"weighting": weighting, "alpha": alpha} if weighting is not None else {}),
            )
    except MemoryError:
        raise WorkerError(
            f"out of memory training {params.factors} factors on the {device.upper()}; use fewer --factors, "
            "or a machine with more memory"
        ) from None
    except RuntimeError as exc:
        if "memory" in str(exc).lower():
            raise WorkerError(
                f"the GPU ran out of memory ({' '.join(str(exc).split())[:160]}); use fewer --factors, a GPU with "
                "more memory, or --device cpu"
            ) from None
        raise
    result.seconds = time.monotonic() - started
    if params.solver == "native":
        assert model.regularization is not None  # resolved on the GPU when automatic
        result.regularization = float(model.regularization)
        result.setup_seconds = {name: round(seconds, 4) for name, seconds in model.timings.items()}
        result.weighted_on = "gpu" if weighting is not None else "host"
    return result
