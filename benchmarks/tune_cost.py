"""What ``--tune`` costs against the training it precedes, side by side, on the demo's data.

The demo's generator (seed 0, 3M interactions), the demo's 10% evaluation holdout, then on
the training side: ``tune.tune`` (its sample, its fits while its time budget lasts, validation),
and one full fit with the defaults (early stopping on, as the worker trains), back to back in
one process. Prints both times and their ratio, the measured counterpart of the search's budget
(--tune-budget, 0.25 of the final fit), and the search's own estimate of the fit. Then the demo's
precision@10 on its holdout (50,000 users, as the worker evaluates) with the defaults and, when
the search chose otherwise, with its choice (sigma_1 of the full matrix, as the pipeline does).

    .venv/bin/python benchmarks/tune_cost.py                 # ~1 min on 2 cores
    .venv/bin/python benchmarks/tune_cost.py --device gpu
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataclasses import replace  # noqa: E402

from demo_data import add_demo_arguments, demo_split  # noqa: E402

from airflow_gpu.worker.evaluate import evaluate  # noqa: E402
from airflow_gpu.worker.matrix import confidence  # noqa: E402
from airflow_gpu.worker.regularization import largest_singular_value  # noqa: E402
from airflow_gpu.worker.train import TrainParams, fit  # noqa: E402
from airflow_gpu.worker.tune import DEFAULT, tune  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_arguments(parser)
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    train, test = demo_split(args.interactions)
    params = TrainParams(device=args.device)
    started = time.monotonic()
    result = tune(train, params)
    tune_seconds = time.monotonic() - started
    started = time.monotonic()
    trained = fit(confidence(train), params)
    fit_seconds = time.monotonic() - started
    for row in result.grid:
        print(
            f"  {row['setting']:<16} validation p@10 {row['precision_at_10']:.4f}, {row['iterations']} iterations"
            f"{' (warm start)' if row['warm_start'] else ''}, {row['seconds']:.2f} s"
        )
    print(
        f"tune_cost: {result.sample_users:,} users sampled ({result.sample_interactions:,} pairs to fit), "
        f"{len(result.grid)} points{' (stopped by the budget)' if result.stopped_by_budget else ''}; the search's "
        f"estimate of the fit {result.estimated_fit_seconds:.2f} s, its budget {result.budget_seconds:.2f} s; "
        f"tune {tune_seconds:.2f} s, full fit {fit_seconds:.2f} s ({trained.iterations_run} iterations, sigma_1 "
        f"included): tune/fit = {tune_seconds / fit_seconds:.2f}; chose {result.choice.label} "
        f"({100 * (result.gain_over_default or 0):+.1f}% over the default on the validation users)"
    )
    default_p10 = evaluate(trained.model, train, test, k=10, max_users=50_000, seed=0)["als"]["precision_at_10"]
    tuned_p10 = default_p10
    if result.choice != DEFAULT:
        weighted = confidence(train, result.choice.weighting, result.choice.alpha)
        sigma = largest_singular_value(weighted, seed=params.seed)
        tuned = fit(weighted, replace(params, regularization=result.choice.share * sigma))
        tuned_p10 = evaluate(tuned.model, train, test, k=10, max_users=50_000, seed=0)["als"]["precision_at_10"]
    print(
        f"tune_cost: demo holdout p@10 with the defaults {default_p10:.4f}, with the search's choice "
        f"({result.choice.label}) {tuned_p10:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
