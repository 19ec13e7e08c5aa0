"""Ingest through a real S3 wire protocol (moto server) and local paths: formats, ids, nulls, weights."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from airflow_gpu.worker import storage
from airflow_gpu.worker.errors import WorkerError
from airflow_gpu.worker.ingest import Columns, ingest
from airflow_gpu.worker.matrix import MatrixBuilder

BUCKET = "data"


def encode(table: pa.Table, fmt: str) -> bytes:
    sink = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, sink, row_group_size=max(1, table.num_rows // 3))
    elif fmt == "orc":
        orc.write_table(table, sink)
    else:
        pacsv.write_csv(table, sink)
    return sink.getvalue()


def put(s3, key: str, data: bytes, bucket: str = BUCKET) -> None:
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.put_object(Bucket=bucket, Key=key, Body=data)


def sample(string_ids: bool, rows: int = 300, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, rows)
    items = rng.integers(0, 25, rows)
    weights = rng.integers(1, 5, rows).astype(np.float64)
    if string_ids:
        return pa.table({"user": [f"u-{u}" for u in users], "item": [f"i/{i}" for i in items], "w": weights})
    return pa.table({"user": users * 1000 + 7, "item": items + 10**12, "w": weights})


def expected_sums(table: pa.Table) -> dict:
    sums: dict = {}
    for u, i, w in zip(table["user"].to_pylist(), table["item"].to_pylist(), table["w"].to_pylist()):
        sums[(u, i)] = sums.get((u, i), 0.0) + w
    return sums


def as_sums(interactions) -> dict:
    coo = interactions.matrix.tocoo()
    users = interactions.user_ids.to_pylist()
    items = interactions.item_ids.to_pylist()
    return {(users[r], items[c]): float(v) for r, c, v in zip(coo.row, coo.col, coo.data)}


def run(uri: str, columns=Columns("user", "item", "w"), **kwargs):
    """Ingest into a matrix builder, then build: the two stages as the pipeline chains them."""
    builder = MatrixBuilder(columns.user, columns.item)
    stats = asyncio.run(ingest(uri, columns, builder, progress_interval=0.05, **kwargs))
    return builder.build(), stats


class RecordingSink:
    """A row sink that keeps what ingest hands it, per object: (rows, users, items, weights)."""

    def __init__(self) -> None:
        self.objects: dict[int, tuple] = {}

    def add(self, users, items, weights, *, seq):
        assert seq not in self.objects, f"object {seq} handed over twice"
        self.objects[seq] = (
            len(users),
            users.to_pylist(),
            items.to_pylist(),
            None if weights is None else weights.tolist(),
        )


def test_ingest_hands_each_objects_checked_rows_to_the_sink_in_listing_positions(tmp_path):
    # Three objects and an empty one: each listing position is handed over once, the empty one
    # with no rows, and the rows are the checked ones (the null id dropped), with float32 weights.
    table = pa.table({"user": ["a", "b", None, "c"], "item": ["x", "y", "z", "x"], "w": [1.0, 2.0, 3.0, 4.0]})
    (tmp_path / "0.parquet").write_bytes(encode(table.slice(0, 2), "parquet"))
    (tmp_path / "1.parquet").write_bytes(b"")
    (tmp_path / "2.parquet").write_bytes(encode(table.slice(2, 2), "parquet"))
    sink = RecordingSink()
    stats = asyncio.run(ingest(str(tmp_path), Columns("user", "item", "w"), sink, progress_interval=0.05))
    assert sink.objects == {
        0: (2, ["a", "b"], ["x", "y"], [1.0, 2.0]),
        1: (0, [], [], None),
        2: (1, ["c"], ["x"], [4.0]),
    }
    assert (stats.objects, stats.empty_objects, stats.rows_read, stats.null_id_rows) == (3, 1, 4, 1)


@pytest.mark.parametrize("fmt", ["parquet", "orc", "csv"])
@pytest.mark.parametrize("string_ids", [True, False], ids=["string-ids", "int-ids"])
def test_round_trip_over_s3(moto_aws, fmt, string_ids):
    s3 = moto_aws.client("s3")
    table = sample(string_ids)
    parts = [table.slice(0, 100), table.slice(100, 120), table.slice(220)]
    for n, part in enumerate(parts):
        put(s3, f"in/{fmt}/part-{n}.{fmt}", encode(part, fmt))
    put(s3, f"in/{fmt}/_SUCCESS", b"")  # export markers are skipped

    interactions, stats = run(f"s3://{BUCKET}/in/{fmt}/", endpoint_url=moto_aws.endpoint_url)

    assert stats.objects == 3 and stats.rows_read == 300
    assert as_sums(interactions) == expected_sums(table)
    id_type = interactions.user_ids.type
    assert (pa.types.is_integer(id_type)) == (not string_ids)
    assert interactions.rows == 300
    assert interactions.duplicates == 300 - len(expected_sums(table))


@pytest.mark.parametrize("fmt", ["parquet", "orc", "csv"])
def test_round_trip_local_folder_and_single_file(tmp_path, fmt):
    table = sample(True, seed=3)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"a.{fmt}").write_bytes(encode(table.slice(0, 150), fmt))
    (folder / f"b.{fmt}").write_bytes(encode(table.slice(150), fmt))
    interactions, _ = run(str(folder))
    assert as_sums(interactions) == expected_sums(table)

    single, stats = run(str(folder / f"a.{fmt}"))
    assert stats.objects == 1
    assert as_sums(single) == expected_sums(table.slice(0, 150))


def test_without_weight_column_each_row_counts_once(tmp_path):
    table = pa.table({"user": ["a", "a", "b", "a"], "item": ["x", "x", "x", "y"]})
    (tmp_path / "p.parquet").write_bytes(encode(table, "parquet"))
    interactions, _ = run(str(tmp_path), Columns("user", "item"))
    assert as_sums(interactions) == {("a", "x"): 2.0, ("b", "x"): 1.0, ("a", "y"): 1.0}


def test_unknown_extension_is_sniffed(tmp_path):
    table = sample(True)
    (tmp_path / "part-0000").write_bytes(encode(table, "orc"))
    (tmp_path / "part-0001").write_bytes(encode(table, "parquet"))
    interactions, stats = run(str(tmp_path))
    assert stats.rows_read == 600
    assert sum(as_sums(interactions).values()) == pytest.approx(2 * sum(table["w"].to_pylist()))


def test_null_ids_are_dropped_and_counted(tmp_path):
    table = pa.table({"user": ["a", None, "b", "c"], "item": ["x", "y", None, "x"], "w": [1.0, 2.0, 3.0, 4.0]})
    (tmp_path / "p.parquet").write_bytes(encode(table, "parquet"))
    interactions, stats = run(str(tmp_path))
    assert stats.null_id_rows == 2
    assert as_sums(interactions) == {("a", "x"): 1.0, ("c", "x"): 4.0}


def test_zero_weights_are_dropped(tmp_path):
    table = pa.table({"user": ["a", "b"], "item": ["x", "x"], "w": [0.0, 2.0]})
    (tmp_path / "p.parquet").write_bytes(encode(table, "parquet"))
    interactions, stats = run(str(tmp_path))
    assert stats.zero_weight_rows == 1
    assert as_sums(interactions) == {("b", "x"): 2.0}


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_invalid_weight_is_an_error_unless_dropped(tmp_path, bad):
    table = pa.table({"user": ["a", "b", "c"], "item": ["x", "x", "y"], "w": [1.0, bad, 2.0]})
    (tmp_path / "p.parquet").write_bytes(encode(table, "parquet"))
    with pytest.raises(WorkerError, match=r"column 'w' in .*p\.parquet has 1 invalid weight.*--drop-invalid"):
        run(str(tmp_path))
    interactions, stats = run(str(tmp_path), drop_invalid=True)
    assert stats.invalid_weight_rows == 1
    assert as_sums(interactions) == {("a", "x"): 1.0, ("c", "y"): 2.0}


def test_non_numeric_weight_in_csv(tmp_path):
    (tmp_path / "p.csv").write_text("user,item,w\na,x,1\nb,y,lots\nc,x,2.5\n")
    with pytest.raises(
        WorkerError, match=r"column 'w' in .*p\.csv has non-numeric weights such as 'lots'.*--drop-invalid"
    ):
        run(str(tmp_path))
    interactions, stats = run(str(tmp_path), drop_invalid=True)
    assert stats.invalid_weight_rows == 1
    assert as_sums(interactions) == {("a", "x"): 1.0, ("c", "x"): 2.5}


def test_mixed_integer_and_string_ids_become_strings(tmp_path):
    (tmp_path / "a.parquet").write_bytes(encode(pa.table({"user": [1, 2], "item": [5, 6], "w": [1.0, 1.0]}), "parquet"))
    (tmp_path / "b.parquet").write_bytes(
        encode(pa.table({"user": ["1", "x"], "item": [5, 6], "w": [1.0, 1.0]}), "parquet")
    )
    interactions, _ = run(str(tmp_path))
    assert as_sums(interactions) == {("1", 5): 2.0, ("2", 6): 1.0, ("x", 6): 1.0}


def test_large_objects_use_parallel_ranged_gets(moto_aws, monkeypatch):
    monkeypatch.setattr(storage, "PART_SIZE", 4096)
    s3 = moto_aws.client("s3")
    table = sample(True, rows=20_000, seed=5)
    data = encode(table, "parquet")
    assert len(data) > 3 * 4096
    put(s3, "big/one.parquet", data)
    ranges = []
    original = storage.S3Store.read

    async def spy(self, ref):
        get_object = self._client.get_object

        async def counting_get(**kwargs):
            ranges.append(kwargs.get("Range"))
            return await get_object(**kwargs)

        self._client.get_object = counting_get
        return await original(self, ref)

    monkeypatch.setattr(storage.S3Store, "read", spy)
    interactions, _ = run(f"s3://{BUCKET}/big/", endpoint_url=moto_aws.endpoint_url)
    assert len(ranges) == -(-len(data) // 4096)
    assert ranges[0] == "bytes=0-4095" and all(r and r.startswith("bytes=") for r in ranges)
    assert as_sums(interactions) == expected_sums(table)


def test_listing_follows_pagination(moto_aws, monkeypatch):
    s3 = moto_aws.client("s3")
    table = sample(True, rows=50)
    for n in range(7):
        put(s3, f"paged/part-{n}.parquet", encode(table.slice(n * 7, 7), "parquet"))
    pages = []
    original = storage.S3Store.list

    async def small_pages(self):
        paginate = self._client.get_paginator("list_objects_v2").paginate

        class Paginator:
            def paginate(self_inner, **kwargs):
                pages.append(kwargs)
                return paginate(**kwargs, PaginationConfig={"PageSize": 2})

        self._client.get_paginator = lambda name: Paginator()
        return await original(self)

    monkeypatch.setattr(storage.S3Store, "list", small_pages)
    interactions, stats = run(f"s3://{BUCKET}/paged", endpoint_url=moto_aws.endpoint_url)
    assert pages and stats.objects == 7
    assert as_sums(interactions) == expected_sums(table.slice(0, 49))


def test_indices_do_not_depend_on_download_order(tmp_path):
    table = sample(True, rows=3000, seed=9)
    for n in range(6):
        (tmp_path / f"p{n}.parquet").write_bytes(encode(table.slice(n * 500, 500), "parquet"))
    first, _ = run(str(tmp_path), concurrency=6)
    second, _ = run(str(tmp_path), concurrency=1, threads=1)
    assert first.user_ids.equals(second.user_ids)
    assert first.item_ids.equals(second.item_ids)
    assert (first.matrix != second.matrix).nnz == 0


def test_json_stats(tmp_path):
    (tmp_path / "p.parquet").write_bytes(encode(sample(True), "parquet"))
    _, stats = run(str(tmp_path))
    document = json.loads(json.dumps(stats.as_dict()))
    assert document["rows_read"] == 300 and document["formats"] == {"parquet": 1}


def test_the_progress_rate_of_a_small_slow_ingest_is_not_zero():
    from airflow_gpu.worker.ingest import IngestStats, Progress

    stats = IngestStats(objects=3, objects_read=3, bytes=60_000, decoded_bytes=60_000, rows_read=20_000)
    progress = Progress(stats, interval=5)
    progress.started -= 5.0  # 60 kB in 5 s, as a local run of a small input (decoding's warm-up) goes
    assert progress.line().endswith("rows, 0.011 MB/s"), progress.line()


def test_the_progress_rate_counts_decoded_objects_not_downloads():
    from airflow_gpu.worker.ingest import IngestStats, Progress

    stats = IngestStats(objects=3, objects_read=0, bytes=3_000_000)  # all downloaded, none decoded yet
    assert Progress(stats, interval=5).line().endswith("0 rows, 0.0 MB/s")


def test_the_last_ingest_line_of_a_local_run_shows_a_rate(tmp_path, caplog):
    (tmp_path / "p.parquet").write_bytes(encode(sample(True, rows=3000), "parquet"))
    with caplog.at_level("INFO", logger="airflow_gpu.worker"):
        run(str(tmp_path))
    [last] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ingest: 1/1 objects")][-1:]
    rate = float(last.rsplit(", ", 1)[1].split()[0].replace(",", ""))
    assert rate > 0, last
