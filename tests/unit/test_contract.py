"""The contract between the wings (airflow_gpu.contract): one rule each, seen alike on both sides."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from airflow_gpu import contract

DAG_PATH = Path(__file__).resolve().parents[2] / "dags" / "gpu_recommendations.py"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("part-00000.snappy.parquet", "parquet"),
        ("part-0.parq", "parquet"),
        ("part-0.PQ", "parquet"),
        ("part-0.zlib.orc", "orc"),
        ("part-0.csv", "csv"),
        ("part-0.csv.gz", "csv"),
        ("part-0.txt", "csv"),
        ("part-0", None),
        ("part-0.json", None),
    ],
)
def test_format_from_name(name, expected):
    assert contract.format_from_name(name) == expected


def test_markers_and_data_names():
    assert contract.is_marker("_SUCCESS") and contract.is_marker("a/.part-0.crc") and contract.is_marker("folder/")
    assert not contract.is_marker("a/part-00000-1b2c-c000.snappy.orc")


def test_split_s3():
    assert contract.split_s3("s3://bucket/some/key") == ("bucket", "some/key")
    assert contract.split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="names no bucket; write s3://BUCKET/PREFIX/"):
        contract.split_s3("s3:///key")


def test_committed_manifest_needs_complete_true():
    assert contract.committed_manifest(b'{"complete": true, "run_id": "r"}') == {"complete": True, "run_id": "r"}
    assert contract.committed_manifest(b'{"complete": false}') is None
    assert contract.committed_manifest(b"[1]") is None
    with pytest.raises(ValueError):
        contract.committed_manifest(b"{not json")


def test_the_dags_input_description_and_the_workers_ingest_agree_on_formats(tmp_path, monkeypatch):
    """The DAG's prepare step sorts an input prefix by format the way ingest will decode it."""
    from airflow.sdk import Variable

    from airflow_gpu.worker import ingest

    spec = importlib.util.spec_from_file_location("gpu_recommendations_contract", DAG_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    root = tmp_path / "lake"
    names = ["a.pq", "b.parq", "c.txt", "d.orc", "e.csv.gz", "f.parquet", "g.bin"]
    (root / "interactions").mkdir(parents=True)
    for name in names + ["_SUCCESS"]:
        (root / "interactions" / name).write_bytes(b"x")
    override = {"production": {"data_root": f"{root}/"}}
    monkeypatch.setattr(Variable, "get", staticmethod(lambda *args, **kwargs: override))
    params = {name: param.value for name, param in module.PARAMS.items()}
    params["environment"] = "production"
    prepared = module.dag.get_task("prepare").python_callable(params=params, run_id="manual__1")

    expected: dict[str, dict[str, int]] = {}
    for name in names:
        kind = ingest.format_from_name(name) or "other"
        expected.setdefault(kind, {"objects": 0, "bytes": 0})
        expected[kind]["objects"] += 1
        expected[kind]["bytes"] += 1
    assert prepared["formats"] == expected
    assert expected["parquet"]["objects"] == 3 and expected["csv"]["objects"] == 2
