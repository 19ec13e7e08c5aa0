"""Objects to checked rows: download and decode to Arrow, overlapped, each object's rows handed on as it is decoded.

Downloads run on the event loop with bounded concurrency; each object is decoded to
Arrow (only the needed columns) in a thread pool as soon as its bytes arrive, checked,
and handed to the caller's ``RowSink`` (the pipeline passes a ``matrix.MatrixBuilder``,
which keeps only int32 codes and float32 weights, and builds the CSR in the next stage).
Handing rows on object by object, rather than returning them all, is what keeps the
peak low: no object's decoded table outlives its own decoding.
A byte budget bounds the raw bytes held at once: a download waits for budget before it
starts, and gives it back once its object is decoded and handed on.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..contract import format_from_name
from .allocators import bound_allocators
from .errors import WorkerError
from .matrix import id_value_type
from .storage import MiB, ObjectRef, Store, gather_or_cancel, open_store

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger("airflow_gpu.worker")

FORMATS = ("auto", "parquet", "orc", "csv")
_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


@dataclass(frozen=True)
class Columns:
    user: str = "user_id"
    item: str = "item_id"
    weight: str | None = None

    @property
    def needed(self) -> list[str]:
        return [c for c in (self.user, self.item, self.weight) if c]


@dataclass
class IngestStats:
    objects: int = 0
    objects_read: int = 0
    empty_objects: int = 0
    bytes: int = 0
    decoded_bytes: int = 0  # of the objects decoded so far: what the progress rate counts
    rows_read: int = 0
    null_id_rows: int = 0
    invalid_weight_rows: int = 0
    zero_weight_rows: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # listing, downloading, decoding, and the sink's work on each object's rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "empty_objects": self.empty_objects,
            "bytes": self.bytes,
            "rows_read": self.rows_read,
            "null_id_rows_dropped": self.null_id_rows,
            "invalid_weight_rows_dropped": self.invalid_weight_rows,
            "zero_weight_rows_dropped": self.zero_weight_rows,
            "formats": dict(self.formats),
            "seconds": round(self.seconds, 4),
            "mb_per_s": round(self.bytes / MiB / self.seconds, 2) if self.seconds else None,
            "rows_per_s": round(self.rows_read / self.seconds) if self.seconds else None,
        }


# ---------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------


def sniff_format(head: bytes) -> str | None:
    if head[:4] == b"PAR1":
        return "parquet"
    if head[:3] == b"ORC":
        return "orc"
    return None


def decode(data: Buffer, fmt: str, columns: Columns, uri: str) -> pa.Table:
    """One object's needed columns as an Arrow table; a clear error for a corrupt object or a missing column."""
    buffer = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    if fmt == "auto":
        fmt = format_from_name(uri) or sniff_format(buffer[:4].to_pybytes()) or ""
        if not fmt:
            raise WorkerError(
                f"cannot tell the format of {uri} from its name or its first bytes; pass --format parquet, orc or csv"
            )
    try:
        if fmt == "parquet":
            return _decode_parquet(buffer, columns, uri)
        if fmt == "orc":
            return _decode_orc(buffer, columns, uri)
        return _decode_csv(buffer, columns, uri)
    except WorkerError:
        raise
    except (pa.ArrowException, OSError, ValueError, IndexError, KeyError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise WorkerError(
            f"{uri} is not a readable {fmt.upper()} object ({detail}); replace or remove it, or pass the right --format"
        ) from None


def _check_columns(names: list[str], columns: Columns, uri: str) -> None:
    for flag, column in (("--user-col", columns.user), ("--item-col", columns.item), ("--weight-col", columns.weight)):
        if column and column not in names:
            raise WorkerError(
                f"column '{column}' not found in {uri} (it has: {', '.join(names) or 'no columns'}); "
                f"pass the right name with {flag}"
            )


def _decode_parquet(buffer: pa.Buffer, columns: Columns, uri: str) -> pa.Table:
    import pyarrow.parquet as pq

    schema = pq.read_schema(pa.BufferReader(buffer))
    _check_columns(schema.names, columns, uri)
    # String ids come out still dictionary-encoded, as Parquet stores them: no per-row
    # strings are ever built, and encoding only unifies the row groups' dictionaries.
    as_dictionary = [
        c
        for c in (columns.user, columns.item)
        if pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type)
    ]
    reader = pq.ParquetFile(pa.BufferReader(buffer), read_dictionary=as_dictionary)
    return reader.read(columns=columns.needed, use_threads=False)


