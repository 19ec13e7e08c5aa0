"""``run-script``: the user's own Python, kept outside the image, with input/ and output/ beside it.

The script and its inputs are fetched into a fresh working folder; the script runs there
as ``python SCRIPT [ARGS...]`` (an argv list, never a shell string) with the folders
``input/`` and ``output/`` next to it, also named by $INPUT_DIR and $OUTPUT_DIR. When it
exits 0, output/ goes up under ``runs/<run_id>/output/`` and manifest.json is written last.
Its exit code becomes the job's; a failed script publishes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .errors import WorkerError
from ..contract import MANIFEST
from .publish import Publisher
from .storage import ObjectRef, Store, open_store

log = logging.getLogger("airflow_gpu.worker")


async def _fetch_script(uri: str, dest_dir: Path, endpoint_url: str | None) -> Path:
    if uri.startswith("s3://"):
        async with open_store(uri, endpoint_url=endpoint_url) as store:
            refs = await store.list()
            single = [r for r in refs if r.key == store.prefix] if hasattr(store, "prefix") else []
            if len(single) != 1:
                raise WorkerError(f"script {uri} not found; check --script (it must name one .py object)")
            path = dest_dir / single[0].name
            await store.read_to_file(single[0], path)
            return path
    source = Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()
    if not source.is_file():
        raise WorkerError(f"script {uri} not found; check --script (a local .py file or an s3:// object)")
    path = dest_dir / source.name
    await asyncio.to_thread(shutil.copyfile, source, path)
    return path


def _verify_script(path: Path, expected: str) -> None:
    """``airflow-gpu submit --script`` staged the script under its sha256: run exactly those bytes."""
    import hashlib

    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected.lower():
        raise WorkerError(
            f"script digest mismatch: expected sha256 {expected}, got {actual}; the staged script was changed "
            "after it was submitted, so nothing was run. Submit it again."
        )


async def _fetch_inputs(store: Store, folder: Path, concurrency: int) -> tuple[int, int]:
    refs = await store.list()
    if not refs:
        raise WorkerError(f"no objects under {store.uri}; check --input")
    slots = asyncio.Semaphore(concurrency)

    async def one(ref: ObjectRef) -> None:
        async with slots:
            await store.read_to_file(ref, folder / ref.name)

    await asyncio.gather(*(one(r) for r in refs))
    return len(refs), sum(r.size for r in refs)


async def run_script_async(
    script: str,
    input_uri: str | None,
    output_uri: str,
    args: list[str] | None = None,
    *,
    endpoint_url: str | None = None,
    concurrency: int = 16,
    workdir: str | None = None,
    run_id: str | None = None,
    sha256: str | None = None,
) -> int:
    started = time.monotonic()
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="airflow-gpu-script-"))
    folder.mkdir(parents=True, exist_ok=True)
    inputs, outputs = folder / "input", folder / "output"
    inputs.mkdir(exist_ok=True)
    outputs.mkdir(exist_ok=True)
    async with open_store(output_uri, endpoint_url=endpoint_url, concurrency=concurrency) as out:
        await out.read_small(MANIFEST)  # fail fast on a missing bucket or a denied prefix
        path = await _fetch_script(script, folder, endpoint_url)
        if sha256:
            _verify_script(path, sha256)
        count = size = 0
        if input_uri:
            async with open_store(input_uri, endpoint_url=endpoint_url, concurrency=concurrency) as source:
                count, size = await _fetch_inputs(source, inputs, concurrency)
        log.info("run-script: %d input objects (%.1f MB) in %s; running %s", count, size / 2**20, inputs, path.name)

        env = dict(os.environ, INPUT_DIR=str(inputs), OUTPUT_DIR=str(outputs))
        argv = [sys.executable, str(path), *(args or [])]
        process = await asyncio.create_subprocess_exec(*argv, cwd=str(folder), env=env)
        loop = asyncio.get_running_loop()
        # Batch stops a job with SIGTERM: pass it on, so the script can stop cleanly too.
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, process.send_signal, sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread
                pass
        try:
            code = await process.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError):  # pragma: no cover
                    pass
        if code != 0:
            log.error("run-script: %s exited with %d; nothing is published", path.name, code)
            return code

        publisher = Publisher(out, run_id)
        try:
            files = sorted(p for p in outputs.rglob("*") if p.is_file())
            for file in files:
                await publisher.put_file("output/" + file.relative_to(outputs).as_posix(), file, kind="output")
            await publisher.commit(
                {
                    "command": "run-script",
                    "script": script,
                    "input": input_uri,
                    "params": {"args": list(args or []), "input_objects": count, "input_bytes": size},
                    "exit_code": code,
                    "summary": {"files": len(files), "bytes": publisher.bytes_written, "seconds": round(time.monotonic() - started, 3)},
                }
            )
        except BaseException:
            await publisher.abort()
            raise
    if not workdir:
        shutil.rmtree(folder, ignore_errors=True)
    return 0
