"""What both wings must agree on, written once: the standard library only, importable from either.

The worker (in the GPU image, without Airflow) writes outputs that the Airflow wing reads;
the DAG describes an input prefix that the worker later ingests. Each side keeps its own
I/O (blocking boto3 on Airflow's side, aiobotocore in the worker), but the names, versions
and rules that the two must see alike live here, so they cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The worker writes MANIFEST last under its --output prefix: the commit point. A prefix
# without a complete manifest is absent to every reader.
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "airflow-gpu-manifest"
MANIFEST_VERSION = 1
# The DAG's "latest" marker, written only after the outputs it points at validate.
LATEST_FORMAT = "airflow-gpu-latest"
LATEST_VERSION = 1

# Set by the submitting backend in every job's environment (epoch seconds): Batch tells a
# container nothing about when it was submitted, and the run report wants the queue wait.
SUBMITTED_AT_ENV = "AIRFLOW_GPU_SUBMITTED_AT"


def submitted_at_value(when: float) -> str:
    """``SUBMITTED_AT_ENV``'s value for a submit at epoch ``when``: seconds, to the millisecond."""
    return f"{when:.3f}"


# Input formats by file name; longest suffix first, so ".csv.gz" wins over ".gz"-less guesses.
FORMAT_EXTENSIONS = {
    ".parquet": "parquet",
    ".parq": "parquet",
    ".pq": "parquet",
    ".orc": "orc",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".csv.bz2": "csv",
    ".csv.zst": "csv",
    ".txt": "csv",
}


def is_marker(name: str) -> bool:
    """Files exports leave beside their data (_SUCCESS, .crc, folder keys): never read as data."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return not base or name.endswith("/") or base.startswith(("_", "."))


def format_from_name(name: str) -> str | None:
    """``parquet``, ``orc`` or ``csv`` from a file name's extension, or None when it says nothing."""
    lower = name.lower()
    for ext in sorted(FORMAT_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return FORMAT_EXTENSIONS[ext]
    return None


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); ValueError when no bucket is named."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"'{uri}' names no bucket; write s3://BUCKET/PREFIX/")
    return bucket, key


def local_path(uri: str) -> Path:
    """A local path written plainly or as a ``file://`` URI, ``~`` expanded (relative stays relative)."""
    return Path(uri.removeprefix("file://")).expanduser()


def join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name.lstrip("/")


def committed_manifest(data: bytes) -> dict[str, Any] | None:
    """The manifest in ``data`` if it is a complete one, else None; ValueError when it is not JSON."""
    manifest = json.loads(data)
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        return None
    return manifest


# -- @task.gpu_batch: a function shipped to the worker (``airflow-gpu-worker run-function``) --------
# The payload is one JSON document, stored under its own sha256; the worker refuses bytes whose
# digest differs from the one in its command, so what runs is exactly what the DAG sent.
FUNCTION_FORMAT = "airflow-gpu-function"
FUNCTION_VERSION = 1
# Written under the job's result prefix: RESULT when the function returned, ERROR when it raised
# (or could not be run at all); the Airflow side reads whichever the job left.
FUNCTION_RESULT = "result.json"
FUNCTION_ERROR = "error.json"
# Return values (or dict entries, with multiple_outputs) larger than this, as JSON, go to their
# own object and the XCom carries its URI: XComs live in the metadata database.
INLINE_RESULT_BYTES = 48 * 1024


def python_version_tag(version_info: tuple[object, ...] = ()) -> str:
    """``"3.11"``: the part of a Python version a function's source and its JSON arguments depend on."""
    import sys

    major, minor = (version_info or sys.version_info)[:2]
    return f"{major}.{minor}"


# -- code bundles: a project's files, shipped to the worker (``run-script``/``run-function --code``) ----
# Staged once per content as ``<staging prefix>/code/<sha256>.tar.gz``: the name is the digest of
# the archive's bytes, so the worker can refuse a bundle changed after it was staged.
CODE_DIR = "code"
BUNDLE_SUFFIX = ".tar.gz"
# Installed before the job's code runs, into a folder keyed by this file's sha256.
REQUIREMENTS_FILE = "requirements.txt"
# Where the worker keeps installed requirements between jobs on one host (a Batch host volume).
REQUIREMENTS_CACHE_ENV = "AIRFLOW_GPU_REQUIREMENTS_CACHE"
REQUIREMENTS_CACHE_PATH = "/var/cache/airflow-gpu/requirements"


def bundle_name(sha256: str) -> str:
    """``<sha256>.tar.gz``: the staged bundle's object name."""
    return f"{sha256}{BUNDLE_SUFFIX}"


def bundle_digest(name: str) -> str | None:
    """The sha256 a bundle's object name declares, or None when the name is not a bundle's."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    if not base.endswith(BUNDLE_SUFFIX):
        return None
    digest = base[: -len(BUNDLE_SUFFIX)]
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None
