"""Top-N items per user and most similar items, in batches, on the device the model trained on.

On the GPU, implicit's own ``recommend``/``similar_items`` run (cuBLAS plus a GPU top-k).
On the CPU we rank ourselves: implicit's CPU top-k blanks each user's seen items in a
Python loop, one user at a time, and selects with a heap. Here a block of users is scored
with one GEMM into a buffer each thread reuses, seen items are blanked with one
fancy-index assignment, and the top k comes from the maxima of 64-column groups (one SIMD
pass) plus a partition of the few groups that can hold it. All of it releases the GIL, so
blocks run in parallel threads, one BLAS thread each. Users are first ranked against the
items with the largest factor norms only, which settles almost all of them exactly (see
``_norm_head``): at 10M interactions, the top 10 for every user went from 54 s to about 12 s
on 2 cores (benchmarks/README.md, "Recommendations on the CPU").

A slot that cannot be filled (a user who has seen almost every item) becomes -1 and never
reaches an output.
"""

from __future__ import annotations

import os
import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import scipy.sparse

_UNFILLED = np.float32(-1e30)
_BLOCK_ELEMENTS = 1 << 23  # scores per block and thread: 32 MiB of float32 (measured best of 1-32 Mi)


def top_n(model: Any, user_items: scipy.sparse.csr_matrix, users: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, scores), each users x n; items the user has seen are left out; -1 marks no item."""
    n = min(n, user_items.shape[1])
    if isinstance(model.user_factors, np.ndarray):
        return blocked_top_k(
            model.user_factors[users],
            model.item_factors,
            n,
            seen=user_items[users],
            threads=getattr(model, "num_threads", 0),
        )
    ids, scores = model.recommend(users, user_items[users], N=n, filter_already_liked_items=True)
    return _clean(np.asarray(ids), np.asarray(scores))


def blocked_top_k(
    queries: np.ndarray,
    items: np.ndarray,
    k: int,
    *,
    seen: scipy.sparse.csr_matrix | None = None,
    item_norms: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best items per query row by dot product (cosine when ``item_norms`` is given).

    ``seen`` (a CSR aligned with ``queries``) lists items to leave out per row; ``exclude``
    gives one more item to leave out per row (the item itself, for similar items).

    By dot product, rows are first ranked against the items with the largest norms only
    (see ``_norm_head``); a row whose k-th score there beats every other item's bound is
    done, and only the rest are scored against every item. The result is the same.
    """
    rows, n_items = len(queries), items.shape[0]
    k = min(k, n_items)
    ids = np.full((rows, k), -1, np.int64)
    scores = np.full((rows, k), -np.inf, np.float32)
    if rows == 0 or k == 0:
        return ids, scores
    todo = None  # rows still to rank against every item; None: all of them
    head = _norm_head(items, k) if item_norms is None and exclude is None else None
    if head is not None:
        head_items, head_t, outside = head
        head_position = np.full(n_items, -1, np.int64)
        head_position[head_items] = np.arange(len(head_items))
        undecided: list[np.ndarray] = []

        def rank_head(start: int, end: int, block_scores: np.ndarray) -> None:
            query = np.ascontiguousarray(queries[start:end], dtype=np.float32)
            np.matmul(query, head_t, out=block_scores)
            if seen is not None:
                part = seen[start:end]
                position = head_position[part.indices]
                inside = position >= 0
                block_scores[
                    np.repeat(np.arange(end - start), np.diff(part.indptr))[inside], position[inside]
                ] = -np.inf
            block_ids, block_best = _top_k_of_block(block_scores, k)
            # No item outside the head scores above |query| x its largest norm (Cauchy-Schwarz);
            # the margin covers float32 rounding in both the GEMM and the bound.
            bound = np.linalg.norm(query, axis=1) * np.float32(outside * (1 + 1e-4))
            done = block_best[:, -1] > bound
            ids[start:end][done] = head_items[block_ids[done]]
            scores[start:end][done] = block_best[done]
            undecided.append(start + np.flatnonzero(~done))

        _in_blocks(rows, len(head_items), threads, rank_head)
        todo = np.sort(np.concatenate(undecided))
        if len(todo) == 0:
            return _clean(ids, scores)

    full_queries = queries if todo is None else queries[todo]
    full_seen = seen if seen is None or todo is None else seen[todo]
    items_t = np.ascontiguousarray(items.T, dtype=np.float32)
    inverse_norms = None if item_norms is None else (1.0 / np.maximum(item_norms, 1e-10)).astype(np.float32)

    def rank_all(start: int, end: int, block_scores: np.ndarray) -> None:
        np.matmul(np.ascontiguousarray(full_queries[start:end], dtype=np.float32), items_t, out=block_scores)
        if inverse_norms is not None:
            block_scores *= inverse_norms
        if full_seen is not None:
            part = full_seen[start:end]
            block_scores[np.repeat(np.arange(end - start), np.diff(part.indptr)), part.indices] = -np.inf
        if exclude is not None:
            block_scores[np.arange(end - start), exclude[start:end]] = -np.inf
        target = slice(start, end) if todo is None else todo[start:end]
        ids[target], scores[target] = _top_k_of_block(block_scores, k)

    _in_blocks(len(full_queries), n_items, threads, rank_all)
    return _clean(ids, scores)


