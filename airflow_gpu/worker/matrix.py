"""Ids to dense indices, the user x item CSR matrix, and confidence weighting.

The pipeline owns a ``MatrixBuilder`` and hands it to ingest as its row sink: ingest adds
each object's rows while it decodes the next ones, and once ingest is done the pipeline
calls ``build()``, the matrix stage, which turns the collected codes into the CSR.

Ids are mapped with Arrow dictionary encoding, never with Python objects: each decoded
object is encoded on its own (in the decoding thread), and the per-object dictionaries
are folded into one global dictionary from time to time. Folding concatenates the global
dictionary *first*, so indices already handed out never change; only the newest objects'
codes are translated. Folding whenever the pending dictionaries outgrow the global one
keeps both the time (each id is hashed a bounded number of times) and the memory (at most
about twice the final dictionaries) linear.

Per interaction the builder keeps only an int32 user code, an int32 item code and, when
there is a weight column, a float32 weight: 8 or 12 bytes. At the end they are gathered
into one COO triple (freeing each object's codes as it is copied) and turned into a CSR by
scipy's counting sort, so the peak is about 20 bytes per interaction plus the id dictionaries.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse
from numpy.typing import ArrayLike

from .errors import WorkerError

log = logging.getLogger("airflow_gpu.worker")

WEIGHTINGS = ("bm25", "log", "linear", "none")
# Chosen on synthetic latent-taste data with heavy-tailed play counts (benchmarks/README.md,
# "Weighting"): bm25 damps both very large counts and very popular items, which lifts
# precision@10 well above the other schemes at its best alpha.
DEFAULT_WEIGHTING = "bm25"
DEFAULT_ALPHA = {"bm25": 0.5, "log": 10.0, "linear": 1.0, "none": 10.0}
BM25_K1 = 100.0
BM25_B = 0.8


# ---------------------------------------------------------------------------------------
# Id dictionaries
# ---------------------------------------------------------------------------------------


def id_value_type(column_type: pa.DataType) -> pa.DataType | None:
    """The type the global dictionary uses for ids of ``column_type``, or None when ids cannot have it."""
    if pa.types.is_dictionary(column_type):
        return id_value_type(column_type.value_type)
    if pa.types.is_integer(column_type):
        return pa.int64()
    if pa.types.is_string(column_type) or pa.types.is_large_string(column_type):
        # large_string: a folded dictionary of many objects may pass the 2 GiB offset limit.
        return pa.large_string()
    return None


def local_codes(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """One object's ids as (its own dictionary of distinct ids, int32 code per row)."""
    value_type = id_value_type(column.type)
    if pa.types.is_dictionary(column.type):
        # Parquet hands string columns over already dictionary-encoded, one dictionary per
        # row group: unify them instead of hashing every row again.
        column = column.unify_dictionaries()
    else:
        if column.type != value_type:
            column = column.cast(value_type)
        column = pc.dictionary_encode(column)
    if column.num_chunks == 0:
        return pa.array([], value_type), np.empty(0, np.int32)
    dictionary = column.chunk(0).dictionary
    if dictionary.type != value_type:
        dictionary = dictionary.cast(value_type)
    codes = np.empty(len(column), np.int32)
    offset = 0
    for chunk in column.chunks:
        codes[offset : offset + len(chunk)] = chunk.indices.to_numpy(zero_copy_only=False)
        offset += len(chunk)
    return dictionary, codes


class _Codes:
    """One object's codes for one id column: local to ``dictionary`` until folded, then global."""

    __slots__ = ("codes", "dictionary")

    def __init__(self, codes: np.ndarray, dictionary: pa.Array | None) -> None:
        self.codes: np.ndarray | None = codes  # None once copied into the matrix
        self.dictionary = dictionary

    def local_dictionary(self) -> pa.Array:
        """The dictionary the codes still refer to (an entry waiting to be folded has one)."""
        assert self.dictionary is not None, "already folded"
        return self.dictionary

    def held_codes(self) -> np.ndarray:
        assert self.codes is not None, "already copied into the matrix"
        return self.codes