def _decode_orc(buffer: pa.Buffer, columns: Columns, uri: str) -> pa.Table:
    from pyarrow import orc

    reader = orc.ORCFile(pa.BufferReader(buffer))
    _check_columns(reader.schema.names, columns, uri)
    return reader.read(columns=columns.needed)


def _decode_csv(buffer: pa.Buffer, columns: Columns, uri: str) -> pa.Table:
    from pyarrow import csv as pacsv

    codec = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}.get(os.path.splitext(uri.lower())[1])

    def stream() -> pa.NativeFile:
        source = pa.BufferReader(buffer)
        return pa.CompressedInputStream(source, codec) if codec else source

    header = _csv_header(stream())
    _check_columns(header, columns, uri)
    read = pacsv.ReadOptions(use_threads=False, block_size=16 * MiB)
    try:
        return pacsv.read_csv(
            stream(), read_options=read, convert_options=pacsv.ConvertOptions(include_columns=columns.needed)
        )
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc).lower():
            raise
    # Types are inferred from the first block; a later block that disagrees (ids "17" then
    # "A17", or a stray word among the weights) is read again as text and checked below.
    as_text = {c: pa.string() for c in columns.needed}
    return pacsv.read_csv(
        stream(),
        read_options=read,
        convert_options=pacsv.ConvertOptions(include_columns=columns.needed, column_types=as_text),
    )


def _csv_header(source: pa.NativeFile) -> list[str]:
    head = source.read(64 * 1024)
    head = (head if isinstance(head, bytes) else head.to_pybytes()).decode("utf-8", errors="replace")
    line = head.splitlines()[0] if head else ""
    return next(csv.reader(io.StringIO(line)), [])


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------


@dataclass
class Checked:
    users: pa.ChunkedArray
    items: pa.ChunkedArray
    weights: np.ndarray | None
    rows: int
    null_ids: int = 0
    invalid_weights: int = 0
    zero_weights: int = 0


