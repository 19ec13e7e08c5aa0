"""Weights that fit float64 but not float32 are refused before training, naming where they are."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_gpu.worker.__main__ import main

SMALL = ["--factors", "4", "--iterations", "2", "--threads", "1", "--top-n", "2", "--similar-n", "0"]


def _write(
    folder, name: str, plays: list[float], users: list[str] | None = None, items: list[str] | None = None
) -> None:
    folder.mkdir(exist_ok=True)
    n = len(plays)
    users = users or [f"u{i % 7}" for i in range(n)]
    items = items or [f"i{i % 5}" for i in range(n)]
    pq.write_table(
        pa.table({"user_id": users, "item_id": items, "plays": pa.array(plays, pa.float64())}), folder / name
    )


def _als(tmp_path, *extra: str) -> int:
    return main(
        [
            "als",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            "--weight-col",
            "plays",
            *SMALL,
            *extra,
        ]
    )


def test_a_finite_weight_above_float32_is_refused_naming_object_row_and_value(tmp_path, capsys):
    _write(tmp_path / "in", "a.parquet", [1.0] * 40)
    plays = [2.0] * 40
    plays[5] = 1e39
    _write(tmp_path / "in", "b.parquet", plays)
    code = _als(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert str(tmp_path / "in" / "b.parquet") in err and "1e+39 at row 5" in err and "larger than float32" in err
    assert "--drop-invalid" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_drop_invalid_drops_the_too_large_weight(tmp_path, capsys):
    plays = [2.0] * 60
    plays[5] = 1e39
    _write(tmp_path / "in", "b.parquet", plays)
    assert _als(tmp_path, "--drop-invalid") == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    metrics = json.loads((tmp_path / "out" / manifest["metrics"]).read_text())
    assert metrics["counts"]["invalid_weight_rows_dropped"] == 1


def test_a_confidence_that_would_overflow_float32_is_refused_before_training(tmp_path, capsys):
    plays = [1.0] * 40
    plays[3] = 3e38  # fits float32; 1 + 10 x 3e38 does not
    _write(tmp_path / "in", "a.parquet", plays)
    code = _als(tmp_path, "--weighting", "linear", "--alpha", "10")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert "confidence 1 + 10 x linear(weight) overflows float32" in err and "3e+38" in err and "lower --alpha" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_duplicates_that_sum_past_float32_are_refused_naming_the_pair(tmp_path, capsys):
    _write(
        tmp_path / "in",
        "a.parquet",
        [3e38, 3e38, 1.0, 1.0],
        users=["ann", "ann", "bob", "cy"],
        items=["x", "x", "y", "x"],
    )
    code = _als(tmp_path, "--weighting", "log")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "user 'ann' and item 'x' sum to more than float32 holds" in err
