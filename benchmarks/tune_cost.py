"""What ``--tune`` costs against the training it precedes, side by side, on the demo's data.

The demo's generator (seed 0, 3M interactions), the demo's 10% evaluation holdout, then on
the training side: ``tune.tune`` (its sample, 6 fits, validation), and one full fit with the
defaults (early stopping on, as the worker trains). Prints both times and their ratio, the
measured counterpart of the search's planned share (--tune-budget, 0.25).

    .venv/bin/python benchmarks/tune_cost.py                 # ~2 min on 2 cores
    .venv/bin/python benchmarks/tune_cost.py --device gpu
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo_data import add_demo_arguments, demo_split  # noqa: E402
from airflow_gpu.worker.matrix import confidence  # noqa: E402
from airflow_gpu.worker.train import TrainParams, fit  # noqa: E402
from airflow_gpu.worker.tune import tune  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_arguments(parser)
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    train, _ = demo_split(args.interactions)
    params = TrainParams(device=args.device)
    started = time.monotonic()
    result = tune(train, params)
    tune_seconds = time.monotonic() - started
    started = time.monotonic()
    trained = fit(confidence(train), params)
    fit_seconds = time.monotonic() - started
    for row in result.grid:
        print(f"  {row['setting']:<16} validation p@10 {row['precision_at_10']:.4f}, {row['iterations']} iterations, "
              f"{row['seconds']:.2f} s")
    print(f"tune_cost: {result.sample_users:,} users sampled ({result.sample_interactions:,} pairs to fit), planned "
          f"{result.planned_share:.2f} of one fit; tune {tune_seconds:.2f} s, full fit {fit_seconds:.2f} s "
          f"({trained.iterations_run} iterations, sigma_1 included): tune/fit = {tune_seconds / fit_seconds:.2f}; "
          f"chose {result.choice.label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
