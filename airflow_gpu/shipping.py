"""Code sent to a GPU job: staged under its sha256, and what the job leaves behind, read back.

``@task.gpu_batch`` ships a function as one JSON document (source, name, JSON arguments,
the DAG's Python version); ``airflow-gpu submit --script`` ships a script file. Both go
under a staging prefix, content-addressed, so the same code is stored once and a changed
object can be told from the one sent: the worker's ``run-function`` refuses a payload whose
digest is not the one in its command.

Arguments travel as JSON, never pickle: what the DAG passes must be readable by a different
interpreter in an image that may not share the DAG's packages, and pickle would run code of
the stager's choosing inside the job. Return values come back as JSON too; anything else the
worker pickles into S3 and the task returns its URI.

This module imports nothing from Airflow or the worker; the store is passed in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from airflow_gpu.contract import (
    FUNCTION_ERROR,
    FUNCTION_FORMAT,
    FUNCTION_RESULT,
    FUNCTION_VERSION,
    join,
    python_version_tag,
)
from airflow_gpu.jobs.spec import JobSpecError

PASSABLE = "str, int, float (finite), bool, None, and lists and dicts (string keys) of those"


class Store(Protocol):
    def read(self, uri: str) -> bytes | None: ...

    def write(self, uri: str, data: bytes, content_type: str = ...) -> None: ...


@dataclass(frozen=True)
class Staged:
    uri: str
    sha256: str


def _json_argument(label: str, value: Any, function: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise JobSpecError(
            f"Argument {label} of {function}() cannot be sent to the GPU job: {type(value).__name__} is not JSON "
            f"({exc}). @task.gpu_batch passes {PASSABLE}. Write larger or other objects to S3 and pass their URI."
        ) from None


def check_arguments(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """JobSpecError naming the first argument of ``name()`` that cannot travel as JSON."""
    for index, value in enumerate(args):
        _json_argument(f"#{index + 1}", value, name)
    for key, value in kwargs.items():
        _json_argument(repr(key), value, name)


def function_payload(
    source: str, name: str, args: Sequence[Any], kwargs: Mapping[str, Any], *, multiple_outputs: bool
) -> bytes:
    """The document ``run-function`` runs; JobSpecError naming the first argument that is not JSON."""
    check_arguments(name, args, kwargs)
    document = {
        "format": FUNCTION_FORMAT,
        "version": FUNCTION_VERSION,
        "python": python_version_tag(),
        "name": name,
        "source": source,
        "args": list(args),
        "kwargs": dict(kwargs),
        "multiple_outputs": bool(multiple_outputs),
    }
    # Sorted keys: the same call gives the same bytes, so the same digest (a retry re-stages nothing new).
    return json.dumps(document, sort_keys=True, allow_nan=False).encode()


def stage(store: Store, prefix: str, kind: str, data: bytes, file_name: str) -> Staged:
    """Put ``data`` at ``<prefix>/<kind>/<sha256>/<file_name>`` (idempotent: same bytes, same key)."""
    digest = hashlib.sha256(data).hexdigest()
    uri = join(prefix, f"{kind}/{digest}/{file_name}")
    store.write(uri, data, "application/octet-stream")
    return Staged(uri, digest)


def result_prefix(prefix: str, idempotency_key: str, digest: str) -> str:
    """Where one task instance's run of one payload leaves result.json or error.json."""
    return join(prefix, f"results/{idempotency_key}/{digest}/")


def _read_json(store: Store, uri: str) -> dict[str, Any] | None:
    data = store.read(uri)
    if data is None:
        return None
    try:
        document = json.loads(data)
    except ValueError:
        return None
    return document if isinstance(document, dict) and document.get("format") == FUNCTION_FORMAT else None


def _belongs(document: dict[str, Any], job_id: str | None) -> bool:
    # A document from an earlier job of the same task instance must not speak for this one.
    return not job_id or not document.get("job_id") or document["job_id"] == job_id


def read_error(store: Store, results: str, job_id: str | None) -> dict[str, Any] | None:
    """What ``run-function`` recorded when it refused the payload or the function raised."""
    document = _read_json(store, join(results, FUNCTION_ERROR))
    return document if document is not None and _belongs(document, job_id) else None


class ResultMissing(ValueError):
    """The job succeeded but left no readable result."""


def _decode(entry: Mapping[str, Any]) -> Any:
    return entry["value"] if "value" in entry else entry["uri"]


def read_result(store: Store, results: str, job_id: str | None) -> dict[str, Any] | Any:
    """The return value: inline JSON as it was returned; a large or non-JSON value as its URI.
    With multiple_outputs, a dict with the same keys (each value decoded the same way)."""
    uri = join(results, FUNCTION_RESULT)
    document = _read_json(store, uri)
    if document is None or not _belongs(document, job_id):
        raise ResultMissing(f"no result at {uri}")
    if "outputs" in document:
        return {key: _decode(entry) for key, entry in document["outputs"].items()}
    return _decode(document["output"])


def ship_code(store: Any, prefix: str, code: str, base: str | None, max_size: int | str | None, log: Any) -> Any:
    """Pack ``code`` (relative: to ``base``, the DAG's folder, else the working directory) and stage it once."""
    from pathlib import Path

    from airflow_gpu.bundles import DEFAULT_MAX_BYTES, left_out_note, pack, parse_size, stage_bundle

    folder = Path(code).expanduser()
    if not folder.is_absolute() and base and (Path(base) / folder).is_dir():
        folder = Path(base) / folder
    try:
        limit = parse_size(max_size) if isinstance(max_size, str) else (max_size or DEFAULT_MAX_BYTES)
    except ValueError as exc:
        raise JobSpecError(f"max_code_size: {exc}") from None
    bundle = pack(folder, max_bytes=limit)
    note = left_out_note(bundle, folder)
    if note:
        log.warning("Code bundle: %s", note)
    staged = stage_bundle(store, prefix, bundle)
    log.info(
        "Code bundle of %s (%d files): %s %s",
        folder,
        len(bundle.files),
        "uploaded to" if staged.uploaded else "already at",
        staged.uri,
    )
    return staged
