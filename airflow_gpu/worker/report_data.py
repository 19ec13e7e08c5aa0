"""What the report shows besides the metrics: a few users with their lists, and how the data is spread.

Both are small by construction (three users, a few dozen histogram bins), so they go into
metrics.json as they are and the report needs nothing but that file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse

from .recommend import top_n


def pick_users(matrix: scipy.sparse.csr_matrix, count: int = 3, seed: int = 0) -> np.ndarray:
    """Users with a fair history (15-60 items, else the busiest), deterministic for a seed."""
    lengths = np.diff(matrix.indptr)
    candidates = np.flatnonzero((lengths >= 15) & (lengths <= 60))
    if len(candidates) < count:
        candidates = np.argsort(-lengths, kind="stable")[: count * 10]
        candidates = candidates[lengths[candidates] > 0]
    rng = np.random.default_rng(seed + 3)
    return np.sort(rng.permutation(candidates)[:count]).astype(np.int32)


def sample_users(
    model: Any,
    matrix: scipy.sparse.csr_matrix,
    user_ids: pa.Array,
    item_ids: pa.Array,
    *,
    count: int = 3,
    n: int = 10,
    history: int = 8,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """For a few users: their heaviest items and their top-n recommendations, by original id."""
    users = pick_users(matrix, count, seed)
    if len(users) == 0:
        return []
    ids, scores = top_n(model, matrix, users, n)
    samples = []
    for row, user in enumerate(users):
        start, end = matrix.indptr[user], matrix.indptr[user + 1]
        order = np.argsort(-matrix.data[start:end], kind="stable")[:history]
        seen = matrix.indices[start:end][order]
        recs = [(int(i), float(s)) for i, s in zip(ids[row], scores[row]) if i >= 0]
        samples.append(
            {
                "user_id": user_ids[int(user)].as_py(),
                "items": int(end - start),
                "history": [
                    {"item_id": item_ids[int(i)].as_py(), "weight": float(w)}
                    for i, w in zip(seen, matrix.data[start:end][order])
                ],
                "recommendations": [{"item_id": item_ids[i].as_py(), "score": round(s, 6)} for i, s in recs],
            }
        )
    return samples


def distribution(counts: np.ndarray) -> dict[str, Any]:
    """A histogram over powers of two (1, 2-3, 4-7, ...) plus the quantiles that describe a long tail."""
    counts = np.asarray(counts)
    counts = counts[counts > 0]
    if len(counts) == 0:
        return {"bins": [], "count": 0}
    edges = 2 ** np.arange(0, int(np.floor(np.log2(counts.max()))) + 2)
    hist, _ = np.histogram(counts, bins=edges)
    return {
        "bins": [
            {"low": int(lo), "high": int(hi - 1), "count": int(c)} for lo, hi, c in zip(edges[:-1], edges[1:], hist)
        ],
        "count": int(len(counts)),
        "min": int(counts.min()),
        "median": float(np.median(counts)),
        "p90": float(np.quantile(counts, 0.9)),
        "max": int(counts.max()),
        "mean": round(float(counts.mean()), 3),
    }


def distributions(matrix: scipy.sparse.csr_matrix) -> dict[str, Any]:
    """Distinct pairs per user and per item (duplicates already summed into one pair)."""
    per_item = np.bincount(matrix.indices, minlength=matrix.shape[1])
    return {"pairs_per_user": distribution(np.diff(matrix.indptr)), "pairs_per_item": distribution(per_item)}
