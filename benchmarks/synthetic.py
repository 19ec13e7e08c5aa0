"""Seed-scale synthetic interactions, generated straight into CSR form, on the GPU or the CPU.

At 25M users x 8.4M items and 1e9 interactions, building COO triples and converting
them with scipy would take many minutes and three copies of the data. Here rows are
generated a block of users at a time: each user's number of interactions is fixed first
(so ``indptr`` is a cumulative sum), then the items of a whole block are sampled in one
vectorised call, sorted by (user, item) so repeats can be summed, and copied into the
final ``indices`` and ``data`` arrays. Memory is the final CSR (int32 indices, float32
values: 8 bytes per interaction) plus one block.

The shape follows airflow_gpu/demo/synthetic.py, the generator the worker's own tests use: user
activity is log-normal; each item belongs to one of ``genres`` genres and has Zipf
popularity (exponent 1) both overall and inside its genre; 75% of a user's interactions
come from their two favourite genres and the rest from overall popularity. Zipf ranks
are drawn by inverting the continuous CDF (rank = n ** u), so no table lookup is needed.

``xp`` is numpy or cupy; only functions the two share are used. On the CPU, blocks run
in a thread pool (numpy releases the GIL in sorting and random generation).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse

INT32_LIMIT = 2**31


@dataclass
class Generated:
    matrix: scipy.sparse.csr_matrix  # users x items, float32 play counts, sorted indices, no repeats
    raw_events: int  # sampled events before repeats of a pair were summed
    scale: float  # events drawn per unit of activity, chosen so that nnz lands near the target
    device: str
    seconds: float


def array_module(device: str):
    """(xp, device name): cupy on ``gpu`` (an error when it cannot run), numpy on ``cpu``."""
    if device == "cpu":
        return np, "cpu"
    import cupy

    cupy.cuda.runtime.getDeviceCount()  # raises when no GPU is usable
    return cupy, "gpu"


def seed_like_csr(
    users: int,
    items: int,
    interactions: int,
    *,
    device: str = "cpu",
    genres: int = 32,
    taste_share: float = 0.75,
    seed: int = 0,
    block_events: int | None = None,
    threads: int | None = None,
    progress=None,
) -> Generated:
    """A users x items CSR with about ``interactions`` distinct (user, item) pairs."""
    if users < 1 or items < 2 or interactions < 1:
        raise ValueError("need at least 1 user, 2 items and 1 interaction")
    if interactions >= INT32_LIMIT:
        raise ValueError(f"{interactions:,} interactions would not fit int32 CSR indices; ask for fewer than 2^31")
    started = time.perf_counter()
    xp, device = array_module(device)
    block_events = block_events or (1 << 27 if device == "gpu" else 1 << 23)
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, users)
    taste = _Tastes(rng, users, items, genres)
    cap = max(1, min(items // 2, 50_000))

    # Repeats of a pair are summed, so more events than pairs must be drawn; how many more
    # depends on the skew. Find the scale on a sample of users (a few fixed-point steps).
    sample = np.sort(rng.choice(users, size=min(users, 200_000), replace=False))
    want = interactions * len(sample) / users
    scale = interactions / activity.sum()
    for _ in range(3):
        counts = _counts(np.random.default_rng(seed + 1), activity[sample], scale, cap)
        got = _block(xp, np.random.default_rng(seed + 2), taste, sample, counts, items, taste_share)[0].sum()
        scale *= want / max(int(got), 1)

    counts = _counts(np.random.default_rng(seed + 3), activity, scale, cap)
    raw_events = int(counts.sum())
    bounds = _blocks(counts, block_events)
    indptr = np.zeros(users + 1, np.int64)
    parts: list = [None] * (len(bounds) - 1)
    seeds = np.random.SeedSequence(seed + 4).spawn(len(bounds) - 1)

    def run(n: int):
        lo, hi = bounds[n], bounds[n + 1]
        rows = np.arange(lo, hi)
        parts[n] = _block(xp, np.random.default_rng(seeds[n]), taste, rows, counts[lo:hi], items, taste_share)
        if progress:
            progress(n + 1, len(parts))

    if xp is np:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run, range(len(parts))))
    else:
        for n in range(len(parts)):
            run(n)
    for n, (per_row, _, _) in enumerate(parts):
        indptr[bounds[n] + 1 : bounds[n + 1] + 1] = per_row
    np.cumsum(indptr, out=indptr)
    nnz = int(indptr[-1])
    if nnz >= INT32_LIMIT:
        raise ValueError(f"generated {nnz:,} interactions, which reaches 2^31; ask for fewer")
    indices = np.empty(nnz, np.int32)
    data = np.empty(nnz, np.float32)
    for n, (_, cols, values) in enumerate(parts):
        start = int(indptr[bounds[n]])
        indices[start : start + len(cols)] = cols
        data[start : start + len(cols)] = values
        parts[n] = None
    matrix = scipy.sparse.csr_matrix((data, indices, indptr.astype(np.int32)), shape=(users, items), copy=False)
    matrix.has_sorted_indices = True
    if xp is not np:
        del taste  # its device arrays go back to cupy's pool, and the pool back to the device
        xp.get_default_memory_pool().free_all_blocks()
    return Generated(matrix, raw_events, scale, device, time.perf_counter() - started)


class _Tastes:
    """Genre of each item (through a random permutation of popularity ranks) and of each user."""

    def __init__(self, rng: np.random.Generator, users: int, items: int, genres: int) -> None:
        self.genres = max(1, min(genres, items))
        # Rank r overall belongs to genre r % genres, where it has rank r // genres; the
        # permutation turns ranks into item ids, so popularity is unrelated to the id.
        self.item_of_rank = rng.permutation(items).astype(np.int32)
        self.items = items
        self.home = rng.integers(0, self.genres, users).astype(np.int32)
        self.second = ((self.home + rng.integers(1, max(self.genres, 2), users)) % self.genres).astype(np.int32)
        self._on_device = {}

    def on(self, xp):
        if xp not in self._on_device:
            self._on_device[xp] = (xp.asarray(self.item_of_rank), xp.asarray(self.home), xp.asarray(self.second))
        return self._on_device[xp]


def _counts(rng: np.random.Generator, activity: np.ndarray, scale: float, cap: int) -> np.ndarray:
    """Events per user: activity x scale, rounded at random (so small means stay unbiased), 1 to cap."""
    expected = activity * scale
    counts = np.floor(expected + rng.random(len(expected))).astype(np.int64)
    return np.clip(counts, 1, cap)


def _blocks(counts: np.ndarray, block_events: int) -> list[int]:
    """User boundaries so that each block draws about ``block_events`` events."""
    ends = np.cumsum(counts)
    marks = np.arange(block_events, int(ends[-1]), block_events)
    cuts = np.searchsorted(ends, marks, side="left") + 1
    return sorted({0, *cuts.tolist(), len(counts)})


def _block(
    xp, rng: np.random.Generator, taste: _Tastes, rows: np.ndarray, counts: np.ndarray, items: int, taste_share: float
):
    """(pairs per row, item indices, play counts) for a block of users, as host arrays."""
    events = int(counts.sum())
    item_of_rank, home, second = taste.on(xp)
    uniform = _uniform(xp, int(rng.integers(0, 2**31 - 1)))
    counts_x = xp.asarray(counts)
    ends = xp.cumsum(counts_x)
    # Row (within the block) of each event: cupy has no repeat() by array, so search.
    local_row = xp.searchsorted(ends, xp.arange(events, dtype=xp.int64), side="right")
    user = xp.asarray(rows)[local_row]

    u = uniform(events)
    pick = uniform(events)
    g = taste.genres
    # Overall popularity: Zipf rank over every item.
    rank = xp.floor(xp.power(float(items), u)).astype(xp.int64) - 1
    # Taste: Zipf rank inside a favourite genre (home 70%, second 30%), mapped to an overall rank.
    genre = xp.where(pick < taste_share * 0.7, home[user], second[user]).astype(xp.int64)
    in_genre = (items - genre + g - 1) // g  # ranks r with r % g == genre
    within = xp.floor(xp.power(in_genre.astype(xp.float64), u)).astype(xp.int64) - 1
    rank = xp.where(pick < taste_share, within * g + genre, rank)
    del u, genre, in_genre, within, user
    rank = xp.clip(rank, 0, items - 1)
    item = item_of_rank[rank].astype(xp.int64)
    del rank

    keys = local_row.astype(xp.int64) * items + item
    del item, local_row
    keys = xp.sort(keys)
    first = xp.ones(events, dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    starts = xp.flatnonzero(first)
    pairs = keys[starts]
    repeats = xp.diff(xp.concatenate([starts, xp.asarray([events], dtype=starts.dtype)]))
    del keys, first, starts
    # Plays per event are geometric (mean 2.5): heavy-tailed counts like the seed's.
    plays = xp.floor(xp.log1p(-uniform(len(pairs))) / math.log(0.6)) + 1
    values = (repeats * plays).astype(xp.float32)
    per_row = xp.bincount((pairs // items).astype(xp.int64), minlength=len(rows))
    cols = (pairs % items).astype(xp.int32)
    return _host(xp, per_row), _host(xp, cols), _host(xp, values)


def _uniform(xp, seed: int):
    """n -> n float64 uniforms in [0, 1). On the GPU, cupy's RandomState: it calls cuRAND's
    host API, where cupy's newer Generator compiles cuRAND's device headers at run time."""
    if xp is np:
        generator = np.random.default_rng(seed)
        return lambda n: generator.random(n)
    state = xp.random.RandomState(seed)
    return lambda n: state.random_sample(n, dtype=xp.float64)


def _host(xp, array) -> np.ndarray:
    return array if xp is np else xp.asnumpy(array)
