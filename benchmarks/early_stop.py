"""Early stopping against the full run, side by side, on the demo's data.

The demo's generator (airflow_gpu.demo.synthetic, seed 0, 3M interactions, one user per 30 and
one item per 150), the demo's 10% holdout, the worker's defaults (bm25, alpha 0.5,
regularization auto, 64 factors, loss on). The same confidence matrix is fitted twice
with the same seed: once for all --iterations (early stopping off) and once with the
default early stop, alternating which goes first across --repeats so that a machine
shared with other work favours neither. Both models are scored on the same users.

    .venv/bin/python benchmarks/early_stop.py                  # ~3 min on 2 cores
    .venv/bin/python benchmarks/early_stop.py --device gpu
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo_data import add_demo_arguments, demo_split  # noqa: E402

from airflow_gpu.worker.evaluate import evaluate  # noqa: E402
from airflow_gpu.worker.matrix import confidence  # noqa: E402
from airflow_gpu.worker.train import TrainParams, fit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_arguments(parser)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)

    train, test = demo_split(args.interactions)
    weighted = confidence(train)
    base = TrainParams(iterations=args.iterations, device=args.device)
    runs = {"full": replace(base, early_stop=0.0), "early stop": base}
    figures: dict[str, list[dict]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        order = list(runs) if repeat % 2 == 0 else list(runs)[::-1]
        for name in order:
            result = fit(weighted, runs[name])
            scores = evaluate(result.model, train, test, k=10, max_users=50_000, seed=0)
            figures[name].append(
                {
                    "seconds": result.seconds,
                    "iterations": result.iterations_run,
                    "p10": scores["als"]["precision_at_10"],
                    "stop": result.stop_reason,
                    "loss": result.loss[-1],
                }
            )
            print(
                f"{name:<11} repeat {repeat}: {result.iterations_run:>2} iterations in {result.seconds:6.2f} s, "
                f"p@10 {scores['als']['precision_at_10']:.4f}, loss {result.loss[-1]:.6f} ({result.stop_reason})",
                flush=True,
            )
    full_s = float(np.median([f["seconds"] for f in figures["full"]]))
    early_s = float(np.median([f["seconds"] for f in figures["early stop"]]))
    full_p = figures["full"][0]["p10"]
    early_p = figures["early stop"][0]["p10"]
    summary = {
        "full_seconds": full_s,
        "early_seconds": early_s,
        "time_ratio": early_s / full_s,
        "time_cut": 1 - early_s / full_s,
        "p10_full": full_p,
        "p10_early": early_p,
        "p10_ratio": early_p / full_p,
        "iterations_full": figures["full"][0]["iterations"],
        "iterations_early": figures["early stop"][0]["iterations"],
        "runs": figures,
    }
    print(
        f"\nearly_stop: iterations {summary['iterations_early']}/{summary['iterations_full']}, "
        f"train time early/full = {early_s:.2f}/{full_s:.2f} s = {summary['time_ratio']:.3f} "
        f"(cut {summary['time_cut']:.1%}), p@10 early/full = {early_p:.4f}/{full_p:.4f} = {summary['p10_ratio']:.4f}"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
