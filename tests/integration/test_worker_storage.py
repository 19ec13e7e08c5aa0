"""Store over a moto S3 server: multipart uploads with bounded concurrency, aborts, reads of every kind."""

from __future__ import annotations

import asyncio
import os

import pytest

from airflow_gpu.worker import storage
from airflow_gpu.worker.storage import open_store

MiB = 1024 * 1024


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr(storage, "PART_SIZE", 5 * MiB)  # S3's smallest allowed part


def test_big_writes_are_multipart_with_bounded_concurrency(moto_aws, tmp_path, small_parts, monkeypatch):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="out")
    data = os.urandom(23 * MiB)
    (tmp_path / "big.bin").write_bytes(data)
    in_flight, peak = [0], [0]
    original = storage.S3Store._put

    async def run():
        async with open_store("s3://out/prefix/", endpoint_url=moto_aws.endpoint_url, concurrency=2) as store:
            upload_part = store._client.upload_part

            async def counted(**kwargs):
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
                try:
                    await asyncio.sleep(0.05)
                    return await upload_part(**kwargs)
                finally:
                    in_flight[0] -= 1

            store._client.upload_part = counted
            await store.write("a/bytes.bin", data)
            await store.write_file("a/file.bin", tmp_path / "big.bin")
            refs = {r.name: r for r in await store.list()}
            return await store.read(refs["a/bytes.bin"]), await store.read(refs["a/file.bin"])

    from_bytes, from_file = asyncio.run(run())
    assert bytes(from_bytes) == data and bytes(from_file) == data
    for key in ("prefix/a/bytes.bin", "prefix/a/file.bin"):
        assert s3.head_object(Bucket="out", Key=key)["ETag"].strip('"').endswith("-5")  # 5 parts of 5 MiB
    assert peak[0] == 2  # never more parts in flight than --concurrency
    assert original is storage.S3Store._put


def test_a_failed_multipart_upload_is_aborted(moto_aws, small_parts, monkeypatch):
    monkeypatch.setattr(storage, "BODY_BACKOFF_CAP", 0.01)  # the part is sent again a few times first
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="out")

    async def run():
        async with open_store("s3://out/p/", endpoint_url=moto_aws.endpoint_url) as store:
            upload_part = store._client.upload_part

            async def failing(**kwargs):
                if kwargs["PartNumber"] == 2:
                    raise ConnectionResetError("reset")
                return await upload_part(**kwargs)

            store._client.upload_part = failing
            await store.write("x.bin", os.urandom(12 * MiB))

    with pytest.raises(ConnectionResetError):
        asyncio.run(run())
    assert s3.list_multipart_uploads(Bucket="out").get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket="out").get("KeyCount") == 0


def test_read_small_and_delete(moto_aws, tmp_path):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="bkt")

    async def run(uri, endpoint):
        async with open_store(uri, endpoint_url=endpoint) as store:
            assert await store.read_small("m.json") is None
            await store.write("m.json", b"{}")
            assert await store.read_small("m.json") == b"{}"
            await store.delete(["m.json", "never-there"])
            assert await store.read_small("m.json") is None

    asyncio.run(run("s3://bkt/x/", moto_aws.endpoint_url))
    asyncio.run(run(str(tmp_path / "local"), None))
