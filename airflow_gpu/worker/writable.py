"""Prove a local output folder writable before any input is read.

An S3 output is checked up front by reading its manifest (a missing bucket or a denied prefix
fails at once); a local folder would only fail when the outputs are published, after the whole
run. So the folder is created and a probe file written and removed first.
"""

from __future__ import annotations

import asyncio
import os
import uuid

from .errors import WorkerError
from .storage import LocalStore, Store


async def prove_writable(store: Store, flag: str = "--output") -> None:
    """For a local store: create its folder, write and remove a probe; one clear WorkerError if that fails."""
    if not isinstance(store, LocalStore):
        return
    root = store.root

    def probe() -> None:
        created = [folder for folder in (root, *root.parents) if not folder.exists()]
        try:
            root.mkdir(parents=True, exist_ok=True)
            path = root / f".airflow-gpu-write-probe-{uuid.uuid4().hex}"
            with open(path, "wb") as handle:
                handle.write(b"probe")
            os.remove(path)
        finally:
            # A run that fails later (its input) leaves nothing behind: the folders come back at publish.
            for folder in created:
                try:
                    folder.rmdir()
                except OSError:
                    break

    try:
        await asyncio.to_thread(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise WorkerError(
            f"{flag} {store.uri}: cannot write there ({reason}); pass a folder you can write to"
        ) from None
