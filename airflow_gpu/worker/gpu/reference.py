"""The native solver's schedule in numpy, for machines without a GPU.

Same method as als.cu and as implicit's CG solver: per row, warm-started from the current
factors, r = sum_i [c_i - (c_i - 1) y_i.x] y_i - YtY x with YtY = Y'Y + lambda I, then
``cg_steps`` conjugate-gradient steps with A p = YtY p + sum_i (c_i - 1)(y_i.p) y_i, stopping a
row early once |r|^2 < 1e-20; a row with no interactions gets zero factors (as implicit's GPU
solver does). Same decomposition as the GPU: light rows whole; heavy rows as
chunks whose partial sums are added in chunk order (schedule.py). All rows step together
here (vectorised), which changes nothing: each row's solve depends only on its own data.

``factor_dtype="bfloat16"`` is als.cu's bfloat16 storage: the factors are rounded to bfloat16
(nearest even) where the kernels store them, everything else is float32. A light row is stored
once, when its solve ends; a heavy row's x is stored, so rounded, after every CG step (heavy_step
keeps no float32 copy of it between launches).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse

from . import bfloat16
from .schedule import CHUNK, HEAVY_THRESHOLD, Schedule, plan

CG_EPSILON = 1e-20


def gram(factors: np.ndarray, regularization: float) -> np.ndarray:
    """Y'Y + lambda I: once per half-iteration, shared by every row."""
    yty: np.ndarray = factors.T @ factors
    yty[np.diag_indices_from(yty)] += np.float32(regularization)
    return yty


def _sparse_term(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, Y: np.ndarray, V: np.ndarray, residual: bool
) -> np.ndarray:
    """For each segment of (indptr, indices, data) and its vector in V, as in als.cu's sparse_term."""
    segments = len(indptr) - 1
    owner = np.repeat(np.arange(segments), np.diff(indptr))
    gathered = Y[indices]
    dots = np.einsum("ij,ij->i", gathered, V[owner])
    weights = (np.abs(data) - np.float32(1)) * dots
    if residual:
        weights = np.maximum(data, np.float32(0)) - weights
    term = scipy.sparse.csr_matrix(
        (weights.astype(np.float32, copy=False), indices, indptr), shape=(segments, Y.shape[0])
    )
    return np.asarray(term @ Y, dtype=np.float32)


class _Light:
    """The sparse term of whole rows."""

    def __init__(self, matrix: scipy.sparse.csr_matrix, rows: np.ndarray) -> None:
        sub = matrix[rows]
        self.parts = (sub.indptr, sub.indices, sub.data)

    def __call__(self, Y: np.ndarray, V: np.ndarray, residual: bool) -> np.ndarray:
        return _sparse_term(*self.parts, Y, V, residual)


