"""Test data helpers: the synthetic generator (airflow_gpu.demo.synthetic, shared with the demo
and the benchmarks), and writers that lay a table out as shards on disk or in S3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from airflow_gpu.demo.synthetic import synthetic_interactions  # noqa: F401  (re-exported for tests and benchmarks)


def write_shards(table: pa.Table, folder: Path, fmt: str = "parquet", objects: int = 4, **options) -> list[Path]:
    """Split ``table`` into ``objects`` files of ``fmt`` under ``folder`` (a Spark-like export)."""
    import pyarrow.csv as pacsv
    import pyarrow.orc as orc
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    bounds = np.linspace(0, table.num_rows, objects + 1).astype(int)
    for n, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = table.slice(start, end - start)
        path = folder / f"part-{n:05d}.{fmt}"
        if fmt == "parquet":
            pq.write_table(part, path, **options)
        elif fmt == "orc":
            orc.write_table(part, path, **options)
        elif fmt == "csv":
            pacsv.write_csv(part, path, **options)
        else:
            raise ValueError(fmt)
        paths.append(path)
    return paths


def upload_folder(s3_client, folder: Path, bucket: str, prefix: str) -> None:
    """Put every file under ``folder`` at s3://bucket/prefix/relative-path (creating the bucket)."""
    try:
        s3_client.create_bucket(Bucket=bucket)
    except s3_client.exceptions.BucketAlreadyOwnedByYou:
        pass
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3_client.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}")
