"""What the demo prints at the end: stage times, ALS against popularity, three users, where things are.

It reads what a consumer of the pipeline would read -- ``latest.json``, the manifest it
points at, ``metrics.json`` and the recommendation parts -- from a local copy of the run's
outputs, and uses the generator's hidden genres to show whether the recommendations fit
each user's tastes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_gpu.demo.synthetic import Synthetic, id_number


@dataclass
class Stage:
    name: str
    seconds: float | None
    detail: str = ""


def copy_outputs(s3, run_prefix: str, latest_uri: str, dest: Path) -> list[Path]:
    """Download the run's prefix (and the latest marker) into ``dest``; the embedded S3 dies with the demo."""
    from airflow_gpu.contract import split_s3

    bucket, prefix = split_s3(run_prefix)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            target = dest / item["Key"][len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
            written.append(target)
    marker_bucket, marker_key = split_s3(latest_uri)
    s3.download_file(marker_bucket, marker_key, str(dest / "latest.json"))
    return written


def quality_lines(metrics: dict) -> list[str]:
    evaluation = metrics.get("evaluation")
    if not evaluation:
        return ["no evaluation (eval_holdout=0)"]
    k = evaluation["k"]
    als, pop = evaluation["als"], evaluation["popularity"]
    lift = als[f"precision_at_{k}"] / pop[f"precision_at_{k}"] if pop[f"precision_at_{k}"] else float("inf")
    return [
        f"precision@{k}: ALS {als[f'precision_at_{k}']:.4f} vs popularity {pop[f'precision_at_{k}']:.4f} ({lift:.2f}x)",
        f"NDCG@{k}:      ALS {als[f'ndcg_at_{k}']:.4f} vs popularity {pop[f'ndcg_at_{k}']:.4f}",
        f"MAP@{k}:       ALS {als[f'map_at_{k}']:.4f} vs popularity {pop[f'map_at_{k}']:.4f}",
        f"on {evaluation['users_evaluated']:,} users with {evaluation['holdout']:.0%} of their items held out",
    ]


def pick_users(data: Synthetic, count: int = 3, seed: int = 0) -> list[str]:
    """Users with a fair history (15-60 rows), each with a different home genre; deterministic."""
    users = data.table.column("user_id")
    ids, rows = np.unique(np.asarray(pc.cast(users, pa.string()).to_numpy(zero_copy_only=False)), return_counts=True)
    rng = np.random.default_rng(seed)
    candidates = ids[(rows >= 15) & (rows <= 60)]
    if len(candidates) == 0:
        candidates = ids[np.argsort(-rows)][: count * 10]
    chosen: list[str] = []
    genres: set[int] = set()
    for user in rng.permutation(candidates):
        genre = int(data.user_home[data.user_index_of_id[id_number(str(user))]])
        if genre not in genres or len(candidates) < count * 3:
            chosen.append(str(user))
            genres.add(genre)
        if len(chosen) == count:
            break
    return chosen


def sample_lines(data: Synthetic, recommendations_dir: Path, users: list[str], show: int = 5) -> list[str]:
    """Per user: their tastes, what they played most, and what ALS recommends, with each item's genre."""
    import pyarrow.dataset as ds

    recs = ds.dataset(str(recommendations_dir), format="parquet").to_table(filter=pc.field("user_id").isin(users))
    history = data.table.filter(pc.is_in(data.table.column("user_id"), pa.array(users)))
    genre_of = lambda item: int(data.item_genre[id_number(item)])  # noqa: E731
    lines = []
    for user in users:
        index = data.user_index_of_id[id_number(user)]
        home, second = int(data.user_home[index]), int(data.user_second[index])
        mine = history.filter(pc.equal(history.column("user_id"), user))
        plays: dict[str, int] = {}
        for item, count in zip(mine.column("item_id").to_pylist(), mine.column("plays").to_pylist()):
            plays[item] = plays.get(item, 0) + count
        top_played = sorted(plays.items(), key=lambda kv: -kv[1])[:show]
        theirs = recs.filter(pc.equal(recs.column("user_id"), user)).sort_by("rank")
        rec_items = theirs.column("item_id").to_pylist()
        scores = theirs.column("score").to_pylist()
        in_taste = sum(genre_of(item) in (home, second) for item in rec_items)
        lines.append(f"{user}: tastes genre {home} (home) and {second}; {len(plays)} items played")
        lines.append("    played most: " + ", ".join(f"{item} [g{genre_of(item)}] x{n}" for item, n in top_played))
        lines.append(
            "    recommended: "
            + ", ".join(
                f"{item} [g{genre_of(item)}] {score:.2f}" for item, score in zip(rec_items[:show], scores[:show])
            )
        )
        replayed = sum(item in plays for item in rec_items)
        lines.append(
            f"    {in_taste} of {len(rec_items)} recommendations are in the user's two genres; "
            + ("none was played before" if not replayed else f"{replayed} were played before")
        )
    return lines


def stage_lines(stages: list[Stage]) -> list[str]:
    width = max(len(s.name) for s in stages)
    out = []
    for stage in stages:
        seconds = f"{stage.seconds:7.1f} s" if stage.seconds is not None else "      - "
        out.append(f"{stage.name.ljust(width)}  {seconds}  {stage.detail}".rstrip())
    return out


def worker_stage_detail(metrics: dict[str, Any]) -> str:
    parts = [f"{name} {seconds:.1f}s" for name, seconds in (metrics.get("stages") or {}).items()]
    device = (metrics.get("training") or {}).get("device")
    return f"on {device}: " + ", ".join(parts) if parts else ""


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
