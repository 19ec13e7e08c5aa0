"""benchmarks/als_vs_spark.py: the shared split and metric, our side, and (when pyspark is installed) Spark's side."""

from __future__ import annotations

import re

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from benchmarks import als_vs_spark as bench


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return bench.prepare(
        60_000, tmp_path_factory.mktemp("als_vs_spark") / "train", holdout=0.2, eval_users=800, objects=3, seed=2
    )


def test_the_parquet_holds_the_training_pairs_and_no_held_out_pair(data):
    table = ds.dataset(str(data.folder)).to_table()
    assert table.num_rows == data.rows and len(list(data.folder.glob("*.parquet"))) == 3
    users = bench.to_global(table["user_id"].combine_chunks(), data.user_ids)
    items = bench.to_global(table["item_id"].combine_chunks(), data.item_ids)
    keys = np.unique(users * data.train.shape[1] + items)
    assert len(keys) == data.pairs == data.train.nnz
    assert np.array_equal(keys, bench._keys(data.train))
    assert not np.isin(bench._keys(data.test), keys).any()
    # Every evaluation user has something held out and something to train on.
    assert np.all(np.diff(data.test.indptr)[data.eval_users] > 0)
    assert np.all(np.diff(data.train.indptr)[data.eval_users] > 0)
    # Repeated plays of a pair are summed into the training matrix.
    assert data.train.data.sum() == pc.sum(table["plays"]).as_py()


def test_precision_counts_held_out_hits_only(data):
    test = data.test[data.eval_users]
    perfect = np.full((len(data.eval_users), bench.K), -1, np.int64)
    for row in range(len(data.eval_users)):
        held = test.indices[test.indptr[row] : test.indptr[row + 1]][: bench.K]
        perfect[row, : len(held)] = held
    expected = np.mean(np.minimum(np.diff(test.indptr), bench.K) / bench.K)
    assert bench.precision_at_k(perfect, data) == pytest.approx(expected)
    seen = data.train[data.eval_users]
    only_seen = np.full_like(perfect, -1)
    for row in range(len(data.eval_users)):
        items = seen.indices[seen.indptr[row] : seen.indptr[row + 1]][: bench.K]
        only_seen[row, : len(items)] = items
    assert bench.precision_at_k(only_seen, data) == 0.0
    with pytest.raises(ValueError, match="expected"):
        bench.precision_at_k(perfect[:-1], data)


def test_our_pipeline_beats_popularity_on_the_shared_split(data):
    ours = bench.run_ours(data, factors=32, iterations=8, seed=2)
    assert {"ingest", "matrix", "weighting", "train", "recommend"} <= set(ours.stages)
    assert ours.extra["nnz"] == data.pairs
    assert ours.lists.shape == (len(data.eval_users), bench.K)
    # Lists are global item codes of items the user has not trained on.
    seen = data.train[data.eval_users]
    for row in range(0, len(data.eval_users), 50):
        assert not np.isin(ours.lists[row], seen.indices[seen.indptr[row] : seen.indptr[row + 1]]).any()
    assert bench.precision_at_k(ours.lists, data) > 1.3 * bench.precision_at_k(bench.popularity_lists(data), data)


def test_whole_benchmark_against_spark(capsys, tmp_path):
    pytest.importorskip("pyspark", reason="pyspark comes with the bench extra")
    code = bench.main(
        [
            "--interactions",
            "30000",
            "--factors",
            "8",
            "--iterations",
            "2",
            "--eval-users",
            "300",
            "--objects",
            "2",
            "--spark-memory",
            "1g",
            "--spark-partitions",
            "2",
            "--spark-blocks",
            "2",
            "--workdir",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    for stage in ("read", "index", "fit", "recommend"):
        assert any(line.strip().startswith(stage) for line in out), stage
    match = re.fullmatch(r"als: spark_over_ours=([\d.]+) p10_ours=([\d.]+) p10_spark=([\d.]+)", out[-1])
    assert match, out[-1]
    assert float(match.group(1)) > 0 and float(match.group(3)) > 0
    assert list(tmp_path.iterdir()) == []  # the Parquet and Spark's scratch are cleaned up
