"""Outputs go up as parts under a run folder; manifest.json, written last, is the commit point.

Layout under ``--output``::

    manifest.json                       the commit point: lists exactly this run's files
    runs/<run_id>/recommendations/part-00000.parquet ...
    runs/<run_id>/similar_items/part-00000.parquet ...
    runs/<run_id>/user_factors/part-00000.parquet ...
    runs/<run_id>/item_factors/part-00000.parquet ...
    runs/<run_id>/user_ids/part-00000.parquet ...    dense index -> original id (factor row order)
    runs/<run_id>/item_ids/part-00000.parquet ...
    runs/<run_id>/metrics.json
    runs/<run_id>/report.html

Each run writes into its own folder, so a rerun never overwrites the files the current
manifest points at, and a reader that lists a folder never mixes two runs' parts. A
rerun replaces manifest.json in one PUT (or one rename, locally) at its very end; until
then readers keep seeing the previous complete run. A run that fails deletes what it
uploaded and never writes a manifest. Readers treat a prefix without a manifest as absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..contract import MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, committed_manifest
from .profile import PROFILE_FILE, current_document
from .run_cost import run_cost
from .storage import Store

log = logging.getLogger("airflow_gpu.worker")

#: Written into a run's folder right after manifest.json names it: retention deletes only marked runs.
COMMITTED = "_COMMITTED"
#: ``--keep-runs`` default: the committed run plus four before it (a rollback or a diff needs some).
DEFAULT_KEEP_RUNS = 5


def new_run_id() -> str:
    """Sortable by time, unique across concurrent runs."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    data: bytes = sink.getvalue().to_pybytes()
    return data


