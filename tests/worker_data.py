"""Test data helpers: the synthetic generator (airflow_gpu.synthetic, shared with the demo
and the benchmarks), and writers that lay a table out as shards on disk or in S3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from airflow_gpu.synthetic import synthetic_interactions  # noqa: F401  (re-exported for tests and benchmarks)


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


def confidence_with_heavy_rows(n_interactions: int, *, heavy_users: int = 3, heavy_share: float = 0.5, seed: int = 0):
    """A bm25 confidence CSR from the synthetic generator, with ``heavy_users`` planted users who
    each played ``heavy_share`` of the catalogue (the popular items are heavy rows of their own):
    data for the native solver's heavy-row split."""
    import scipy.sparse

    from airflow_gpu.worker.matrix import build_interactions, confidence

    table = synthetic_interactions(n_interactions, seed=seed, string_ids=False)
    counts = build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix.tocsr()
    rng = np.random.default_rng(seed)
    users, items = counts.shape
    planted_rows, planted_cols = [], []
    for n in range(heavy_users):
        chosen = rng.choice(items, size=max(1, int(heavy_share * items)), replace=False)
        planted_rows.append(np.full(len(chosen), users + n))
        planted_cols.append(chosen)
    planted = scipy.sparse.csr_matrix(
        (rng.integers(1, 5, sum(map(len, planted_cols))).astype(np.float32),
         (np.concatenate(planted_rows) - users, np.concatenate(planted_cols))), shape=(heavy_users, items))
    matrix = scipy.sparse.vstack([counts, planted]).tocsr().astype(np.float32)
    matrix.sum_duplicates()
    return confidence(matrix, "bm25")
