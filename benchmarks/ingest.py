"""Interactions from S3 into a CSR matrix, three ways, side by side on the same moto server and data.

  (a) the seed's way: boto3's transfer manager downloads every object to disk at its default
      concurrency (as `aws s3 sync` does), then pandas.read_parquet, pd.factorize, and scipy COO -> CSR;
  (b) ours: airflow_gpu.worker.ingest (async ranged GETs, Arrow decoding in threads, dictionary
      encoding, CSR build);
  (c) the bound: a raw aiobotocore GET of every byte at the same concurrency, with no decoding.

The moto server runs in its own process, so it never shares a GIL with the side being measured,
and each side runs in its own fresh subprocess, so their peak RSS values are separate. Peak RSS
per interaction is the peak minus the process's RSS after its imports, over the input rows.

    .venv/bin/python benchmarks/ingest.py                             # 32 objects, 10M interactions
    .venv/bin/python benchmarks/ingest.py --objects 8 --rows 1000000  # under a minute

The last line is machine-readable:
    ingest: seed_over_ours=<a/b> ours_over_bound=<b/c> bytes_per_interaction=<x>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUCKET = "bench"
PREFIX = "interactions/"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# ------------------------------------------------------------------------------------------
# The three sides; each runs alone in a fresh process and prints one JSON line.
# ------------------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    """This process's high-water RSS (VmHWM). Not ru_maxrss: Linux carries that over exec from the forked parent."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def side_seed(endpoint: str, concurrency: int) -> dict:
    import boto3
    import numpy as np
    import pandas as pd
    import scipy.sparse
    from boto3.s3.transfer import TransferConfig
    from s3transfer.manager import TransferManager

    baseline = _rss()
    started = time.perf_counter()
    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX)
        for o in page.get("Contents", ())
    ]
    with tempfile.TemporaryDirectory() as folder:
        config = TransferConfig()  # the defaults: max_concurrency=10, like `aws s3 sync`
        with TransferManager(s3, config) as manager:
            futures = [manager.download(BUCKET, key, os.path.join(folder, key.rsplit("/", 1)[-1])) for key in keys]
            for future in futures:
                future.result()
        downloaded = time.perf_counter()
        frame = pd.read_parquet(folder)
    users, _ = pd.factorize(frame["user_id"])
    items, _ = pd.factorize(frame["item_id"])
    weights = frame["plays"].to_numpy(dtype=np.float32)
    rows = len(frame)
    del frame
    matrix = scipy.sparse.coo_matrix((weights, (users, items))).tocsr()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "download_seconds": downloaded - started,
        "rows": rows,
        "nnz": int(matrix.nnz),
        "shape": list(matrix.shape),
        "peak_rss": _peak(),
        "baseline_rss": baseline,
    }


def side_ours(endpoint: str, concurrency: int) -> dict:
    import logging

    # Libraries are imported before the clock starts and the baseline is taken, as the other sides' are.
    import aiobotocore.config  # noqa: F401
    import aiobotocore.session  # noqa: F401
    import botocore.exceptions  # noqa: F401

    # pyarrow imports pandas, when installed, on its first Python-to-Arrow conversion (about 1 s and
    # 60 MB, once per process). The seed side imports pandas before its clock too; the worker image
    # has no pandas at all.
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from airflow_gpu.worker.ingest import Columns, ingest
    from airflow_gpu.worker.matrix import MatrixBuilder

    logging.getLogger("airflow_gpu.worker").setLevel(logging.WARNING)
    baseline = _rss()
    started = time.perf_counter()
    # The pipeline's two stages as it chains them: ingest feeds the builder while decoding, then the CSR.
    columns = Columns(weight="plays")
    builder = MatrixBuilder(columns.user, columns.item)
    stats = asyncio.run(
        ingest(f"s3://{BUCKET}/{PREFIX}", columns, builder, endpoint_url=endpoint, concurrency=concurrency)
    )
    ingested = time.perf_counter()
    interactions = builder.build()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "download_seconds": stats.seconds,
        "build_seconds": seconds - (ingested - started),
        "rows": stats.rows_read,
        "nnz": int(interactions.matrix.nnz),
        "shape": list(interactions.matrix.shape),
        "peak_rss": _peak(),
        "baseline_rss": baseline,
    }