class IdDictionary:
    """The growing set of distinct ids of one column; position in ``values`` is the dense index.

    Objects are folded in their listing order (``seq``), whatever order their downloads
    finish in, so the same input always gives the same indices, and so the same model.
    """

    # Fold once the waiting dictionaries hold more ids than this or than the folded ones.
    fold_at = 1 << 20

    def __init__(self, column: str) -> None:
        self.column = column
        self.values: pa.Array | None = None
        self._waiting: dict[int, _Codes] = {}
        self._waiting_ids = 0
        self._next_seq = 0
        self._lock = threading.Lock()

    def add(self, seq: int, dictionary: pa.Array, codes: np.ndarray) -> _Codes:
        entry = _Codes(codes, dictionary)
        with self._lock:
            self._waiting[seq] = entry
            self._waiting_ids += len(dictionary)
            if self._waiting_ids > max(self.fold_at, len(self)):
                self._fold(final=False)
        return entry

    def finish(self) -> pa.Array:
        with self._lock:
            self._fold(final=True)
            if self.values is None:
                self.values = pa.array([], pa.large_string())
            return self.values

    def __len__(self) -> int:
        return 0 if self.values is None else len(self.values)

    def _fold(self, final: bool) -> None:
        batch: list[_Codes] = []
        if final:
            batch = [self._waiting[k] for k in sorted(self._waiting)]
            self._waiting.clear()
        else:
            while self._next_seq in self._waiting:
                batch.append(self._waiting.pop(self._next_seq))
                self._next_seq += 1
        if not batch:
            return
        self._waiting_ids -= sum(len(e.local_dictionary()) for e in batch)
        parts = ([self.values] if self.values is not None else []) + [e.dictionary for e in batch]
        value_type = _common_type([p.type for p in parts])
        parts = [p if p.type == value_type else p.cast(value_type) for p in parts]
        encoded = pc.dictionary_encode(pa.chunked_array(parts, value_type))
        folded = encoded.chunk(0).dictionary if encoded.num_chunks else pa.array([], value_type)
        # dictionary_encode numbers values in order of first appearance, and the old values
        # come first and are distinct, so they keep their indices.
        offset = len(self)
        chunks = [c.indices.to_numpy(zero_copy_only=False) for c in encoded.chunks]
        translation = np.concatenate(chunks) if chunks else np.empty(0, np.int32)
        for entry in batch:
            table = translation[offset : offset + len(entry.local_dictionary())]
            offset += len(entry.local_dictionary())
            entry.codes = table.take(entry.held_codes()).astype(np.int32, copy=False)
            entry.dictionary = None
        self.values = folded


def _common_type(types: list[pa.DataType]) -> pa.DataType:
    """Integers stay int64; any mix with strings becomes strings ("42" and 42 are the same id)."""
    return pa.int64() if all(pa.types.is_integer(t) for t in types) else pa.large_string()


# ---------------------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------------------


