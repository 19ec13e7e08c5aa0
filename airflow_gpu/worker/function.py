"""``run-function``: run a function shipped by ``@task.gpu_batch``, after checking it is the one sent.

The payload is a JSON document (see :mod:`airflow_gpu.contract`): the function's source,
its name, its JSON arguments, and the Python version of the DAG that sent it. The order is
strict, so nothing runs that should not:

1. fetch the payload and compare its sha256 with ``--sha256`` (a mismatch: refused, nothing run);
2. compare the DAG's Python version with this interpreter's (source and arguments are only
   portable within one minor version);
3. run the function; an exception is recorded with its traceback in ``error.json``;
4. write the return value to ``result.json``: JSON values inline when small, anything larger
   or not JSON in an object of its own (JSON or pickle) whose URI takes its place.

``error.json`` is written for every refusal too, so the task's error says why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import linecache
import logging
import os
import pickle
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from ..contract import (
    FUNCTION_ERROR,
    FUNCTION_FORMAT,
    FUNCTION_RESULT,
    FUNCTION_VERSION,
    INLINE_RESULT_BYTES,
    python_version_tag,
)
from .bundle import fetch_code
from .errors import WorkerError
from .requirements import install_for_code, python_path
from .storage import Store, open_store
from .writable import prove_writable

log = logging.getLogger("airflow_gpu.worker")

#: Exit code of a function that raised (a refusal is WorkerError's 2).
FUNCTION_RAISED = 1


def _job_id() -> str | None:
    """Set by AWS Batch (and the local backend): stamped on what we write, so a reader can tell
    this job's result from one an earlier job of the same task instance left in the same place."""
    return os.environ.get("AWS_BATCH_JOB_ID") or os.environ.get("AIRFLOW_GPU_JOB_ID")


class _Refused(WorkerError):
    """The payload is not run: wrong digest, wrong Python, malformed document."""


def _split(uri: str) -> tuple[str, str]:
    """``s3://b/p/x.json`` -> (``s3://b/p/``, ``x.json``); the same for a local path."""
    head, _, name = uri.rstrip("/").rpartition("/")
    if not name or not head:
        raise _Refused(f"--payload {uri!r} names no object; pass the URI @task.gpu_batch put in the job's command")
    return head + "/", name


async def _fetch(uri: str, endpoint_url: str | None) -> bytes:
    folder, name = _split(uri)
    async with open_store(folder, endpoint_url=endpoint_url) as store:
        data = await store.read_small(name)
    if data is None:
        raise _Refused(f"payload {uri} not found; check the staging prefix (the job may have outlived it)")
    return data


def verify(data: bytes, expected_sha256: str) -> dict[str, Any]:
    """The payload document, only if its bytes hash to ``expected_sha256`` and it is ours."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256.lower():
        raise _Refused(
            f"payload digest mismatch: expected sha256 {expected_sha256}, got {actual}; the staged object was "
            "changed after the task shipped it, so nothing was run. Clear the task to ship it again."
        )
    try:
        document = json.loads(data)
    except ValueError:
        raise _Refused("payload is not JSON; it was not written by @task.gpu_batch") from None
    if not isinstance(document, dict) or document.get("format") != FUNCTION_FORMAT:
        raise _Refused("payload is not an airflow-gpu function document; it was not written by @task.gpu_batch")
    if document.get("version") != FUNCTION_VERSION:
        raise _Refused(
            f"payload version {document.get('version')!r} is not {FUNCTION_VERSION}; use the same airflow-gpu "
            "version in the DAG and in the image"
        )
    sent = document.get("python")
    here = python_version_tag()
    if sent != here:
        raise _Refused(
            f"Python version mismatch: the DAG runs Python {sent}, this image runs Python {here}; a function's "
            f"source and arguments are only run by the same minor version. Use an image with Python {sent}, "
            f"or run the DAG on Python {here}."
        )
    return document


def _load(document: dict[str, Any]) -> Any:
    name, source = document.get("name"), document.get("source")
    if not isinstance(name, str) or not isinstance(source, str):
        raise _Refused("payload has no function name or source")
    filename = f"<@task.gpu_batch {name}>"
    # So the remote traceback quotes the function's own lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__airflow_gpu_function__"}
    exec(compile(source, filename, "exec"), namespace)
    function = namespace.get(name)
    if not callable(function):
        raise _Refused(f"the payload's source defines no function named {name!r}")
    return function


async def _encode(store: Store, name: str, value: Any) -> dict[str, Any]:
    """One value as the result document holds it: inline JSON, or the URI of its own object."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise TypeError(
                f"the return value {name!r} ({type(value).__name__}) is neither JSON nor picklable ({exc}); return "
                "JSON values, or write large objects to S3 yourself and return their URI"
            ) from None
        await store.write(f"{name}.pickle", data)
        return {"uri": store.uri_of(f"{name}.pickle"), "format": "pickle", "type": type(value).__name__}
    if len(text) <= INLINE_RESULT_BYTES:
        return {"value": value}
    await store.write(f"{name}.json", text.encode())
    return {"uri": store.uri_of(f"{name}.json"), "format": "json", "bytes": len(text)}