def side_bound(endpoint: str, concurrency: int) -> dict:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    baseline = _rss()

    async def fetch_all() -> int:
        async with get_session().create_client(
            "s3", endpoint_url=endpoint, config=AioConfig(max_pool_connections=concurrency)
        ) as client:
            keys = []
            async for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
                keys += [o["Key"] for o in page.get("Contents", ())]
            slots = asyncio.Semaphore(concurrency)

            async def get(key: str) -> int:
                async with slots:
                    response = await client.get_object(Bucket=BUCKET, Key=key)
                    size = 0
                    async with response["Body"] as body:
                        async for chunk in body.iter_chunks(1 << 20):
                            size += len(chunk)
                    return size

            return sum(await asyncio.gather(*(get(k) for k in keys)))

    started = time.perf_counter()
    total = asyncio.run(fetch_all())
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": total, "peak_rss": _peak(), "baseline_rss": baseline}


SIDES = {"a": side_seed, "b": side_ours, "c": side_bound}


# ------------------------------------------------------------------------------------------
# The driver: moto in its own process, the data, then each side in its own process.
# ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **CREDENTIALS},
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).read()
            return server, endpoint
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the moto server did not start") from None
            time.sleep(0.2)


def upload_dataset(endpoint: str, objects: int, rows: int) -> tuple[int, float]:
    import io

    import boto3
    import numpy as np
    import pyarrow.parquet as pq

    from airflow_gpu.demo.synthetic import synthetic_interactions

    started = time.perf_counter()
    table = synthetic_interactions(rows, seed=7)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    bounds = np.linspace(0, rows, objects + 1).astype(int)

    def put(n: int) -> int:
        sink = io.BytesIO()
        pq.write_table(table.slice(bounds[n], bounds[n + 1] - bounds[n]), sink)
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}part-{n:05d}.snappy.parquet", Body=sink.getvalue())
        return sink.tell()

    with ThreadPoolExecutor(8) as pool:
        total = sum(pool.map(put, range(objects)))
    return total, time.perf_counter() - started


def run_side(side: str, endpoint: str, concurrency: int) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--side", side, "--endpoint", endpoint, "--concurrency", str(concurrency)],
        capture_output=True,
        text=True,
        env={**os.environ, **CREDENTIALS},
        timeout=3600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"side {side} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=32)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--concurrency", type=int, default=16, help="our S3 requests in flight (b and c)")
    parser.add_argument("--repeat", type=int, default=1, help="run each side this many times; the fastest counts")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        print(json.dumps(SIDES[args.side](args.endpoint, args.concurrency)))
        return

    os.environ.update(CREDENTIALS)  # fake credentials for the local moto server only
    server, endpoint = start_moto()
    try:
        size, seconds = upload_dataset(endpoint, args.objects, args.rows)
        print(
            f"data: {args.objects} Parquet objects, {args.rows:,} interactions with string ids, "
            f"{size / 2**20:.1f} MiB, made in {seconds:.1f}s; moto server in its own process at {endpoint}"
        )
        results: dict[str, dict] = {}
        for _ in range(args.repeat):
            for side in ("c", "b", "a"):
                result = run_side(side, endpoint, args.concurrency)
                if side not in results or result["seconds"] < results[side]["seconds"]:
                    results[side] = result
    finally:
        server.terminate()
        server.wait(timeout=10)

    a, b, c = results["a"], results["b"], results["c"]
    assert a["nnz"] == b["nnz"] and sorted(a["shape"]) == sorted(b["shape"]), (a, b)
    names = {
        "a": "seed: transfer manager + pandas + scipy",
        "b": "ours: airflow_gpu.worker.ingest",
        "c": "bound: raw aiobotocore GET",
    }
    print(f"{'side':<42} {'seconds':>8} {'MiB/s':>8} {'peak RSS MiB':>13} {'growth B/interaction':>21}")
    for key, r in (("a", a), ("b", b), ("c", c)):
        growth = (r["peak_rss"] - r["baseline_rss"]) / args.rows
        print(
            f"{names[key]:<42} {r['seconds']:>8.2f} {size / 2**20 / r['seconds']:>8.1f} "
            f"{r['peak_rss'] / 2**20:>13.0f} {growth:>21.1f}"
        )
    print(f"matrix: {b['shape'][0]:,} users x {b['shape'][1]:,} items, {b['nnz']:,} nonzeros (both a and b)")
    bytes_per = (b["peak_rss"] - b["baseline_rss"]) / args.rows
    print(
        f"seed/ours {a['seconds'] / b['seconds']:.2f}x (target >= 2), ours/bound {b['seconds'] / c['seconds']:.2f}x "
        f"(target <= 1.5), ours {bytes_per:.1f} bytes per interaction at peak (target <= 32)"
    )
    print(
        f"ingest: seed_over_ours={a['seconds'] / b['seconds']:.2f} ours_over_bound={b['seconds'] / c['seconds']:.2f} "
        f"bytes_per_interaction={bytes_per:.1f}"
    )


if __name__ == "__main__":
    main()
