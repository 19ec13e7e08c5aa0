"""Held-out ranking metrics of ALS against a popularity baseline.

The split is per user: each interaction of a user with two or more items is held out
with probability F, keeping at least one in training. Users with a held-out item are
ranked on items they have not seen in training, by ALS and by global popularity, and
scored with precision@k (hits / k), MAP@k and NDCG@k, all with binary relevance.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse

from .errors import WorkerError
from .recommend import popularity_top_n, top_n

log = logging.getLogger("airflow_gpu.worker")


def holdout_split(
    matrix: scipy.sparse.csr_matrix, fraction: float, seed: int = 0
) -> tuple[scipy.sparse.csr_matrix, scipy.sparse.csr_matrix]:
    """(train, test) CSR matrices of the same shape; together they hold every entry once."""
    if not 0 < fraction < 1:
        raise WorkerError(f"--eval-holdout must be between 0 and 1 (exclusive), got {fraction}")
    rng = np.random.default_rng(seed)
    lengths = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int32), lengths)
    held = rng.random(matrix.nnz, dtype=np.float32) < fraction
    held &= lengths[rows] >= 2
    held_per_row = np.bincount(rows[held], minlength=matrix.shape[0])
    everything = np.flatnonzero((held_per_row == lengths) & (lengths > 0))
    held[matrix.indptr[everything]] = False  # keep each such user's first item for training
    return _masked_rows(matrix, rows, ~held), _masked_rows(matrix, rows, held)


def _masked_rows(matrix: scipy.sparse.csr_matrix, rows: np.ndarray, keep: np.ndarray) -> scipy.sparse.csr_matrix:
    indptr = np.zeros(matrix.shape[0] + 1, dtype=matrix.indptr.dtype)
    np.cumsum(np.bincount(rows[keep], minlength=matrix.shape[0]), out=indptr[1:])
    result = scipy.sparse.csr_matrix((matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape)
    result.has_sorted_indices = True
    return result


def ranking_metrics(recommended: np.ndarray, test: scipy.sparse.csr_matrix, k: int) -> dict[str, np.ndarray]:
    """Per-user precision, average precision and NDCG at k; ``test`` rows align with ``recommended`` rows."""
    users, width = recommended.shape
    n_items = test.shape[1]
    lengths = np.diff(test.indptr)
    test_keys = np.repeat(np.arange(users, dtype=np.int64), lengths) * n_items + test.indices
    order = np.argsort(test_keys, kind="stable")
    test_keys = test_keys[order]
    rec_keys = np.arange(users, dtype=np.int64)[:, None] * n_items + recommended
    pos = np.minimum(np.searchsorted(test_keys, rec_keys), max(len(test_keys) - 1, 0))
    hits = (recommended >= 0) & (len(test_keys) > 0) & (test_keys[pos] == rec_keys if len(test_keys) else False)
    hits = np.pad(hits.astype(np.float64), ((0, 0), (0, k - width))) if width < k else hits[:, :k].astype(np.float64)
    relevant = np.minimum(lengths, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.concatenate([[1.0], np.cumsum(discounts)])[relevant]
    precision = hits.sum(axis=1) / k
    ap = (np.cumsum(hits, axis=1) / np.arange(1, k + 1) * hits).sum(axis=1) / np.maximum(relevant, 1)
    ndcg = (hits * discounts).sum(axis=1) / np.where(ideal > 0, ideal, 1.0)
    return {"precision": precision, "map": ap, "ndcg": ndcg}


def evaluate(
    model: Any,
    train: scipy.sparse.csr_matrix,
    test: scipy.sparse.csr_matrix,
    *,
    k: int = 10,
    max_users: int = 50_000,
    seed: int = 0,
    batch: int = 10_000,
    holdout: float | None = None,
) -> dict[str, Any]:
    """ALS and popularity metrics over (a sample of) the users with held-out items."""
    started = time.monotonic()
    candidates = np.flatnonzero(np.diff(test.indptr) > 0)
    if len(candidates) == 0:
        raise WorkerError("no user has enough interactions for a held-out item; drop --eval-holdout or use more data")
    rng = np.random.default_rng(seed + 1)
    users = np.sort(rng.choice(candidates, size=min(max_users, len(candidates)), replace=False)).astype(np.int32)
    popularity = np.bincount(train.indices, minlength=train.shape[1]).astype(np.float32)
    order = np.argsort(-popularity, kind="stable")
    totals = {
        "als": {"precision": 0.0, "map": 0.0, "ndcg": 0.0},
        "popularity": {"precision": 0.0, "map": 0.0, "ndcg": 0.0},
    }
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        truth = test[chunk]
        for name, (ids, _) in (
            ("als", top_n(model, train, chunk, k)),
            ("popularity", popularity_top_n(popularity, train, chunk, k, order=order)),
        ):
            for metric, values in ranking_metrics(ids, truth, k).items():
                totals[name][metric] += float(values.sum())
    result: dict[str, Any] = {
        "k": k,
        "holdout": holdout,
        "users_evaluated": int(len(users)),
        "users_with_holdout": int(len(candidates)),
        "heldout_interactions": int(test.nnz),
    }
    for name in ("als", "popularity"):
        result[name] = {f"{metric}_at_{k}": round(total / len(users), 6) for metric, total in totals[name].items()}
    pop_precision = result["popularity"][f"precision_at_{k}"]
    result["als_over_popularity"] = {
        f"precision_at_{k}": round(result["als"][f"precision_at_{k}"] / pop_precision, 4) if pop_precision else None
    }
    result["seconds"] = round(time.monotonic() - started, 4)
    log.info(
        "evaluate: %d users, precision@%d ALS %.4f vs popularity %.4f, NDCG@%d ALS %.4f vs %.4f",
        len(users),
        k,
        result["als"][f"precision_at_{k}"],
        pop_precision,
        k,
        result["als"][f"ndcg_at_{k}"],
        result["popularity"][f"ndcg_at_{k}"],
    )
    return result
