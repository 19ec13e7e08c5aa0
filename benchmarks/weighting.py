"""Which confidence weighting should be the default? Precision@10 of each on the same split.

Synthetic latent-taste data (tests/worker_data.py) with heavy-tailed play counts; one
per-user 20% holdout; ALS with the worker's defaults otherwise. Prints one row per
(weighting, alpha) and the popularity baseline.

    .venv/bin/python benchmarks/weighting.py --interactions 1000000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from worker_data import synthetic_interactions  # noqa: E402

from airflow_gpu.worker.evaluate import evaluate, holdout_split  # noqa: E402
from airflow_gpu.worker.matrix import build_interactions, confidence  # noqa: E402
from airflow_gpu.worker.train import TrainParams, fit  # noqa: E402

GRID = {"bm25": [0.5, 2, 8], "log": [1, 10, 40], "linear": [1, 10], "none": [1, 10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--regularization", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    table = synthetic_interactions(args.interactions, seed=args.seed)
    data = build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy())
    train, test = holdout_split(data.matrix, 0.2, seed=args.seed)
    print(f"{data.users:,} users x {data.items:,} items, {data.matrix.nnz:,} pairs; train {train.nnz:,}, test {test.nnz:,}")
    print(f"{'weighting':>9} {'alpha':>6} {'p@10':>7} {'map@10':>7} {'ndcg@10':>7} {'pop p@10':>8} {'train s':>7}")
    params = TrainParams(factors=args.factors, iterations=args.iterations, regularization=args.regularization,
                         seed=args.seed, device="cpu", loss=False)
    for weighting, alphas in GRID.items():
        for alpha in alphas:
            started = time.monotonic()
            result = fit(confidence(train, weighting, alpha), params)
            seconds = time.monotonic() - started
            metrics = evaluate(result.model, train, test, k=10, max_users=20_000, seed=args.seed)
            als, pop = metrics["als"], metrics["popularity"]
            print(f"{weighting:>9} {alpha:>6g} {als['precision_at_10']:>7.4f} {als['map_at_10']:>7.4f} "
                  f"{als['ndcg_at_10']:>7.4f} {pop['precision_at_10']:>8.4f} {seconds:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
