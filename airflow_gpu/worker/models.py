"""Which ALS model trains, behind one factory: implicit's on the GPU, implicit's on the CPU, or the native solver.

As implicit's own ``AlternatingLeastSquares`` factory does, ``als_model`` picks the class for the
device and hands it the same settings; ``train.fit`` then only runs its loop. Both implicit
devices get the same confidence matrix (see ``matrix.confidence``) with implicit's own alpha at
1, so they fit the same objective. Before touching the GPU we refuse sizes that implicit's
int32-indexed CUDA kernels cannot hold, with a message that says what to change, rather than
letting them overflow or fail deep inside CUDA.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse

from .errors import WorkerError
from .gpu import bfloat16
from .regularization import AUTO_REGULARIZATION_SHARE

if TYPE_CHECKING:  # the settings' type only: train imports this module
    from .train import TrainParams

log = logging.getLogger("airflow_gpu.worker")

DEVICES = ("auto", "gpu", "cpu")
SOLVERS = ("implicit", "native")  # native: our own CUDA solver (worker/gpu/), GPU only
FACTOR_DTYPES = bfloat16.DTYPES  # how the native solver stores the factors on the GPU
INT32_LIMIT = 2**31
MIN_COMPUTE_CAPABILITY = (8, 0)  # the CUDA 13 build of implicit ships sm_80+ kernels only


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


def solver_device(solver: str, requested: str) -> str:
    """The device a solver trains on: the native solver's GPU (or its refusal), else ``resolve_device``'s choice."""
    if solver == "native":
        from .gpu.solver import resolve_native_device

        return resolve_native_device(requested)
    return resolve_device(requested)


def als_model(
    params: TrainParams, device: str, regularization: float | None, confidence: scipy.sparse.csr_matrix
) -> Any:
    """A fresh model for ``params.solver`` on ``device``; ``regularization`` None: the native solver finds it on the GPU."""
    if params.solver == "native":
        from .gpu.solver import NativeAls

        return NativeAls(
            factors=params.factors,
            regularization=regularization,
            iterations=params.iterations,
            random_state=params.seed,
            regularization_share=AUTO_REGULARIZATION_SHARE,
            factor_dtype=params.factor_dtype,
        )
    users, items = confidence.shape
    if device == "gpu":
        check_gpu_limits(users, items, confidence.nnz, params.factors)
        als_class, device_options = _gpu_als_class(), {}
        assert als_class is not None  # resolve_device chose the GPU because implicit has it
    else:
        from implicit.cpu.als import AlternatingLeastSquares

        als_class, device_options = AlternatingLeastSquares, {"num_threads": params.threads}
    with blas_single_threaded(device):  # implicit checks (and warns about) BLAS threads here
        return als_class(
            factors=params.factors,
            regularization=regularization,
            alpha=1.0,  # the confidence is already in the matrix
            dtype=np.float32,
            iterations=params.iterations,
            calculate_training_loss=params.loss,
            random_state=params.seed,
            **device_options,
        )


def blas_single_threaded(device: str) -> contextlib.AbstractContextManager[object]:
    """On the CPU, implicit runs its own threads; a multithreaded BLAS underneath slows it badly."""
    if device != "cpu":
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    limits: contextlib.AbstractContextManager[object] = threadpool_limits(1, "blas")  # threadpoolctl is untyped
    return limits


def start_from(model: Any, start: Any, shape: tuple[int, int]) -> bool:
    """Begin ``model`` from a copy of another model's factors, where it can (implicit's CPU model, same shape)."""
    from implicit.cpu.als import AlternatingLeastSquares

    if not (
        isinstance(model, AlternatingLeastSquares)
        and isinstance(start, AlternatingLeastSquares)
        and start.user_factors is not None
        and start.user_factors.shape == (shape[0], model.factors)
        and start.item_factors.shape == (shape[1], model.factors)
    ):
        return False
    model.user_factors = start.user_factors.copy()
    model.item_factors = start.item_factors.copy()
    return True
