"""The demo's data and split, for the benchmarks that measure the worker's training choices on it.

The demo's generator (airflow_gpu.demo.synthetic, seed 0; one user per 30 and one item per 150
interactions) and the demo's 10% evaluation holdout, so that early_stop.py and tune_cost.py
measure on the same matrices as each other and as ``make demo``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_gpu.demo.synthetic import synthetic_interactions  # noqa: E402
from airflow_gpu.worker.evaluate import holdout_split  # noqa: E402
from airflow_gpu.worker.matrix import build_interactions  # noqa: E402

DEMO_INTERACTIONS = 3_000_000
DEMO_HOLDOUT = 0.1


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interactions", type=int, default=DEMO_INTERACTIONS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))


def demo_split(interactions: int = DEMO_INTERACTIONS):
    """(train, test): play-count CSR matrices, users x items, the test holding 10% of each user's items."""
    table = synthetic_interactions(interactions, seed=0)
    matrix = build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix
    return holdout_split(matrix, DEMO_HOLDOUT, seed=0)