@dataclass
class Interactions:
    """The summed user x item matrix and the ids behind its rows and columns."""

    matrix: scipy.sparse.csr_matrix  # float32 raw weights, duplicates summed, column indices sorted
    user_ids: pa.Array  # row i is user_ids[i]
    item_ids: pa.Array  # column j is item_ids[j]
    rows: int  # interactions added (after dropping nulls and invalid weights)
    duplicates: int  # rows folded into an earlier (user, item) pair

    @property
    def users(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def items(self) -> int:
        return int(self.matrix.shape[1])


class _Part:
    __slots__ = ("seq", "users", "items", "weights")

    def __init__(self, seq: int, users: _Codes, items: _Codes, weights: np.ndarray | None) -> None:
        self.seq, self.users, self.items, self.weights = seq, users, items, weights


class MatrixBuilder:
    """Collects interactions object by object (thread-safe), then builds the CSR once."""

    def __init__(self, user_col: str = "user_id", item_col: str = "item_id") -> None:
        self.user_ids = IdDictionary(user_col)
        self.item_ids = IdDictionary(item_col)
        self._parts: list[_Part] = []
        self._lock = threading.Lock()
        self._seq = 0
        self.rows = 0

    def add(
        self,
        users: pa.ChunkedArray,
        items: pa.ChunkedArray,
        weights: np.ndarray | None = None,
        *,
        seq: int | None = None,
    ) -> None:
        """Add one object's rows: ids without nulls, and float32 weights > 0 (None: each row counts once).

        ``seq`` is the object's position in the listing; every position from 0 up must be
        added once (an object with no rows too). Without it, parts are numbered as they come.
        """
        if seq is None:
            with self._lock:
                seq, self._seq = self._seq, self._seq + 1
        user_dict, user_codes = local_codes(users)
        item_dict, item_codes = local_codes(items)
        part = _Part(
            seq, self.user_ids.add(seq, user_dict, user_codes), self.item_ids.add(seq, item_dict, item_codes), weights
        )
        with self._lock:
            self._parts.append(part)
            self.rows += len(user_codes)

    def build(self) -> Interactions:
        """The summed CSR of every row added; call it once, after the last ``add``."""
        log.info("matrix: building the CSR from %s rows", f"{self.rows:,}")
        # The two final folds hash different columns: run them side by side.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="fold") as pool:
            user_values, item_values = pool.map(IdDictionary.finish, (self.user_ids, self.item_ids))
        parts, self._parts = sorted(self._parts, key=lambda p: p.seq), []
        n_users, n_items = len(user_values), len(item_values)
        rows = sum(len(p.users.held_codes()) for p in parts)
        if rows == 0:
            raise WorkerError(
                "no interactions left after dropping rows with null ids or invalid weights; check the input"
            )
        # Two linear counting sorts instead of one and a comparison sort per row: placing
        # the entries by item first (stable, duplicates kept) and then by user leaves every
        # row's items in order, so summing duplicates is one more linear pass. Measured on
        # 10M interactions: 0.25 s against 0.37 s for coo.tocsr(), whose per-row sort dominates.
        # Peak: the 12-byte COO triple plus the 8-byte by-item copy; then 8 + 8.
        by_item = scipy.sparse.coo_matrix(self._gather(parts, rows), shape=(n_items, n_users))
        del parts
        by_item.has_canonical_format = True  # not so: this only stops tocsr() sorting and summing here
        by_item = by_item.tocsr()  # items x users; each item's users in input order, duplicates kept
        by_user = by_item.tocsc()  # counting sort by user: each user's items come out in order
        del by_item
        matrix = scipy.sparse.csr_matrix((by_user.data, by_user.indices, by_user.indptr), shape=(n_users, n_items))
        del by_user
        matrix.has_sorted_indices = True
        with np.errstate(over="ignore"):
            matrix.sum_duplicates()
        _refuse_overflow(
            matrix,
            lambda u, i, _: (
                f"the weights of user {user_values[u].as_py()!r} and item {item_values[i].as_py()!r} sum to more than "
                f"float32 holds ({FLOAT32_MAX:.4g}); scale the weights down, or aggregate them before the export"
            ),
        )
        interactions = Interactions(matrix, user_values, item_values, rows, rows - matrix.nnz)
        log.info(
            "matrix: %s users x %s items, %s interactions (%s duplicates summed)",
            f"{interactions.users:,}",
            f"{interactions.items:,}",
            f"{matrix.nnz:,}",
            f"{interactions.duplicates:,}",
        )
        return interactions

    @staticmethod
    def _gather(parts: list[_Part], rows: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """(weights, (item codes, user codes)) of every part, freeing each part as it is copied."""
        users = np.empty(rows, np.int32)
        items = np.empty(rows, np.int32)
        data = np.empty(rows, np.float32)
        offset = 0
        for part in parts:
            n = len(part.users.held_codes())
            users[offset : offset + n] = part.users.held_codes()
            items[offset : offset + n] = part.items.held_codes()
            data[offset : offset + n] = 1.0 if part.weights is None else part.weights
            offset += n
            part.users.codes = part.items.codes = part.weights = None
        return data, (items, users)


def build_interactions(
    users: pa.ChunkedArray | pa.Array | ArrayLike,
    items: pa.ChunkedArray | pa.Array | ArrayLike,
    weights: ArrayLike | None = None,
) -> Interactions:
    """Convenience for callers holding whole columns (benchmarks, tests): one builder, one part."""
    builder = MatrixBuilder()
    builder.add(_chunked(users), _chunked(items), None if weights is None else np.asarray(weights, np.float32))
    return builder.build()


def _chunked(values: pa.ChunkedArray | pa.Array | ArrayLike) -> pa.ChunkedArray:
    if isinstance(values, pa.ChunkedArray):
        return values
    if isinstance(values, pa.Array):
        return pa.chunked_array([values])
    return pa.chunked_array([pa.array(values)])


# ---------------------------------------------------------------------------------------
# Confidence
# ---------------------------------------------------------------------------------------


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _refuse_overflow(matrix: scipy.sparse.csr_matrix, message: Callable[[int, int, int], str]) -> None:
    """Raise WorkerError(message(user, item, position)) at the first value that is not finite."""
    finite = np.isfinite(matrix.data)
    if finite.all():
        return
    at = int(np.flatnonzero(~finite)[0])
    user = int(np.searchsorted(matrix.indptr, at, side="right") - 1)
    raise WorkerError(message(user, int(matrix.indices[at]), at))


def confidence(
    matrix: scipy.sparse.csr_matrix, weighting: str = DEFAULT_WEIGHTING, alpha: float | None = None
) -> scipy.sparse.csr_matrix:
    """The confidence matrix C = 1 + alpha * f(r) of Hu, Koren and Volinsky, as a new CSR.

    implicit reads a stored value as the confidence of a positive (unstored cells have
    confidence 1 and preference 0). We compute it here for both devices, and train with
    implicit's own alpha left at 1, because its GPU ``fit`` ignores alpha: this way the CPU
    and the GPU fit the same objective.
    """
    if weighting not in WEIGHTINGS:
        raise WorkerError(f"unknown weighting '{weighting}'; use one of {', '.join(WEIGHTINGS)}")
    alpha = DEFAULT_ALPHA[weighting] if alpha is None else float(alpha)
    if not np.isfinite(alpha) or alpha < 0:
        raise WorkerError(f"--alpha must be a finite number >= 0, got {alpha}")
    r = matrix.data.astype(np.float32, copy=False)
    with np.errstate(over="ignore"):
        if weighting == "none":
            values = np.full_like(r, 1.0 + alpha)
        elif weighting == "linear":
            values = 1.0 + alpha * r
        elif weighting == "log":
            values = 1.0 + alpha * np.log1p(r)
        else:
            values = 1.0 + alpha * bm25(matrix)
        values = values.astype(np.float32, copy=False)
    # Before training: an inf confidence only shows up as implicit's "NaN encountered in factors".
    candidate = scipy.sparse.csr_matrix((values, matrix.indices, matrix.indptr), shape=matrix.shape, copy=False)
    _refuse_overflow(
        candidate,
        lambda u, i, at: (
            f"the confidence 1 + {alpha:g} x {weighting}(weight) overflows float32 ({FLOAT32_MAX:.4g}) for the weight "
            f"{float(r[at]):g} of user #{u}, item #{i}; lower --alpha, choose --weighting log or bm25, or scale the weights down"
        ),
    )
    result = candidate
    result.has_sorted_indices = matrix.has_sorted_indices
    return result


def bm25(matrix: scipy.sparse.csr_matrix, k1: float = BM25_K1, b: float = BM25_B) -> np.ndarray:
    """BM25 weight of each stored value: saturating in the count, normalised by the user's
    total, and scaled by the item's inverse user frequency."""
    r = matrix.data.astype(np.float32, copy=False)
    n_users = max(matrix.shape[0], 1)
    users_per_item = np.bincount(matrix.indices, minlength=matrix.shape[1])
    idf = (np.log(n_users) - np.log1p(users_per_item)).astype(np.float32)
    np.maximum(idf, 0.0, out=idf)
    row_sums = np.asarray(matrix.sum(axis=1), dtype=np.float32).ravel()
    mean = float(row_sums.mean()) if row_sums.size else 1.0
    length_norm = ((1.0 - b) + b * row_sums / (mean or 1.0)).astype(np.float32)
    per_row = np.repeat(length_norm, np.diff(matrix.indptr))
    weights: np.ndarray = (r * (k1 + 1.0) / (k1 * per_row + r) * idf[matrix.indices]).astype(np.float32)
    return weights
