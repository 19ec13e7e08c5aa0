"""Id dictionaries, the CSR build and confidence weighting, checked against plain scipy/numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse

from airflow_gpu.worker.errors import WorkerError
from airflow_gpu.worker.matrix import IdDictionary, MatrixBuilder, bm25, build_interactions, confidence


def reference(users: list, items: list, weights: np.ndarray) -> dict:
    sums: dict = {}
    for u, i, w in zip(users, items, weights):
        sums[(u, i)] = sums.get((u, i), 0.0) + float(w)
    return sums


def as_dict(interactions) -> dict:
    coo = interactions.matrix.tocoo()
    users, items = interactions.user_ids.to_pylist(), interactions.item_ids.to_pylist()
    return {(users[r], items[c]): float(v) for r, c, v in zip(coo.row, coo.col, coo.data)}


@pytest.mark.parametrize("fold_at", [1, 1 << 20])
def test_many_parts_fold_into_one_dictionary(monkeypatch, fold_at):
    monkeypatch.setattr(IdDictionary, "fold_at", fold_at)
    rng = np.random.default_rng(1)
    builder = MatrixBuilder()
    all_users, all_items, all_weights = [], [], []
    order = rng.permutation(12)  # parts arrive out of order, as downloads finish
    parts = {}
    for seq in range(12):
        n = int(rng.integers(0, 400))
        users = [f"user-{u}" for u in rng.integers(0, 150, n)]
        items = rng.integers(0, 60, n).tolist()
        weights = rng.random(n).astype(np.float32) + 0.5
        parts[seq] = (users, items, weights)
        all_users += users
        all_items += items
        all_weights += weights.tolist()
    for seq in order:
        users, items, weights = parts[seq]
        builder.add(
            pa.chunked_array([pa.array(users, pa.string())]),
            pa.chunked_array([pa.array(items, pa.int64())]),
            weights,
            seq=int(seq),
        )
    result = builder.build()
    expected = reference(all_users, all_items, np.array(all_weights))
    got = as_dict(result)
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) < 1e-4 for k in expected)
    # Dense indices follow first appearance in listing order, whatever the arrival order.
    first_seen = list(dict.fromkeys(all_users))
    assert result.user_ids.to_pylist() == first_seen
    assert result.matrix.has_canonical_format
    assert result.rows == len(all_users) and result.duplicates == len(all_users) - len(expected)


def test_dictionary_encoded_input_is_unified():
    first = pa.array(["b", "a", "b"]).dictionary_encode()
    second = pa.DictionaryArray.from_arrays(pa.array([1, 0], pa.int32()), pa.array(["c", "a"]))
    result = build_interactions(pa.chunked_array([first, second]), pa.array([1, 2, 1, 3, 2]))
    assert as_dict(result) == {("b", 1): 2.0, ("a", 2): 1.0, ("a", 3): 1.0, ("c", 2): 1.0}


def test_empty_input_is_a_clear_error():
    with pytest.raises(WorkerError, match="no interactions left"):
        MatrixBuilder().build()


@pytest.mark.parametrize(
    "weighting,alpha,expected",
    [
        ("none", 4.0, lambda r: np.full_like(r, 5.0)),
        ("linear", 2.0, lambda r: 1 + 2.0 * r),
        ("log", 3.0, lambda r: 1 + 3.0 * np.log1p(r)),
    ],
)
def test_confidence_formulas(weighting, alpha, expected):
    raw = scipy.sparse.random(30, 20, density=0.3, format="csr", dtype=np.float32, random_state=2)
    raw.data *= 10
    result = confidence(raw, weighting, alpha)
    np.testing.assert_allclose(result.data, expected(raw.data), rtol=1e-6)
    assert (result.indices == raw.indices).all() and result.shape == raw.shape


def test_bm25_matches_the_textbook_formula():
    dense = np.array([[3, 0, 1], [0, 2, 0], [5, 1, 1], [1, 0, 0]], dtype=np.float32)
    raw = scipy.sparse.csr_matrix(dense)
    k1, b = 100.0, 0.8
    idf = np.maximum(np.log(4) - np.log1p((dense > 0).sum(axis=0)), 0)
    lengths = dense.sum(axis=1)
    norm = (1 - b) + b * lengths / lengths.mean()
    expected = dense * (k1 + 1) / (k1 * norm[:, None] + dense) * idf[None, :]
    got = scipy.sparse.csr_matrix((bm25(raw, k1, b), raw.indices, raw.indptr), shape=raw.shape).toarray()
    np.testing.assert_allclose(got, np.where(dense > 0, expected, 0), rtol=1e-5)
    assert confidence(raw).data.min() >= 1.0


def test_bad_weighting_and_alpha():
    raw = scipy.sparse.csr_matrix(np.eye(3, dtype=np.float32))
    with pytest.raises(WorkerError, match="unknown weighting"):
        confidence(raw, "sqrt")
    with pytest.raises(WorkerError, match="--alpha"):
        confidence(raw, "log", -1)