def check(table: pa.Table, columns: Columns, uri: str, drop_invalid: bool) -> Checked:
    """Types, nulls and weights of one object's rows, as the issue's rules say."""
    for flag, name in (("--user-col", columns.user), ("--item-col", columns.item)):
        column_type = table.schema.field(name).type
        if id_value_type(column_type) is None:
            raise WorkerError(
                f"column '{name}' in {uri} has type {column_type}, but ids must be strings or integers; "
                f"cast it when exporting, or choose another column with {flag}"
            )
    users, items = table[columns.user], table[columns.item]
    rows = table.num_rows
    keep = None
    null_ids = 0
    if users.null_count or items.null_count:
        keep = pc.and_(pc.is_valid(users), pc.is_valid(items))
        null_ids = rows - pc.sum(keep).as_py()

    weights = None
    invalid = zero = 0
    if columns.weight:
        values, bad = _weights(table[columns.weight], columns.weight, uri, drop_invalid)
        if keep is not None:
            ids_ok = keep.to_numpy(zero_copy_only=False)
            bad &= ids_ok
        else:
            ids_ok = None
        invalid = int(bad.sum())
        if invalid and not drop_invalid:
            row = int(np.flatnonzero(bad)[0])
            shown = table[columns.weight][row].as_py()
            # Checked in float64: a finite weight above float32's range would become inf when stored.
            rule = "weights must be numbers >= 0"
            if isinstance(shown, (int, float)) and np.isfinite(float(shown)) and float(shown) > FLOAT32_MAX:
                rule = f"{shown!r} is finite but larger than float32 holds ({FLOAT32_MAX:.4g}), which training uses"
            raise WorkerError(
                f"column '{columns.weight}' in {uri} has {invalid} invalid weight(s), e.g. {shown!r} at row {row}; "
                f"{rule}. Fix the data, or pass --drop-invalid to skip those rows"
            )
        good = ~bad & (values > 0)
        zero = int((~bad & (values == 0)).sum()) if ids_ok is None else int((~bad & (values == 0) & ids_ok).sum())
        if ids_ok is not None:
            good &= ids_ok
        if not good.all():
            keep = pa.array(good)
            values = values[good]
        weights = values.astype(np.float32)
    if keep is not None:
        users, items = users.filter(keep), items.filter(keep)
    return Checked(users, items, weights, rows, null_ids, invalid, zero)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _weights(column: pa.ChunkedArray, name: str, uri: str, drop_invalid: bool) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with invalid ones set to 0, mask of invalid rows)."""
    column_type = column.type
    if column.null_count == 0 and (pa.types.is_integer(column_type) or pa.types.is_floating(column_type)):
        # The common case, without a float64 round trip: integers can only be negative.
        array = np.concatenate([c.to_numpy() for c in column.chunks]) if column.num_chunks else np.empty(0)
        if pa.types.is_integer(column_type):
            bad = array < 0
            return array.astype(np.float64) if bad.any() else array, bad
        array = array.astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(array) | (array < 0) | (array > FLOAT32_MAX)
        if bad.any():
            array[bad] = 0.0
        return array, bad
    if pa.types.is_integer(column_type) or pa.types.is_floating(column_type) or pa.types.is_decimal(column_type):
        values = column.cast(pa.float64())
    elif pa.types.is_string(column_type) or pa.types.is_large_string(column_type):
        numeric = pc.match_substring_regex(column, _NUMBER)
        ok = pc.fill_null(numeric, False)
        if not pc.all(pc.or_(ok, pc.is_null(column))).as_py():
            if not drop_invalid:
                bad = pc.and_(pc.invert(ok), pc.is_valid(column))
                example = pc.filter(column, bad)[0].as_py()
                raise WorkerError(
                    f"column '{name}' in {uri} has non-numeric weights such as {example!r}; "
                    "fix the data, or pass --drop-invalid to skip those rows"
                )
        values = pc.if_else(ok, column, pa.scalar(None, column.type)).cast(pa.float64())
    else:
        raise WorkerError(
            f"column '{name}' in {uri} has type {column_type}, but weights must be numbers; "
            "cast it when exporting, or choose another column with --weight-col"
        )
    array = values.to_numpy() if values.null_count == 0 else pc.fill_null(values, np.nan).to_numpy()
    array = np.array(array, dtype=np.float64)  # writable: invalid values are zeroed below
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(array) | (array < 0) | (array > FLOAT32_MAX)
    array[bad] = 0.0
    return array, bad


# ---------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------


class ByteBudget:
    """At most ``limit`` bytes of raw objects held at once; one bigger object may run alone."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    async def acquire(self, size: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.used == 0 or self.used + size <= self.limit)
            self.used += size

    async def release(self, size: int) -> None:
        async with self._changed:
            self.used -= size
            self._changed.notify_all()


