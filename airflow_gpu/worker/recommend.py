"""Top-N items per user and most similar items, in batches, on the device the model trained on.

implicit marks a slot it could not fill (a user who has seen almost every item) with the
lowest float score; those slots become -1 here and never reach an output.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse

_UNFILLED = np.float32(-1e30)


def top_n(model, user_items: scipy.sparse.csr_matrix, users: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, scores), each users x n; items the user has seen are left out; -1 marks no item."""
    n = min(n, user_items.shape[1])
    ids, scores = model.recommend(users, user_items[users], N=n, filter_already_liked_items=True)
    return _clean(np.asarray(ids), np.asarray(scores))


def popularity_top_n(popularity: np.ndarray, user_items: scipy.sparse.csr_matrix, users: np.ndarray, n: int,
                     *, order: np.ndarray | None = None):
    """The most popular items each user has not seen: the baseline ALS must beat.

    Every user ranks the same list, so only its head is checked against each user's seen
    items; the few users who have seen most of the head fall back to a full ranking.
    """
    from implicit.cpu.topk import topk

    n_items = user_items.shape[1]
    n = min(n, n_items)
    if order is None:
        order = np.argsort(-popularity, kind="stable")
    head = order[: min(n_items, n + 64)]
    seen = user_items[users]
    keys = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(seen.indptr)) * n_items + seen.indices
    keys.sort()
    candidates = np.arange(len(users), dtype=np.int64)[:, None] * n_items + head[None, :]
    pos = np.minimum(np.searchsorted(keys, candidates), max(len(keys) - 1, 0))
    unseen = ~(keys[pos] == candidates) if len(keys) else np.ones(candidates.shape, bool)
    enough = unseen.sum(axis=1) >= n
    # Stable argsort of "seen" puts each row's unseen head items first, in popularity order.
    first = np.argsort(~unseen, axis=1, kind="stable")[:, :n]
    ids = head[first]
    scores = popularity[ids].astype(np.float32)
    ids[~np.take_along_axis(unseen, first, axis=1)] = -1
    short = np.flatnonzero(~enough)
    if len(short):
        item_scores = np.ascontiguousarray(popularity, dtype=np.float32).reshape(-1, 1)
        queries = np.ones((len(short), 1), np.float32)
        full_ids, full_scores = topk(item_scores, queries, n, filter_query_items=seen[short], num_threads=0)
        ids[short], scores[short] = full_ids, full_scores
    return _clean(np.asarray(ids), np.asarray(scores))


def similar_items(model, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, cosine scores), each items x n, the item itself left out."""
    total = model.item_factors.shape[0]
    k = min(n + 1, total)
    ids, scores = model.similar_items(items, N=k)
    ids, scores = np.asarray(ids), np.asarray(scores)
    # Usually the item itself comes first; drop it wherever it is, else drop the last slot.
    self_hit = ids == items[:, None]
    drop = np.where(self_hit.any(axis=1), self_hit.argmax(axis=1), k - 1)
    keep = np.ones_like(self_hit)
    keep[np.arange(len(items)), drop] = False
    ids = ids[keep].reshape(len(items), k - 1)[:, :n]
    scores = scores[keep].reshape(len(items), k - 1)[:, :n]
    return _clean(ids, scores)


def _clean(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = ids.astype(np.int64, copy=True)
    scores = scores.astype(np.float32, copy=False)
    unfilled = (scores <= _UNFILLED) | (ids < 0) | ~np.isfinite(scores)
    ids[unfilled] = -1
    return ids, scores


def long_table(
    row_ids: pa.Array, rows: np.ndarray, column_ids: pa.Array, ids: np.ndarray, scores: np.ndarray, names: tuple[str, str]
) -> pa.Table:
    """Rows of (id, other id, score, rank) for every filled slot, ranks starting at 1."""
    filled = ids >= 0
    width = ids.shape[1] if ids.ndim == 2 else 0
    row_index = np.repeat(rows, width).reshape(ids.shape)[filled]
    rank = np.tile(np.arange(1, width + 1, dtype=np.int16), len(rows)).reshape(ids.shape)[filled]
    return pa.table(
        {
            names[0]: _plain(row_ids.take(pa.array(row_index))),
            names[1]: _plain(column_ids.take(pa.array(ids[filled]))),
            "score": pa.array(scores[filled], pa.float32()),
            "rank": pa.array(rank, pa.int16()),
        }
    )


def _plain(ids: pa.Array) -> pa.Array:
    """Ids as users gave them: string (not large_string) when they fit, integers as int64."""
    if pa.types.is_large_string(ids.type):
        return ids.cast(pa.string())
    return ids
