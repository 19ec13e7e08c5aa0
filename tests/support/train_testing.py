"""A stand-in for implicit's GPU model (no GPU here) and a small interaction matrix, for the training tests.

``FakeGpuAls`` behaves as implicit.gpu.als.AlternatingLeastSquares does where it matters to us
(its ``fit`` ignores alpha, its factors are device matrices with ``to_numpy``) and computes with
the CPU solver.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse


class DeviceMatrix:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape

    def to_numpy(self) -> np.ndarray:
        return self.array.copy()


class FakeGpuAls:
    instances: list[FakeGpuAls] = []

    def __init__(self, factors, regularization, alpha, dtype, iterations, calculate_training_loss, random_state):
        from implicit.cpu.als import AlternatingLeastSquares

        self.alpha = alpha
        self.fitted_on = None
        self._cpu = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=1.0,
            dtype=dtype,
            iterations=iterations,
            calculate_training_loss=calculate_training_loss,
            random_state=random_state,
            num_threads=1,
        )
        FakeGpuAls.instances.append(self)

    def fit(self, user_items, show_progress=True, callback=None):
        self.fitted_on = user_items.copy()  # like the real one: alpha is not applied
        self._cpu.fit(user_items, show_progress=show_progress, callback=callback)

    @property
    def user_factors(self):
        return DeviceMatrix(self._cpu.user_factors)

    @property
    def item_factors(self):
        return DeviceMatrix(self._cpu.item_factors)

    def recommend(self, *args, **kwargs):
        return self._cpu.recommend(*args, **kwargs)

    def similar_items(self, *args, **kwargs):
        return self._cpu.similar_items(*args, **kwargs)


def data(seed: int = 0) -> scipy.sparse.csr_matrix:
    raw = scipy.sparse.random(200, 80, density=0.08, format="csr", dtype=np.float32, random_state=seed)
    raw.data = np.ceil(raw.data * 9)
    return raw
