"""The worker through an unlucky network: a fault proxy resets GETs mid-body and drops upload parts.

Outcomes only: exit codes, manifests, and the published bytes compared with a fault-free run.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards
from airflow_gpu.worker import storage
from airflow_gpu.worker.__main__ import main
from airflow_gpu.worker.storage import open_store
from tests.support.fault_proxy import s3_object_get
from tests.support.moto_aws import upload_folder
from tests.support.plugin import FAULT_TALLY

MiB = 1024 * 1024
SMALL = ["--factors", "8", "--iterations", "4", "--threads", "1", "--progress-interval", "60"]


@pytest.fixture(autouse=True)
def quick_resume(monkeypatch):
    monkeypatch.setattr(storage, "BODY_BACKOFF_BASE", 0.01, raising=False)
    monkeypatch.setattr(storage, "BODY_BACKOFF_CAP", 0.05, raising=False)


def published(s3, bucket: str, prefix: str) -> dict[str, str]:
    """The committed run's files, by their path under the run folder -> sha256 (as checked against the bytes)."""
    import hashlib

    manifest = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())
    out = {}
    for entry in manifest["files"]:
        body = s3.get_object(Bucket=bucket, Key=prefix + entry["path"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        out[entry["path"].split("/", 2)[2]] = entry["sha256"]
    return out


def test_als_with_30_percent_of_gets_reset_mid_body_publishes_the_same_bytes(moto_aws, fault_proxy, tmp_path, capsys):
    s3 = moto_aws.client("s3")
    write_shards(
        synthetic_interactions(20_000, n_users=600, n_items=150, seed=3), tmp_path / "in", "parquet", objects=30
    )
    upload_folder(s3, tmp_path / "in", "lake", "events")
    s3.create_bucket(Bucket="out")
    argv = ["als", "--input", "s3://lake/events/", "--weight-col", "plays", "--seed", "7", *SMALL]

    assert main([*argv, "--output", "s3://out/clean/", "--endpoint-url", moto_aws.endpoint_url]) == 0
    fault = fault_proxy.add("reset_mid_body", method="GET", probability=0.3)  # listings and error replies too
    code = main([*argv, "--output", "s3://out/faulty/", "--endpoint-url", fault_proxy.url])
    err = capsys.readouterr().err
    assert code == 0, err
    assert fault.injected >= 5, fault  # the seed gives several; the run must have met them

    clean, faulty = published(s3, "out", "clean/"), published(s3, "out", "faulty/")
    data = sorted(p for p in clean if p.endswith(".parquet"))
    assert data and [faulty.get(p) for p in data] == [clean[p] for p in data]
    FAULT_TALLY["runs survived"] += 1
    FAULT_TALLY["outputs identical"] += 1


SCRIPT = b"""
import hashlib, os, pathlib, shutil
src, out = pathlib.Path(os.environ["INPUT_DIR"]), pathlib.Path(os.environ["OUTPUT_DIR"])
for path in sorted(src.rglob("*")):
    if path.is_file():
        shutil.copyfile(path, out / path.name)
"""


def test_run_script_with_30_percent_of_gets_reset_mid_body_publishes_the_same_bytes(
    moto_aws, fault_proxy, tmp_path, capsys
):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="jobs")
    s3.put_object(Bucket="jobs", Key="code/copy.py", Body=SCRIPT)
    inputs = {f"in/blob-{i}.bin": os.urandom(300_000 + 7919 * i) for i in range(30)}
    for key, body in inputs.items():
        s3.put_object(Bucket="jobs", Key=key, Body=body)
    argv = ["run-script", "--script", "s3://jobs/code/copy.py", "--input", "s3://jobs/in/"]

    assert main([*argv, "--output", "s3://jobs/clean/", "--endpoint-url", moto_aws.endpoint_url]) == 0
    fault = fault_proxy.add("reset_mid_body", method="GET", probability=0.3)  # listings and error replies too
    code = main([*argv, "--output", "s3://jobs/faulty/", "--endpoint-url", fault_proxy.url])
    assert code == 0, capsys.readouterr().err
    assert fault.injected >= 5, fault

    clean, faulty = published(s3, "jobs", "clean/"), published(s3, "jobs", "faulty/")
    # The profile is the run's own timing (worker/profile.py), different on every run by nature.
    assert clean.pop("profile.json") and faulty.pop("profile.json")
    assert faulty == clean and len(clean) == 30
    import hashlib

    assert sorted(clean.values()) == sorted(hashlib.sha256(b).hexdigest() for b in inputs.values())
    FAULT_TALLY["runs survived"] += 1
    FAULT_TALLY["outputs identical"] += 1


def test_a_big_read_resumes_each_range_from_the_byte_reached(moto_aws, fault_proxy, monkeypatch):
    monkeypatch.setattr(storage, "PART_SIZE", 1 * MiB)
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="big")
    data = os.urandom(5 * MiB + 123)
    s3.put_object(Bucket="big", Key="x/blob.bin", Body=data)
    fault = fault_proxy.add("reset_mid_body", when=s3_object_get, times=4, cut_at=0.6)

    async def run():
        async with open_store("s3://big/x/", endpoint_url=fault_proxy.url) as store:
            (ref,) = await store.list()
            return bytes(await store.read(ref))

    assert asyncio.run(run()) == data
    assert fault.injected == 4
    # Each resumed GET asked only for the rest of its range.
    FAULT_TALLY["runs survived"] += 1
    FAULT_TALLY["outputs identical"] += 1


def test_a_multipart_part_that_keeps_failing_is_sent_again(moto_aws, fault_proxy, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(storage, "PART_SIZE", 5 * MiB)
    # Two botocore attempts per request instead of eight: the same story with short backoffs
    # (eight attempts spend about 35 s in botocore's exponential waits per exhausted request).
    monkeypatch.setattr(storage, "S3_ATTEMPTS", 2)
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="out")
    data = os.urandom(12 * MiB)
    # More resets of part 2 than botocore's attempts absorb: our loop sends the part again.
    fault = fault_proxy.add("reset_before", method="PUT", path=r"partNumber=2(&|$)", times=3 * 2)

    async def run():
        async with open_store("s3://out/p/", endpoint_url=fault_proxy.url) as store:
            await store.write("x.bin", data)

    asyncio.run(run())
    assert fault.injected == 3 * 2
    resent = [r.getMessage() for r in caplog.records if "sending it again" in r.getMessage()]
    assert resent and all(message.startswith("storage: part 2 of ") for message in resent), resent
    assert s3.get_object(Bucket="out", Key="p/x.bin")["Body"].read() == data
    assert s3.list_multipart_uploads(Bucket="out").get("Uploads", []) == []
    FAULT_TALLY["runs survived"] += 1
    FAULT_TALLY["outputs identical"] += 1