class _Heavy:
    """The sparse term of split rows: one partial per chunk, added per row in chunk order."""

    def __init__(self, matrix: scipy.sparse.csr_matrix, schedule: Schedule) -> None:
        lengths = (schedule.chunk_end - schedule.chunk_start).astype(np.int64)
        take = (
            np.concatenate([np.arange(s, e) for s, e in zip(schedule.chunk_start, schedule.chunk_end)])
            if schedule.chunks
            else np.zeros(0, dtype=np.int64)
        )
        indptr = np.zeros(schedule.chunks + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        self.parts = (indptr, matrix.indices[take], matrix.data[take])
        self.owner = schedule.chunk_heavy
        self.first = schedule.chunk_first

    def __call__(self, Y: np.ndarray, V: np.ndarray, residual: bool) -> np.ndarray:
        partials = _sparse_term(*self.parts, Y, V[self.owner], residual)
        total = np.zeros((len(self.first) - 1, Y.shape[1]), dtype=np.float32)
        for h in range(len(self.first) - 1):
            acc = np.zeros(Y.shape[1], dtype=np.float32)
            for c in range(self.first[h], self.first[h + 1]):
                acc += partials[c]
            total[h] = acc
        return total


def _solve_rows(
    x: np.ndarray,
    Y: np.ndarray,
    yty: np.ndarray,
    sparse: Callable[[np.ndarray, np.ndarray, bool], np.ndarray],
    cg_steps: int,
    store: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """CG on a set of rows at once (x: their current factors), as cg_light / heavy_step do per row.

    The sparse term is taken over every row of the set each step (simple, and the rows that
    have stopped are left out when the results are used), where the GPU skips stopped rows.
    ``store``: what storing x after each CG step does to it (heavy rows with bfloat16 storage)."""
    x = x.astype(np.float32, copy=True)
    r = sparse(Y, x, True) - x @ yty
    p = r.copy()
    rsold = np.einsum("ij,ij->i", r, r)
    live = np.flatnonzero(rsold >= CG_EPSILON)
    for _ in range(cg_steps):
        if not len(live):
            break
        ap = (p @ yty + sparse(Y, p, False))[live]
        p_live = p[live]
        alpha = rsold[live] / np.einsum("ij,ij->i", p_live, ap)
        x[live] += alpha[:, None] * p_live
        if store is not None:
            x[live] = store(x[live])
        r[live] -= alpha[:, None] * ap
        rsnew = np.einsum("ij,ij->i", r[live], r[live])
        going = rsnew >= CG_EPSILON
        keep = live[going]
        p[keep] = r[keep] + (rsnew[going] / rsold[keep])[:, None] * p[keep]
        rsold[keep] = rsnew[going]
        live = keep
    return x


def half_step(
    matrix: scipy.sparse.csr_matrix,
    X: np.ndarray,
    Y: np.ndarray,
    regularization: float,
    *,
    cg_steps: int = 3,
    threshold: int = HEAVY_THRESHOLD,
    chunk: int = CHUNK,
    factor_dtype: str = "float32",
) -> np.ndarray:
    """New factors for every row of ``matrix`` (rows of X), the other side (Y) fixed; with
    ``factor_dtype="bfloat16"``, X and Y hold bfloat16 values and the result is rounded to them."""
    store = bfloat16.round_float32 if factor_dtype == "bfloat16" else None
    schedule = plan(matrix.indptr, threshold, chunk)
    yty = gram(Y, regularization)
    out = X.astype(np.float32, copy=True)
    out[schedule.light_rows] = _solve_rows(
        X[schedule.light_rows], Y, yty, _Light(matrix, schedule.light_rows), cg_steps
    )
    if len(schedule.heavy_rows):
        out[schedule.heavy_rows] = _solve_rows(
            X[schedule.heavy_rows], Y, yty, _Heavy(matrix, schedule), cg_steps, store
        )
    out[np.diff(matrix.indptr) == 0] = 0  # as implicit's GPU solver and als.cu: no interactions, zero factors
    return out if store is None else store(out)  # light rows' store (heavy rows are already rounded)


def fit(
    confidence: scipy.sparse.csr_matrix,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    regularization: float,
    iterations: int,
    *,
    cg_steps: int = 3,
    threshold: int = HEAVY_THRESHOLD,
    chunk: int = CHUNK,
    factor_dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """ALS as implicit orders it: users against fixed items, then items against the new users.
    With ``factor_dtype="bfloat16"`` the starting factors are rounded as the solver's upload does."""
    Cui = confidence.tocsr().astype(np.float32)
    Ciu = Cui.T.tocsr()
    X = user_factors.astype(np.float32, copy=True)
    Y = item_factors.astype(np.float32, copy=True)
    if factor_dtype == "bfloat16":
        X, Y = bfloat16.round_float32(X), bfloat16.round_float32(Y)
    for _ in range(iterations):
        X = half_step(
            Cui, X, Y, regularization, cg_steps=cg_steps, threshold=threshold, chunk=chunk, factor_dtype=factor_dtype
        )
        Y = half_step(
            Ciu, Y, X, regularization, cg_steps=cg_steps, threshold=threshold, chunk=chunk, factor_dtype=factor_dtype
        )
    return X, Y
