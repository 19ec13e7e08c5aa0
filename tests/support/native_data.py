"""Data for the native solver's tests: the synthetic generator with planted heavy users, as bm25 confidence."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from airflow_gpu.demo.synthetic import synthetic_interactions, with_heavy_users
from airflow_gpu.worker.matrix import build_interactions, confidence


def confidence_with_heavy_rows(n_interactions: int, *, heavy_users: int = 3, heavy_share: float = 0.5, seed: int = 0):
    table = with_heavy_users(
        synthetic_interactions(n_interactions, seed=seed, string_ids=False),
        heavy_users=heavy_users,
        heavy_share=heavy_share,
        seed=seed,
    )
    return confidence(
        build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix.tocsr(), "bm25"
    )


# Two float32 solvers summing in different orders differ from each other by up to about
# twice their distance to float64, and CG's chained steps amplify rounding (bm25 confidences
# reach ~135 here); 5x implicit's own float32-to-float64 spread bounds what rounding does.
# A change of meaning does far more: see the control in the factors test.
ROUNDING = 5


def implicit_fit(matrix, X0, Y0, regularization, iterations, dtype=np.float32):
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=X0.shape[1],
            regularization=regularization,
            iterations=iterations,
            use_cg=True,
            dtype=dtype,
            num_threads=1,
            calculate_training_loss=False,
            random_state=0,
        )
        model.cg_steps = 3
        model.user_factors, model.item_factors = X0.astype(dtype), Y0.astype(dtype)  # warm start: same factors
        model.fit(matrix.astype(dtype), show_progress=False)
    return model.user_factors, model.item_factors


def relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
