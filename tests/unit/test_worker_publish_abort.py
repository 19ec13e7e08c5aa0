"""A failed upload while a sibling upload is still running: abort cancels and awaits the sibling before it
removes the run's files, so nothing of a failed run lands in the store after its clean-up.

The store is in memory and each upload's pace is set by the test (an event per file), so the order that
once left an item_ids part in S3 after the clean-up is played exactly, every time.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

from airflow_gpu.worker.publish import Publisher
from airflow_gpu.worker.storage import Store


class UploadFailed(RuntimeError):
    pass


class PacedStore(Store):
    """Objects in a dict. A write of a name in ``gates`` waits for its event; one in ``failing`` fails."""

    uri = "memory://outputs"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.deleted: list[str] = []

    async def write(self, name: str, data: bytes | memoryview) -> None:
        self.started[name].set()
        if name in self.gates:
            await self.gates[name].wait()
        if name in self.failing:
            raise UploadFailed(name)
        self.objects[name] = bytes(data)

    async def delete(self, names: list[str]) -> None:
        self.deleted.extend(names)
        for name in names:
            self.objects.pop(name, None)

    async def list(self):  # the publisher only writes and deletes
        raise NotImplementedError

    async def read(self, ref):
        raise NotImplementedError

    async def read_to_file(self, ref, dest: Path) -> None:
        raise NotImplementedError

    async def write_file(self, name: str, path: Path) -> None:
        raise NotImplementedError

    async def read_small(self, name: str) -> bytes | None:
        raise NotImplementedError


async def settle() -> None:
    """Let every task that is ready run its next steps (no thread is involved once a write has begun)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_abort_after_a_failed_upload_cancels_the_sibling_still_uploading_before_it_deletes():
    store = PacedStore()
    publisher = Publisher(store, run_id="run-1", max_in_flight=4)
    slow, failing = "runs/run-1/item_ids/part-00000.parquet", "runs/run-1/user_ids/part-00000.parquet"
    store.gates[slow] = asyncio.Event()  # released only after the clean-up
    store.failing.add(failing)

    await publisher.submit("item_ids/part-00000.parquet", b"items", kind="ids")
    await publisher.submit("user_ids/part-00000.parquet", b"users", kind="ids")
    await asyncio.wait_for(store.started[slow].wait(), timeout=30)  # its checksum is taken in a thread first

    with pytest.raises(UploadFailed):
        await publisher.drain()
    await publisher.abort()
    assert set(store.deleted) == {slow, failing}  # both were announced before their upload began

    store.gates[slow].set()  # the slow upload would finish now, were it still running
    await settle()
    assert store.objects == {}, f"landed after the clean-up: {sorted(store.objects)}"


async def test_abort_with_every_upload_finished_deletes_them_all():
    store = PacedStore()
    publisher = Publisher(store, run_id="run-2")
    await publisher.submit("recommendations/part-00000.parquet", b"r", kind="recommendations")
    await publisher.submit("user_factors/part-00000.parquet", b"u", kind="factors")
    await publisher.drain()
    assert set(store.objects) == {
        "runs/run-2/recommendations/part-00000.parquet",
        "runs/run-2/user_factors/part-00000.parquet",
    }
    await publisher.abort()
    assert store.objects == {}
