"""The automatic regularization: a fixed share of the confidence matrix's largest singular value.

Both solvers use it: implicit's through ``auto_regularization`` here, before the fit; the native
solver computes the same on the GPU (``regularization_share``) when it weighs there itself.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse

log = logging.getLogger("airflow_gpu.worker")

# The default regularization is this share of the largest singular value of the confidence
# matrix (see auto_regularization): the best mean precision@10 over four tuning sets, three
# synthetic shapes and MovieLens 100K (benchmarks/weighting.py; benchmarks/README.md, "Weighting").
AUTO_REGULARIZATION_SHARE = 0.2


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


def logged_auto_regularization(confidence: scipy.sparse.csr_matrix, seed: int = 0) -> float:
    """``auto_regularization``'s value, with the line that says how it was reached."""
    regularization, sigma = auto_regularization(confidence, seed)
    log.info(
        "train: regularization %.4g (auto: %g x %.4g, the largest singular value of the confidence matrix)",
        regularization,
        AUTO_REGULARIZATION_SHARE,
        sigma,
    )
    return regularization
