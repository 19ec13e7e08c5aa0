"""``fit``: ALS's iterations and their callback (progress, early stop), over the model ``models`` picks.

Where each concern lives: the device and the model class in ``models`` (implicit GPU, implicit
CPU, the native solver); the automatic regularization in ``regularization``; the loss plateau in
``early_stop``. Here: the settings (``TrainParams``), what a fit returns (``TrainResult``), the loop,
and a memory error turned into the one line that says what to change.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import scipy.sparse

from . import early_stop as stopping
from . import models
from .errors import WorkerError
from .models import DEVICES, FACTOR_DTYPES, SOLVERS
from .regularization import logged_auto_regularization

log = logging.getLogger("airflow_gpu.worker")


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
    device = models.solver_device(params.solver, params.device)
    regularization = params.regularization
    if regularization is None and not (params.solver == "native" and weighting is not None):  # else on the GPU
        regularization = logged_auto_regularization(confidence, params.seed)
    model = models.als_model(params, device, regularization, confidence)
    result = TrainResult(
        model=model, device=device, regularization=float("nan") if regularization is None else float(regularization)
    )
    if start is not None:
        result.warm_start = models.start_from(model, start.model, confidence.shape)
    log.info(
        "train: ALS on %s (%s solver), %d factors, at most %d iterations, %s users x %s items, %s distinct pairs",
        device.upper(),
        params.solver,
        params.factors,
        params.iterations,
        f"{confidence.shape[0]:,}",
        f"{confidence.shape[1]:,}",
        f"{confidence.nnz:,}",
    )
    started = time.monotonic()
    with _out_of_memory_explained(params.factors, device), models.blas_single_threaded(device):
        _iterate(
            model,
            confidence,
            params,
            result,
            **({"weighting": weighting, "alpha": alpha} if weighting is not None else {}),
        )
    result.seconds = time.monotonic() - started
    if params.solver == "native":
        assert model.regularization is not None  # resolved on the GPU when automatic
        result.regularization = float(model.regularization)
        result.setup_seconds = {name: round(seconds, 4) for name, seconds in model.timings.items()}
        result.weighted_on = "gpu" if weighting is not None else "host"
    return result


def _iterate(
    model: Any, confidence: scipy.sparse.csr_matrix, params: TrainParams, result: TrainResult, **options: Any
) -> None:
    """The loop: the model's own fit, with a callback that records, logs and ends it once the loss plateaus."""
    plateau = stopping.LossPlateau(params.early_stop, params.patience) if params.early_stop and params.loss else None
    if not params.loss:
        result.stop_reason = stopping.NO_LOSS
    elif not params.early_stop:
        result.stop_reason = stopping.OFF

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

    _fit_until_stopped(model, confidence, on_iteration, **options)


@contextlib.contextmanager
def _out_of_memory_explained(factors: int, device: str) -> Iterator[None]:
    """A fit that runs out of host or GPU memory ends with one line saying what to change."""
    try:
        yield
    except MemoryError:
        raise WorkerError(
            f"out of memory training {factors} factors on the {device.upper()}; use fewer --factors, "
            "or a machine with more memory"
        ) from None
    except RuntimeError as exc:
        if "memory" in str(exc).lower():
            raise WorkerError(
                f"the GPU ran out of memory ({' '.join(str(exc).split())[:160]}); use fewer --factors, a GPU with "
                "more memory, or --device cpu"
            ) from None
        raise
