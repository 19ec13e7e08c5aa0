"""Choosing the worker's defaults: confidence weighting, alpha and regularization, on tuning data.

Every grid point trains ALS (64 factors, 15 iterations, as the product does) on several
tuning datasets, each with a per-user 20% holdout of its distinct pairs, and is scored by
precision@10 (and NDCG@10) against popularity. The default is the grid point with the best
mean precision relative to each dataset's best, so no single dataset decides it.

The tuning data is never the data the Spark comparison is judged on: the synthetic sets use
generator seed 1 (``benchmarks/als_vs_spark.py`` uses seed 0), and come in three shapes
(the demo's, 10 events per user, a 5x larger catalogue); ``--movielens`` adds a real
ratings file (user, item, rating; tab- or comma-separated, a header line is skipped), for
example MovieLens 100K, with the rating as the weight.

A grid point is ``weighting:alpha:regularization``; the regularization is a number (used
as given) or ``xS``, S times the largest singular value of the confidence matrix (what
``--regularization auto`` computes, with S = regularization.AUTO_REGULARIZATION_SHARE).

The worker's own search on the user's data (``--tune``) is scored against these sets by
``benchmarks/tuning.py``, which reuses this module's loaders.

    .venv/bin/python benchmarks/weighting.py                         # ~8 min on 2 cores
    .venv/bin/python benchmarks/weighting.py --movielens ml-100k.inter
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_gpu.demo.synthetic import synthetic_interactions  # noqa: E402
from airflow_gpu.worker.evaluate import evaluate, holdout_split  # noqa: E402
from airflow_gpu.worker.matrix import build_interactions, confidence  # noqa: E402
from airflow_gpu.worker.regularization import largest_singular_value  # noqa: E402
from airflow_gpu.worker.train import TrainParams, fit  # noqa: E402

# 4 weightings x 4 regularization shares, plus the defaults before this grid (bm25, alpha 0.5,
# regularization 1.0) for reference: 17 points, against the 14 Spark's grid had.
GRID = [f"{w}:{s}" for w in ("bm25:0.25", "bm25:0.5", "bm25:1", "log:2") for s in ("x0.05", "x0.1", "x0.2", "x0.3")]
GRID.append("bm25:0.5:1")

SHAPES = {
    # name: (events per user, events per item); the generator's defaults are the demo's data.
    "demo": (30, 150),
    "sparse-users": (10, 150),
    "large-catalogue": (30, 30),
}


@dataclass
class Tuning:
    name: str
    train: scipy.sparse.csr_matrix
    test: scipy.sparse.csr_matrix


def synthetic(shape: str, interactions: int, seed: int) -> Tuning:
    per_user, per_item = SHAPES[shape]
    table = synthetic_interactions(interactions, interactions // per_user, interactions // per_item, seed=seed)
    data = build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy())
    train, test = holdout_split(data.matrix, 0.2, seed=seed)
    return Tuning(f"{shape} {interactions / 1e6:g}M seed {seed}", train, test)


def ratings_file(path: Path, seed: int) -> Tuning:
    import pyarrow.csv as pacsv

    first = path.open().readline()
    delimiter = "\t" if "\t" in first else ","
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(
            autogenerate_column_names=True, skip_rows=0 if first.split(delimiter)[0].strip().isdigit() else 1
        ),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
    )
    users, items = (table.column(i).cast(pa.string()) for i in (0, 1))
    data = build_interactions(users, items, table.column(2).to_numpy().astype(np.float32))
    train, test = holdout_split(data.matrix, 0.2, seed=seed)
    return Tuning(path.name, train, test)


def run_point(data: Tuning, spec: str, seed: int) -> dict:
    weighting, alpha, reg = spec.split(":")
    weighted = confidence(data.train, weighting, float(alpha))
    sigma = largest_singular_value(weighted, seed=seed)
    regularization = float(reg[1:]) * sigma if reg.startswith("x") else float(reg)
    started = time.monotonic()
    result = fit(
        weighted,
        TrainParams(factors=64, iterations=15, regularization=regularization, seed=seed, device="cpu", loss=False),
    )
    seconds = time.monotonic() - started
    metrics = evaluate(result.model, data.train, data.test, k=10, max_users=20_000, seed=seed)
    return {
        "spec": spec,
        "regularization": regularization,
        "sigma": sigma,
        "seconds": seconds,
        "p10": metrics["als"]["precision_at_10"],
        "ndcg10": metrics["als"]["ndcg_at_10"],
        "pop": metrics["popularity"]["precision_at_10"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=1_000_000, help="events per synthetic tuning set")
    parser.add_argument(
        "--seed", type=int, default=1, help="generator seed of the tuning sets (the Spark comparison uses 0)"
    )
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help=f"synthetic shapes to tune on, of {', '.join(SHAPES)}"
    )
    parser.add_argument(
        "--movielens",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a ratings file to tune on as well (user, item, rating)",
    )
    parser.add_argument("--grid", default=",".join(GRID), help="weighting:alpha:regularization points (see above)")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # the worker's per-iteration lines would drown the table

    sets = [synthetic(shape, args.interactions, args.seed) for shape in args.shapes.split(",") if shape]
    sets += [ratings_file(path, args.seed) for path in args.movielens]
    grid = args.grid.split(",")
    results: dict[str, list[dict]] = {}
    for data in sets:
        users, items = data.train.shape
        print(
            f"\n{data.name}: {users:,} users x {items:,} items, {data.train.nnz:,} training pairs "
            f"({data.train.nnz / users:.1f} per user, {data.train.nnz / items:.1f} per item), {data.test.nnz:,} held out"
        )
        print(f"{'weighting:alpha:reg':<20} {'lambda':>8} {'p@10':>7} {'ndcg@10':>7} {'pop p@10':>8} {'fit s':>6}")
        rows = results[data.name] = []
        for spec in grid:
            row = run_point(data, spec, args.seed)
            rows.append(row)
            print(
                f"{spec:<20} {row['regularization']:>8.1f} {row['p10']:>7.4f} {row['ndcg10']:>7.4f} {row['pop']:>8.4f} "
                f"{row['seconds']:>6.1f}",
                flush=True,
            )
        # sigma_1 depends on the weighting and alpha only: one figure per pair.
        sigmas = ", ".join(
            f"{pair} {sigma:.0f}" for pair, sigma in {r["spec"].rsplit(":", 1)[0]: r["sigma"] for r in rows}.items()
        )
        print(f"(sigma_1 of the confidence matrix: {sigmas})")

    # Each point's precision as a share of the best point's on the same set, averaged over sets.
    print(f"\n{'weighting:alpha:reg':<20} " + " ".join(f"{name[:16]:>16}" for name in results) + f" {'mean share':>10}")
    scores = {}
    for n, spec in enumerate(grid):
        shares = [rows[n]["p10"] / max(r["p10"] for r in rows) for rows in results.values()]
        scores[spec] = float(np.mean(shares))
        print(
            f"{spec:<20} "
            + " ".join(f"{rows[n]['p10']:>9.4f} ({share:.2f})" for rows, share in zip(results.values(), shares))
            + f" {scores[spec]:>10.3f}"
        )
    best = max(scores, key=scores.get)
    print(f"\nweighting: best={best} mean_share={scores[best]:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