class Publisher:
    """Uploads a run's files with a bounded number in flight, then commits the manifest."""

    def __init__(self, store: Store, run_id: str | None = None, *, max_in_flight: int = 4) -> None:
        self.store = store
        self.run_id = run_id or new_run_id()
        self.root = f"runs/{self.run_id}/"
        self.files: list[dict[str, Any]] = []
        self._uploaded: list[str] = []
        self._tasks: set[asyncio.Task[dict[str, Any]]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._parts: dict[str, int] = {}
        self.bytes_written = 0

    def next_part(self, dataset: str) -> str:
        number = self._parts.get(dataset, 0)
        self._parts[dataset] = number + 1
        return f"{dataset}/part-{number:05d}.parquet"

    async def put(self, name: str, data: bytes, *, kind: str, rows: int | None = None) -> dict[str, Any]:
        """Upload ``data`` as ``runs/<run_id>/<name>`` and record its size, rows and checksum."""
        path = self.root + name
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        self._uploaded.append(path)  # before the upload, so an abort also removes a partial one
        await self.store.write(path, data)
        entry: dict[str, Any] = {"path": path, "kind": kind, "bytes": len(data), "rows": rows, "sha256": digest}
        self.files.append(entry)
        self.bytes_written += len(data)
        return entry

    async def put_file(self, name: str, path: Path, *, kind: str) -> dict[str, Any]:
        """Upload a local file (streamed, multipart when big) and record its size and checksum."""
        target = self.root + name

        def digest() -> tuple[str, int]:
            sha, size = hashlib.sha256(), 0
            with open(path, "rb") as handle:
                while chunk := handle.read(8 * 2**20):
                    sha.update(chunk)
                    size += len(chunk)
            return sha.hexdigest(), size

        checksum, size = await asyncio.to_thread(digest)
        self._uploaded.append(target)
        await self.store.write_file(target, path)
        entry: dict[str, Any] = {"path": target, "kind": kind, "bytes": size, "rows": None, "sha256": checksum}
        self.files.append(entry)
        self.bytes_written += size
        return entry

    async def submit(self, name: str, data: bytes, *, kind: str, rows: int | None = None) -> None:
        """Start uploading in the background; waits only while ``max_in_flight`` uploads are running."""
        self._raise_failed()
        await self._slots.acquire()
        task = asyncio.create_task(self.put(name, data, kind=kind, rows=rows))
        task.add_done_callback(lambda _: self._slots.release())
        self._tasks.add(task)

    async def drain(self) -> None:
        # A task leaves the set only once it is done: when one upload fails, the others are still running,
        # and abort must cancel and await them before it removes the run's files (else one lands after).
        tasks = list(self._tasks)
        try:
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            self._tasks.difference_update(task for task in tasks if task.done())

    async def commit(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write manifest.json after every other file is up: from here on the run exists."""
        await self.drain()
        profile = current_document()  # the job's GPU/CPU profile up to now, beside the outputs
        if profile is not None:
            await self.put(PROFILE_FILE, json.dumps(profile, separators=(",", ":")).encode(), kind="profile")
            manifest = {**manifest, "profile": self.root + PROFILE_FILE}
        if "cost" not in manifest:  # the run's estimated cost (may ask the instance metadata: off the loop)
            manifest = {**manifest, "cost": await asyncio.to_thread(run_cost, profile)}
        log.info("cost: %s", manifest["cost"]["text"])
        document = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            **manifest,
            "run_id": self.run_id,
            "root": self.root,
            "files": sorted(self.files, key=lambda f: f["path"]),
            "complete": True,
        }
        await self.store.write(MANIFEST, json.dumps(document, indent=2, sort_keys=False).encode())
        log.info(
            "publish: committed %s (%d files, %.1f MB)",
            self.store.uri_of(MANIFEST),
            len(self.files),
            self.bytes_written / 2**20,
        )
        try:
            # After the commit point: a run that crashes before it is never marked, so never pruned.
            await self.store.write(self.root + COMMITTED, b"")
        except Exception as exc:  # the run is committed all the same; it is only kept for ever
            log.warning("publish: could not mark run %s as committed (%s); retention will keep it", self.run_id, exc)
        return document

    async def prune(self, keep: int) -> list[str]:
        """Delete the committed runs older than the ``keep`` newest (0 keeps all); call after commit.

        Only folders carrying the COMMITTED mark count, so a run still being written by a
        concurrent job, or one that failed, is never touched. Run ids sort by time.
        """
        if keep <= 0:
            return []
        try:
            return await self._prune(keep)
        except Exception as exc:  # the new run is committed: failing it now would help no one
            log.warning(
                "publish: could not remove old runs under %s (%s); they are kept", self.store.uri_of("runs/"), exc
            )
            return []

    async def _prune(self, keep: int) -> list[str]:
        names = await self.store.names_under("runs/")
        committed = sorted({n.split("/")[1] for n in names if n.count("/") == 2 and n.endswith("/" + COMMITTED)})
        # This run is the newest whatever its id sorts as (ids made within one second sort by their
        # random suffix), so it takes one of the `keep` places and the rest go to the newest others.
        others = [run for run in committed if run != self.run_id]
        kept = set(others[max(0, len(others) - (keep - 1)) :]) | {self.run_id}
        old = [run for run in committed if run not in kept]
        for run in old:
            folder = f"runs/{run}/"
            files = [n for n in names if n.startswith(folder)]
            # The mark goes last: a prune cut short leaves a marked run, which the next prune finishes.
            await self.store.delete([n for n in files if not n.endswith("/" + COMMITTED)])
            await self.store.delete([folder + COMMITTED])
        if old:
            log.info(
                "publish: removed %d old run(s) under %s (--keep-runs %d)", len(old), self.store.uri_of("runs/"), keep
            )
        return old

    async def abort(self) -> None:
        """Stop uploads and remove what this run wrote (best effort); the old manifest stays as it was."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._uploaded:
            with contextlib.suppress(Exception):
                await self.store.delete(self._uploaded)
                log.info("publish: removed %d files of the failed run %s", len(self._uploaded), self.run_id)

    def _raise_failed(self) -> None:
        for task in list(self._tasks):
            if task.done():
                self._tasks.discard(task)
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error


async def read_manifest(store: Store) -> dict[str, Any] | None:
    """The committed manifest under a store's root, or None: the reader's side of the contract."""
    data = await store.read_small(MANIFEST)
    if data is None:
        return None
    return committed_manifest(data)
