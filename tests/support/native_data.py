"""Data for the native solver's tests: the synthetic generator with planted heavy users, as bm25 confidence."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from airflow_gpu.demo.synthetic import synthetic_interactions, with_heavy_users
from airflow_gpu.worker.evaluate import holdout_split
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
# Two bfloat16 runs whose float32 sums differ at rounding level store some values one bfloat16
# step apart (a sum on either side of a rounding boundary): at most 2^-7 of the value, the widest
# relative gap between neighbouring bfloat16 values. Bounds of bf16 runs add this to the above.
BF16_SPACING = 2.0**-7


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


# The smoke split of benchmarks/gpu_smoke.py and gpu_solver.py's quality step: the synthetic
# generator's interactions (seed 11), 20% of each user's held out (seed 5), bm25 on the rest;
# 64 factors, 15 iterations, the automatic regularization, precision@10 over up to 50,000 users.
SMOKE_SEED, SMOKE_FACTORS, SMOKE_ITERATIONS = 5, 64, 15


def smoke_split(n_interactions: int):
    """(train counts, held-out test, bm25-weighted train) of the smoke split at ``n_interactions``."""
    table = synthetic_interactions(n_interactions, seed=11)
    matrix = build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix
    train, test = holdout_split(matrix, 0.2, SMOKE_SEED)
    return train, test, confidence(train, "bm25")


def nearest_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """The bit patterns (uint16) of the bfloat16 nearest each float32 value, ties to the even pattern,
    found by comparing float64 distances to the two neighbouring bfloat16 values, not by the bit
    arithmetic the code under test uses. Past the largest bfloat16 the upper neighbour is 2^128 (where
    IEEE rounds to infinity); NaN gives the quiet NaN 0x7FFF, infinities stay themselves."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    below = (bits >> np.uint32(16)).astype(np.uint32)  # truncated: the neighbour toward zero
    above = below + np.uint32(1)  # the neighbour away from zero (the exponent carries on its own)

    def value_of(patterns: np.ndarray) -> np.ndarray:
        wide = (patterns << np.uint32(16)).view(np.float32).astype(np.float64)
        return np.where(np.isinf(wide), np.copysign(2.0**128, wide), wide)

    with np.errstate(invalid="ignore"):  # NaN inputs: their distances are NaN and their result set below
        x = values.astype(np.float64)
        to_below, to_above = np.abs(x - value_of(below)), np.abs(value_of(above) - x)
    choose_above = (to_above < to_below) | ((to_above == to_below) & (below % 2 == 1))
    out = np.where(choose_above, above, below)
    out = np.where(np.isinf(values), below, out)
    return np.where(np.isnan(values), np.uint32(0x7FFF), out).astype(np.uint16)


def bfloat16_test_values(count: int = 50_000, seed: int = 0) -> np.ndarray:
    """float32 values that exercise a bfloat16 conversion: random bit patterns (every exponent,
    subnormals, NaN payloads), exact ties with odd and even kept parts, the edges of overflow, signed
    zeros and infinities."""
    rng = np.random.default_rng(seed)
    random_bits = rng.integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32)
    ties = (rng.integers(0, 2**16, count // 4, dtype=np.uint64).astype(np.uint32) << np.uint32(16)) | np.uint32(0x8000)
    edges = np.array(
        [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00001, 0xFFFFFFFF, 0x7F7FFFFF, 0x7F7F7FFF,
         0x7F7F8000, 0x7F7E8000, 0x00008000, 0x00018000, 0x00007FFF, 0x3F808000, 0x3F818000, 0x3F7FFFFF],
        dtype=np.uint32,
    )  # fmt: skip
    return np.concatenate([random_bits, ties, edges]).view(np.float32)