# The head: the items with the largest factor norms, 1/16 of them and at least 2048. Well
# regularized models leave most items with tiny norms (at 10M interactions, the median item
# norm was 1/230 of the largest), so the head settles nearly every user at a 16th of the cost.
# Where it settles few, the head pass costs about a 16th more than ranking everything at once.
_HEAD_SHARE = 16
_HEAD_MIN = 2048


def _norm_head(items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(head item indices, their factors transposed, the largest norm outside), or None when
    the catalogue is too small for a head to pay."""
    n_items = items.shape[0]
    size = max(_HEAD_MIN, n_items // _HEAD_SHARE, k)
    if 2 * size > n_items:
        return None
    norms = np.linalg.norm(np.asarray(items, dtype=np.float32), axis=1)
    part = np.argpartition(-norms, size)
    head = np.sort(part[:size])
    return head, np.ascontiguousarray(items[head].T, dtype=np.float32), float(norms[part[size]])


def _in_blocks(rows: int, width: int, threads: int, body: Callable[[int, int, np.ndarray], None]) -> None:
    """``body(start, end, scores)`` over blocks of rows, in threads; ``scores`` is a reused
    (end - start) x width float32 buffer.

    One buffer per thread, reused block after block: a fresh 32 MiB array per block is a
    fresh mmap, and its first-touch page faults cost more than the GEMM that fills it. The
    blocks are the parallelism, one BLAS thread each (the limit is process-wide, so it is
    set once around all of them): BLAS's own threads would split each small GEMM again.
    """
    from threadpoolctl import threadpool_limits

    block = max(1, _BLOCK_ELEMENTS // max(width, 1))
    starts = range(0, rows, block)
    workers = min(threads or os.cpu_count() or 1, len(starts))
    buffers: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
    for _ in range(workers):
        buffers.put(np.empty((min(block, rows), width), np.float32))

    def run(start: int) -> None:
        end = min(start + block, rows)
        buffer = buffers.get()
        try:
            body(start, end, buffer[: end - start])
        finally:
            buffers.put(buffer)

    with threadpool_limits(1 if len(starts) > 1 else threads or None, "blas"):
        if workers == 1:
            for start in starts:
                run(start)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(run, starts))


_CHUNK = 64


def _top_k_of_block(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest values, best first.

    Fast path: split each row's columns into 64-column groups and take each group's max.
    The k best values of a row lie in the k groups with the largest maxima (each of those
    holds a value at least as large as anything in an unchosen group), so only those
    k x 64 values are ranked. A group is every ``groups``-th column (column j belongs to
    group j mod groups), not 64 adjacent ones: the maxima are then an element-wise max
    over 64 contiguous slices, which numpy runs with SIMD at memory speed, where a max
    over each run of 64 adjacent values costs 7x more. Rows where maxima tie (seen items
    blanked to -inf, say) take the general path.
    """
    rows, cols = block.shape
    groups = cols // _CHUNK
    if groups <= k or rows == 0:
        return _top_k_general(block, k)
    head = block[:, : groups * _CHUNK].reshape(rows, _CHUNK, groups)  # head[r, c, g] = block[r, c * groups + g]
    maxima = np.maximum.reduce(head, axis=1)
    if groups * _CHUNK < cols:  # the ragged tail is one more group
        maxima = np.concatenate([maxima, block[:, groups * _CHUNK :].max(axis=1, keepdims=True)], axis=1)
    bound = np.partition(maxima, maxima.shape[1] - k, axis=1)[:, maxima.shape[1] - k]
    chosen = maxima >= bound[:, None]
    exact = (chosen.sum(axis=1) == k) & np.isfinite(bound) & ~chosen[:, groups:].any(axis=1)
    ids = np.full((rows, k), -1, np.int64)
    scores = np.full((rows, k), -np.inf, np.float32)
    fast = np.flatnonzero(exact)
    if len(fast):
        group_ids = np.nonzero(chosen[fast, :groups])[1].reshape(len(fast), k)
        values = head[fast[:, None], :, group_ids].reshape(len(fast), k * _CHUNK)  # (row, group, member)
        columns = (group_ids[:, :, None] + np.arange(_CHUNK) * groups).reshape(len(fast), k * _CHUNK)
        top = np.argpartition(values, values.shape[1] - k, axis=1)[:, values.shape[1] - k :]
        top_values = np.take_along_axis(values, top, axis=1)
        order = np.argsort(-top_values, axis=1, kind="stable")
        ids[fast] = np.take_along_axis(np.take_along_axis(columns, top, axis=1), order, axis=1)
        scores[fast] = np.take_along_axis(top_values, order, axis=1)
    slow = np.flatnonzero(~exact)
    if len(slow):
        ids[slow], scores[slow] = _top_k_general(block[slow], k)
    return ids, scores


def _top_k_general(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest values, best first: partition for the threshold, then sort the few above it."""
    rows, cols = block.shape
    if k < cols:
        kth = np.partition(block, cols - k, axis=1)[:, cols - k]
        r, c = np.nonzero(block >= kth[:, None])
    else:
        r, c = np.divmod(np.arange(rows * cols), cols)
    v = block[r, c]
    order = np.lexsort((-v, r))
    r, c, v = r[order], c[order], v[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r)  # position within the row; ties beyond k fall off
    keep = rank < k
    ids = np.full((rows, k), -1, np.int64)
    scores = np.full((rows, k), -np.inf, np.float32)
    ids[r[keep], rank[keep]] = c[keep]
    scores[r[keep], rank[keep]] = v[keep]
    return ids, scores


def popularity_top_n(
    popularity: np.ndarray,
    user_items: scipy.sparse.csr_matrix,
    users: np.ndarray,
    n: int,
    *,
    order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
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


def similar_items(model: Any, items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, cosine scores), each items x n, the item itself left out."""
    if isinstance(model.item_factors, np.ndarray):
        factors = model.item_factors
        norms = np.linalg.norm(factors, axis=1)
        queries = factors[items] / np.maximum(norms[items], 1e-10)[:, None]
        return blocked_top_k(
            queries, factors, n, item_norms=norms, exclude=items, threads=getattr(model, "num_threads", 0)
        )
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
    row_ids: pa.Array,
    rows: np.ndarray,
    column_ids: pa.Array,
    ids: np.ndarray,
    scores: np.ndarray,
    names: tuple[str, str],
) -> pa.Table:
    """Rows of (id, other id, score, rank) for every filled slot, ranks starting at 1."""
    filled = ids >= 0
    width = ids.shape[1] if ids.ndim == 2 else 0
    row_index = np.repeat(rows, width).reshape(ids.shape)[filled]
    rank = np.tile(np.arange(1, width + 1, dtype=np.int16), len(rows)).reshape(ids.shape)[filled]
    return pa.table(
        {
            names[0]: _plain_ids(row_ids.take(pa.array(row_index))),
            names[1]: _plain_ids(column_ids.take(pa.array(ids[filled]))),
            "score": pa.array(scores[filled], pa.float32()),
            "rank": pa.array(rank, pa.int16()),
        }
    )


def _plain_ids(ids: pa.Array) -> pa.Array:
    """Ids as users gave them: string (not large_string) when they fit, integers as int64."""
    if pa.types.is_large_string(ids.type):
        return ids.cast(pa.string())
    return ids
