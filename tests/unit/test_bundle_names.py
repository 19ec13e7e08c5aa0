"""The names a code bundle travels under, the sizes a person types, and the ignore file's patterns."""

from __future__ import annotations

import pytest

from airflow_gpu.bundles import _ignored, parse_size
from airflow_gpu.contract import bundle_digest, bundle_name

DIGEST = "ab" * 32


def test_a_bundle_name_declares_its_digest_and_nothing_else_does():
    assert bundle_name(DIGEST) == f"{DIGEST}.tar.gz"
    assert bundle_digest(f"s3://b/staging/code/{DIGEST}.tar.gz") == DIGEST
    assert bundle_digest("/tmp/project.tar.gz") is None  # a local archive of any name: no digest to check
    assert bundle_digest(f"s3://b/code/{DIGEST.upper()}.tar.gz") is None
    assert bundle_digest(f"s3://b/code/{DIGEST}.zip") is None


@pytest.mark.parametrize(
    "text, size", [("200MB", 200 * 10**6), ("1.5GB", 1_500_000_000), ("500k", 500_000), ("4096", 4096)]
)
def test_sizes_are_read_in_decimal_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "-3MB", "5TB"])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="expected a size such as 200MB"):
        parse_size(text)


@pytest.mark.parametrize(
    "path, ignored",
    [
        ("data/big.parquet", True),
        ("src/data/x.csv", True),
        ("notes.log", True),
        ("deep/run.log", True),
        ("models/ckpt/a.pt", True),
        ("src/models/ckpt/a.pt", False),
        ("train.py", False),
        ("database.py", False),
    ],
)
def test_ignore_patterns_match_names_anywhere_and_slashed_paths_from_the_root(path, ignored):
    assert _ignored(path, ["data", "*.log", "/models/ckpt"]) is ignored
