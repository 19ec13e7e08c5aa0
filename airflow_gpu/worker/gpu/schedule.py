"""Which rows a warp solves alone, and how the heavy rows are cut into chunks.

The GPU solver and the numpy reference both follow this plan, so the reference checks the
decomposition itself (the chunked sums of heavy rows included), not only the method.
Works on numpy or CuPy arrays alike (``xp``), so the GPU builds its plan where its data is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# A row with more interactions than this is split across warps. Above about 4K interactions
# one warp per row would leave the iteration waiting on the most popular items (the seed's
# top item has ~8M); below it the extra passes of the split cost more than they save.
HEAVY_THRESHOLD = 4096
CHUNK = 2048  # interactions per warp in a heavy row


@dataclass
class Schedule:
    light_rows: Any  # int32 row numbers, longest first (so the long ones do not come last)
    heavy_rows: Any  # int32 row numbers of the rows split into chunks
    chunk_heavy: Any  # int32: for each chunk, its index into heavy_rows
    chunk_start: Any  # int64 offsets into the interaction arrays
    chunk_end: Any  # int64
    chunk_first: Any  # int32, len(heavy_rows) + 1: the chunks of heavy row h are chunk_first[h]:chunk_first[h + 1]

    @property
    def chunks(self) -> int:
        return int(self.chunk_start.shape[0])


def plan(indptr: Any, threshold: int = HEAVY_THRESHOLD, chunk: int = CHUNK, xp: Any = np) -> Schedule:
    if threshold < 1 or chunk < 1:
        raise ValueError(f"threshold and chunk must be positive, got {threshold} and {chunk}")
    indptr = xp.asarray(indptr).astype(xp.int64, copy=False)
    lengths = indptr[1:] - indptr[:-1]
    heavy = lengths > threshold
    light_rows = xp.flatnonzero(~heavy)
    stable = {"kind": "stable"} if xp is np else {}  # the order within equal lengths does not matter on the GPU
    light_rows = light_rows[xp.argsort(-lengths[light_rows], **stable)].astype(xp.int32)
    heavy_rows = xp.flatnonzero(heavy).astype(xp.int32)
    per_row = (lengths[heavy_rows] + chunk - 1) // chunk
    chunk_first = xp.zeros(heavy_rows.shape[0] + 1, dtype=xp.int64)
    chunk_first[1:] = xp.cumsum(per_row)
    chunks = int(chunk_first[-1])
    # searchsorted rather than repeat: CuPy's repeat takes no array of counts
    chunk_heavy = (xp.searchsorted(chunk_first, xp.arange(chunks, dtype=xp.int64), side="right") - 1).astype(xp.int32)
    within = xp.arange(chunks, dtype=xp.int64) - chunk_first[:-1][chunk_heavy]
    chunk_start = indptr[heavy_rows.astype(xp.int64)][chunk_heavy] + within * chunk
    chunk_end = xp.minimum(chunk_start + chunk, indptr[heavy_rows.astype(xp.int64) + 1][chunk_heavy])
    return Schedule(light_rows, heavy_rows, chunk_heavy, chunk_start, chunk_end, chunk_first.astype(xp.int32))