async def _write_result(store: Store, value: Any, multiple_outputs: bool, digest: str) -> dict[str, Any]:
    document: dict[str, Any] = {
        "format": FUNCTION_FORMAT,
        "version": FUNCTION_VERSION,
        "sha256": digest,
        "job_id": _job_id(),
    }
    if multiple_outputs:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise TypeError(
                f"multiple_outputs=True needs a dict with string keys, but the function returned "
                f"{type(value).__name__}; return a dict, or drop multiple_outputs"
            )
        document["outputs"] = {k: await _encode(store, f"output-{i}", v) for i, (k, v) in enumerate(value.items())}
    else:
        document["output"] = await _encode(store, "output", value)
    await store.write(FUNCTION_RESULT, json.dumps(document).encode())
    return document


async def _write_error(store: Store, stage: str, exc: BaseException, tb: str | None) -> None:
    document = {
        "format": FUNCTION_FORMAT,
        "version": FUNCTION_VERSION,
        "job_id": _job_id(),
        "stage": stage,
        "error": f"{type(exc).__name__}: {exc}" if stage == "run" else str(exc),
        "traceback": tb,
    }
    try:
        await store.write(FUNCTION_ERROR, json.dumps(document).encode())
    except Exception as write_exc:  # the job still fails; the log keeps the reason
        log.error("run-function: could not record the error under %s: %s", store.uri, write_exc)


async def _import_code(
    code: str, folder: Path, endpoint_url: str | None, sha256: str | None, requirements: str | None
) -> None:
    """Unpack the function's code bundle and put it (then its requirements) first on the import path."""
    root = await fetch_code(code, folder / "code", endpoint_url=endpoint_url, sha256=sha256)
    target = await install_for_code(root, requirements)
    for entry in (target, root):  # inserted in reverse: the code's root ends up first
        if entry is not None:
            sys.path.insert(0, str(entry))
    # Subprocesses the function starts import from the same places.
    os.environ["PYTHONPATH"] = python_path(root, target)


async def run_function_async(
    payload_uri: str,
    sha256: str,
    result_uri: str,
    *,
    endpoint_url: str | None = None,
    code: str | None = None,
    code_sha256: str | None = None,
    requirements: str | None = None,
) -> int:
    with tempfile.TemporaryDirectory(prefix="airflow-gpu-function-") as folder:
        return await _run_function(
            payload_uri, sha256, result_uri, endpoint_url, code, code_sha256, requirements, Path(folder)
        )


async def _run_function(
    payload_uri: str,
    sha256: str,
    result_uri: str,
    endpoint_url: str | None,
    code: str | None,
    code_sha256: str | None,
    requirements: str | None,
    folder: Path,
) -> int:
    async with open_store(result_uri, endpoint_url=endpoint_url) as results:
        await prove_writable(results, "--result")  # before the payload is read
        try:
            document = verify(await _fetch(payload_uri, endpoint_url), sha256)
            if code:
                await _import_code(code, folder, endpoint_url, code_sha256, requirements)
            function = _load(document)
        except WorkerError as exc:
            # A refused payload or bundle, or requirements that would not install: the task's error says which.
            await _write_error(results, "refused", exc, None)
            raise
        args, kwargs = document.get("args") or [], document.get("kwargs") or {}
        log.info(
            "run-function: running %s (payload sha256 %s, Python %s)",
            document["name"],
            sha256[:12],
            python_version_tag(),
        )
        try:
            # A thread, so the function may run its own event loop (asyncio.run) if it likes.
            value = await asyncio.to_thread(function, *args, **kwargs)
        except Exception as exc:
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)  # the live log shows it too
            await _write_error(results, "run", exc, tb)
            log.error("run-function: %s raised %s", document["name"], type(exc).__name__)
            return FUNCTION_RAISED
        try:
            await _write_result(results, value, bool(document.get("multiple_outputs")), sha256)
        except TypeError as exc:
            await _write_error(results, "result", exc, None)
            raise WorkerError(str(exc)) from None
    log.info("run-function: %s returned; result written to %s", document["name"], results.uri_of(FUNCTION_RESULT))
    return 0
