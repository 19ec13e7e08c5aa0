"""Data for the native solver's tests: the synthetic generator with planted heavy users, as bm25 confidence."""

from __future__ import annotations

from airflow_gpu.demo.synthetic import synthetic_interactions, with_heavy_users
from airflow_gpu.worker.matrix import build_interactions, confidence


def confidence_with_heavy_rows(n_interactions: int, *, heavy_users: int = 3, heavy_share: float = 0.5, seed: int = 0):
    table = with_heavy_users(synthetic_interactions(n_interactions, seed=seed, string_ids=False),
                             heavy_users=heavy_users, heavy_share=heavy_share, seed=seed)
    return confidence(build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix.tocsr(), "bm25")
