"""Synthetic implicit-feedback data with latent tastes: for the demo, the tests and the benchmarks.

Each user has a home genre and a second genre; each item belongs to one genre and has
power-law popularity inside it. Most interactions follow the user's tastes; the rest go
to items drawn by global popularity, as exposure on a home page would. Play counts are
geometric, larger for taste interactions than for exposure, with a few runaway counts
(autoplay loops) to punish linear weighting. So popularity is a fair baseline, and a model
that learns tastes should beat it clearly.

Everything is vectorised (numpy and Arrow compute): 10M rows take a few seconds.
:func:`spark_export` lays a table out the way a Spark job writes it
(``part-00000-<uuid>-c000.snappy.orc`` ... then ``_SUCCESS``).

This module belongs to neither wing: it needs only numpy and pyarrow, and imports
neither Airflow nor implicit.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Synthetic:
    """The interactions and the hidden truth behind them (which the demo uses to label items)."""

    table: pa.Table  # user_id, item_id, plays
    item_genre: np.ndarray  # genre of item index i (the number in its id)
    user_home: np.ndarray  # home genre of user index u
    user_second: np.ndarray  # second genre of user index u
    user_index_of_id: np.ndarray  # the number in a user id -> user index (ids are shuffled)


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
    return generate(
        n_interactions,
        n_users,
        n_items,
        genres=genres,
        taste_share=taste_share,
        popularity_exponent=popularity_exponent,
        seed=seed,
        string_ids=string_ids,
    ).table


def generate(
    n_interactions: int,
    n_users: int | None = None,
    n_items: int | None = None,
    *,
    genres: int = 24,
    taste_share: float = 0.75,
    popularity_exponent: float = 1.0,
    seed: int = 0,
    string_ids: bool = True,
) -> Synthetic:
    """:func:`synthetic_interactions`, with the genres behind it."""
    if n_interactions < 1:
        raise ValueError(f"need at least one interaction, got {n_interactions}")
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
    # User ids are a permutation of the user indices (7919 is prime), so ids do not sort by activity.
    user_numbers = users * 7919 % max(n_users, 1)
    if string_ids:
        user_col = _names("user-", user_numbers, n_users)
        item_col = _names("item-", items, n_items)
    else:
        user_col = pa.array(user_numbers + 1_000_000)
        item_col = pa.array(items + 500)
    index_of_id = np.empty(n_users, np.int64)
    index_of_id[np.arange(n_users) * 7919 % max(n_users, 1)] = np.arange(n_users)
    table = pa.table({"user_id": user_col, "item_id": item_col, "plays": pa.array(plays.astype(np.int32))})
    return Synthetic(table, item_genre, home, second, index_of_id)


def _sample(rng: np.random.Generator, p: np.ndarray, size: int) -> np.ndarray:
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(p) - 1)


def _names(prefix: str, numbers: np.ndarray, universe: int) -> pa.Array:
    """Zero-padded string ids, built by Arrow compute rather than Python string formatting."""
    width = len(str(max(universe - 1, 0)))
    text = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, text, "")


def id_number(value: str) -> int:
    """The number inside a generated string id ("user-00042" -> 42)."""
    return int(value.rsplit("-", 1)[-1])


SUCCESS_MARKER = "_SUCCESS"


def spark_export(table: pa.Table, objects: int = 8) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each object of a Spark-style ORC export of ``table``, ``_SUCCESS`` last.

    Spark names every part of one write ``part-<partition>-<write uuid>-c000.snappy.orc``
    and writes an empty ``_SUCCESS`` once all parts are committed. Readers skip the marker.
    """
    import pyarrow.orc as orc

    objects = max(1, min(objects, table.num_rows))
    write_id = uuid.uuid4()
    bounds = np.linspace(0, table.num_rows, objects + 1).astype(int)
    for n, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        sink = io.BytesIO()
        orc.write_table(table.slice(start, end - start), sink, compression="snappy")
        yield f"part-{n:05d}-{write_id}-c000.snappy.orc", sink.getvalue()
    yield SUCCESS_MARKER, b""


def write_shards(table: pa.Table, folder: Path, fmt: str = "parquet", objects: int = 4, **options) -> list[Path]:
    """Split ``table`` into ``objects`` files of ``fmt`` under ``folder`` (a Spark-like export on disk)."""
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


def with_heavy_users(table: pa.Table, *, heavy_users: int = 3, heavy_share: float = 0.5, seed: int = 0) -> pa.Table:
    """``table`` (integer ids, see ``string_ids=False``) plus ``heavy_users`` new users who each played
    ``heavy_share`` of its items: rows far above any warp's share, the native solver's heavy-row case."""
    rng = np.random.default_rng(seed)
    items = np.unique(table["item_id"].to_numpy())
    first = int(pc.max(table["user_id"]).as_py()) + 1
    users, chosen = [], []
    for n in range(heavy_users):
        picked = rng.choice(items, size=max(1, int(heavy_share * len(items))), replace=False)
        users.append(np.full(len(picked), first + n, dtype=table["user_id"].type.to_pandas_dtype()))
        chosen.append(picked)
    planted = pa.table(
        {
            "user_id": pa.array(np.concatenate(users), type=table["user_id"].type),
            "item_id": pa.array(np.concatenate(chosen), type=table["item_id"].type),
            "plays": pa.array(rng.integers(1, 5, sum(map(len, chosen))), type=table["plays"].type),
        }
    )
    return pa.concat_tables([table.select(["user_id", "item_id", "plays"]), planted])
