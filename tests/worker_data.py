"""Synthetic implicit-feedback data with latent tastes, for the worker's tests and benchmarks.

Each user has a home genre and a second genre; each item belongs to one genre and has
power-law popularity inside it. Most interactions follow the user's tastes; the rest go
to items drawn by global popularity, as exposure on a home page would. Play counts are
geometric, larger for taste interactions than for exposure, with a few runaway counts
(autoplay loops) to punish linear weighting. So popularity is a fair baseline, and a model
that learns tastes should beat it clearly.

Everything is vectorised (numpy and Arrow compute): 10M rows take a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def synthetic_interactions(
    n_interactions: int,
    n_users: int | None = None,
    n_items: int | None = None,
    *,
    genres: int = 24,
    taste_share: float = 0.75,
    popularity_exponent: float = 1.0,
    seed: int = 0,
    string_ids: bool = True,
) -> pa.Table:
    """A table of (user_id, item_id, plays) rows, in random order, duplicates included."""
    rng = np.random.default_rng(seed)
    n_users = n_users or max(10, n_interactions // 30)
    n_items = n_items or max(10, n_interactions // 150)
    genres = max(1, min(genres, n_items))

    activity = rng.lognormal(0.0, 1.0, n_users)
    users = _sample(rng, activity / activity.sum(), n_interactions).astype(np.int64)
    home = rng.integers(0, genres, n_users)
    second = (home + rng.integers(1, max(genres, 2), n_users)) % genres

    item_genre = rng.integers(0, genres, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** popularity_exponent
    rng.shuffle(popularity)
    items = np.empty(n_interactions, np.int64)

    taste = rng.random(n_interactions) < taste_share
    chosen = np.where(rng.random(n_interactions) < 0.7, home[users], second[users])
    # Exposure: items drawn by global popularity.
    exposure = np.flatnonzero(~taste)
    items[exposure] = _sample(rng, popularity / popularity.sum(), len(exposure))
    # Taste: items drawn by popularity inside the chosen genre.
    taste_rows = np.flatnonzero(taste)
    taste_genre = chosen[taste_rows]
    for g in range(genres):
        in_genre = np.flatnonzero(item_genre == g)
        rows = taste_rows[taste_genre == g]
        if len(in_genre) == 0:
            items[rows] = _sample(rng, popularity / popularity.sum(), len(rows))
            continue
        weights = popularity[in_genre]
        items[rows] = in_genre[_sample(rng, weights / weights.sum(), len(rows))]

    plays = np.where(taste, rng.geometric(0.25, n_interactions), rng.geometric(0.7, n_interactions))
    runaway = rng.random(n_interactions) < 0.01
    plays[runaway] *= 50
    if string_ids:
        user_col = _names("user-", users * 7919 % max(n_users, 1), n_users)
        item_col = _names("item-", items, n_items)
    else:
        user_col = pa.array(users * 7919 % max(n_users, 1) + 1_000_000)
        item_col = pa.array(items + 500)
    return pa.table({"user_id": user_col, "item_id": item_col, "plays": pa.array(plays.astype(np.int32))})


def _sample(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(p) - 1)


def _names(prefix: str, numbers: np.ndarray, universe: int) -> pa.Array:
    """Zero-padded string ids, built by Arrow compute rather than Python string formatting."""
    width = len(str(max(universe - 1, 0)))
    text = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, text, "")


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