def default_budget(concurrency: int) -> int:
    """A quarter of RAM, at most 2 GiB: enough to keep every connection busy on typical parts."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 1024 * MiB
    return int(max(64 * MiB, min(2048 * MiB, total // 4, concurrency * 128 * MiB)))


class Progress:
    """One line every ``interval`` seconds while a stage runs: objects, bytes, rows, MB/s.

    The rate counts the objects decoded, not those merely downloaded: downloads run ahead of
    decoding (all of a small local input is "read" at once), and decoding is the ingest's pace.
    """

    def __init__(self, stats: IngestStats, interval: float) -> None:
        self.stats, self.interval = stats, interval
        self.started = time.monotonic()

    def line(self) -> str:
        s = self.stats
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"ingest: {s.objects_read}/{s.objects} objects, {s.bytes / MiB:,.1f} MB, "
            f"{s.rows_read:,} rows, {megabytes_per_second(s.decoded_bytes, elapsed)} MB/s"
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            log.info(self.line())


def megabytes_per_second(size: int, seconds: float) -> str:
    """Enough digits to be read at any scale: a small input is slow, not 0.0 MB/s."""
    rate = size / MiB / max(seconds, 1e-9)
    if rate >= 100:
        return f"{rate:,.0f}"
    if rate >= 1 or rate == 0:
        return f"{rate:.1f}"
    return f"{rate:.2g}"


class RowSink(Protocol):
    """Where ingest hands each object's checked rows, from the decoding threads (so: thread-safe).

    ``seq`` is the object's position in the listing; every position from 0 up is handed
    over once, an empty object's (with no rows) too, so the sink can keep listing order.
    """

    def add(self, users: pa.ChunkedArray, items: pa.ChunkedArray, weights: np.ndarray | None, *, seq: int) -> None: ...


async def ingest(
    uri: str,
    columns: Columns,
    sink: RowSink,
    *,
    fmt: str = "auto",
    endpoint_url: str | None = None,
    concurrency: int = 16,
    drop_invalid: bool = False,
    threads: int | None = None,
    memory_budget: int | None = None,
    progress_interval: float = 5.0,
) -> IngestStats:
    """Read every object under ``uri``, handing each one's rows to ``sink`` as soon as they are decoded and checked."""
    if fmt not in FORMATS:
        raise WorkerError(f"unknown --format '{fmt}'; use one of {', '.join(FORMATS)}")
    bound_allocators()
    started = time.monotonic()
    stats = IngestStats()
    async with open_store(uri, endpoint_url=endpoint_url, concurrency=concurrency) as store:
        refs = await store.list()
        if not refs:
            raise WorkerError(
                f"no data objects under {uri}; check --input (a missing prefix and an empty one look the same)"
            )
        stats.objects = len(refs)
        log.info("ingest: %d objects, %.1f MB under %s", len(refs), sum(r.size for r in refs) / MiB, uri)
        await _stream(
            store, refs, sink, stats, columns, fmt, concurrency, drop_invalid, threads, memory_budget, progress_interval
        )
        if stats.empty_objects == len(refs):
            shown = ", ".join(store.ref_uri(r) for r in refs[:3]) + (", ..." if len(refs) > 3 else "")
            if len(refs) == 1:
                raise WorkerError(
                    f"{shown} is empty (0 bytes), the only object under {uri}; check the export that wrote it"
                )
            raise WorkerError(
                f"all {len(refs)} objects under {uri} are empty (0 bytes): {shown}; check the export that wrote them"
            )
    stats.seconds = time.monotonic() - started
    return stats


async def _stream(
    store: Store,
    refs: list[ObjectRef],
    sink: RowSink,
    stats: IngestStats,
    columns: Columns,
    fmt: str,
    concurrency: int,
    drop_invalid: bool,
    threads: int | None,
    memory_budget: int | None,
    progress_interval: float,
) -> None:
    loop = asyncio.get_running_loop()
    budget = ByteBudget(memory_budget or default_budget(concurrency))
    downloads = asyncio.Semaphore(max(1, concurrency))
    progress = Progress(stats, progress_interval)
    reporter = asyncio.create_task(progress.run())
    workers = threads or os.cpu_count() or 1
    counting = threading.Lock()

    def process(seq: int, ref: ObjectRef, data: Buffer) -> None:
        uri = store.ref_uri(ref)
        object_format = fmt if fmt != "auto" else (format_from_name(ref.name) or "auto")
        table = decode(data, object_format, columns, uri)
        del data
        checked = check(table, columns, uri, drop_invalid)
        del table
        sink.add(checked.users, checked.items, checked.weights, seq=seq)
        with counting:
            stats.rows_read += checked.rows
            stats.null_id_rows += checked.null_ids
            stats.invalid_weight_rows += checked.invalid_weights
            stats.zero_weight_rows += checked.zero_weights
            stats.objects_read += 1
            stats.decoded_bytes += ref.size
            stats.formats[object_format] = stats.formats.get(object_format, 0) + 1

    async def one(seq: int, ref: ObjectRef, pool: ThreadPoolExecutor) -> None:
        if ref.size == 0:
            # Exports leave empty parts behind; they hold no rows, whatever their format.
            log.warning("ingest: %s is empty (0 bytes); skipped", store.ref_uri(ref))
            sink.add(pa.chunked_array([], pa.int64()), pa.chunked_array([], pa.int64()), None, seq=seq)
            stats.empty_objects += 1
            stats.objects_read += 1
            return
        await budget.acquire(ref.size)
        try:
            async with downloads:
                data = await store.read(ref)
            stats.bytes += ref.size
            await loop.run_in_executor(pool, process, seq, ref, data)
            del data
        finally:
            await budget.release(ref.size)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            await gather_or_cancel([one(seq, ref, pool) for seq, ref in enumerate(refs)])
    finally:
        reporter.cancel()
    log.info(progress.line())
