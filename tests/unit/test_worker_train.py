"""ALS training: the CPU for real, the GPU path through a stand-in for implicit's GPU model.

No GPU exists here, so only the GPU itself is replaced: ``FakeGpuAls`` behaves as
implicit.gpu.als.AlternatingLeastSquares does where it matters to us (its ``fit`` ignores
alpha, its factors are device matrices with ``to_numpy``), and computes with the CPU
solver. benchmarks/gpu_smoke.py runs the same checks on a real GPU.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse

from airflow_gpu.worker import models
from airflow_gpu.worker.errors import WorkerError
from airflow_gpu.worker.matrix import confidence
from airflow_gpu.worker.models import INT32_LIMIT, check_gpu_limits
from airflow_gpu.worker.recommend import similar_items, top_n
from airflow_gpu.worker.train import TrainParams, fit
from tests.support.train_testing import FakeGpuAls, data


@pytest.fixture
def fake_gpu(monkeypatch):
    FakeGpuAls.instances.clear()
    monkeypatch.setattr(models, "_gpu_als_class", lambda: FakeGpuAls)
    monkeypatch.setattr(models, "_compute_capability", lambda: (9, 0))
    return FakeGpuAls


def test_cpu_fit_logs_loss_and_time_per_iteration(caplog):
    caplog.set_level(logging.INFO, "airflow_gpu.worker")
    result = fit(confidence(data()), TrainParams(factors=8, iterations=4, device="cpu", threads=1))
    assert result.device == "cpu"
    assert len(result.loss) == 4 and all(isinstance(x, float) for x in result.loss)
    assert result.loss[-1] < result.loss[0]
    assert len(result.iteration_seconds) == 4
    assert sum("train: iteration" in r.message and "loss" in r.message for r in caplog.records) == 4
    assert result.user_factors().shape == (200, 8) and result.item_factors().shape == (80, 8)


def test_gpu_path_trains_on_the_confidence_matrix_with_alpha_one(fake_gpu):
    weighted = confidence(data(), "log", 7.0)
    gpu = fit(weighted, TrainParams(factors=8, iterations=3, device="gpu", seed=3))
    cpu = fit(weighted, TrainParams(factors=8, iterations=3, device="cpu", seed=3, threads=1))
    model = fake_gpu.instances[-1]
    assert gpu.device == "gpu" and model.alpha == 1.0
    # The GPU got the confidence itself, since its fit would ignore any alpha.
    assert (model.fitted_on != weighted).nnz == 0
    np.testing.assert_allclose(gpu.user_factors(), cpu.user_factors(), rtol=1e-5, atol=1e-6)
    users = np.arange(200, dtype=np.int32)
    raw = data()
    assert (top_n(gpu.model, raw, users, 5)[0] == top_n(cpu.model, raw, users, 5)[0]).all()


def test_auto_picks_the_gpu_when_implicit_sees_cuda(fake_gpu):
    assert models.resolve_device("auto") == "gpu"


def test_auto_falls_back_to_cpu_on_a_pre_ampere_gpu(fake_gpu, monkeypatch):
    monkeypatch.setattr(models, "_compute_capability", lambda: (7, 5))
    assert models.resolve_device("auto") == "cpu"
    with pytest.raises(WorkerError, match=r"compute capability 7\.5.*8\.0 or newer.*--device cpu"):
        models.resolve_device("gpu")


def test_gpu_requested_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(models, "_gpu_als_class", lambda: None)
    assert models.resolve_device("auto") == "cpu"
    with pytest.raises(WorkerError, match=r"--device gpu.*HAS_CUDA is False.*--device cpu"):
        fit(confidence(data()), TrainParams(factors=4, iterations=1, device="gpu"))


@pytest.mark.parametrize(
    "users,items,nnz,factors,fragment",
    [
        (25_000_000, 8_400_000, 10**9, 128, "users x factors = 25,000,000 x 128"),
        (1_000, 20_000_000, 10**6, 200, "items x factors = 20,000,000 x 200"),
        (1_000, 1_000, INT32_LIMIT, 8, "interactions = 2,147,483,648"),
    ],
)
def test_int32_guard_refuses_before_training(users, items, nnz, factors, fragment):
    with pytest.raises(WorkerError) as caught:
        check_gpu_limits(users, items, nnz, factors)
    message = str(caught.value)
    assert fragment in message and "2^31" in message and "--device cpu" in message
    if nnz < INT32_LIMIT:
        most = (INT32_LIMIT - 1) // max(users, items)
        assert f"--factors {most} or fewer" in message
        check_gpu_limits(users, items, nnz, most)  # the suggestion really fits


def test_guard_runs_before_the_gpu_model_is_built(fake_gpu):
    huge_factors = INT32_LIMIT // 200 + 1
    with pytest.raises(WorkerError, match="int32"):
        fit(confidence(data()), TrainParams(factors=huge_factors, iterations=1, device="gpu"))
    assert fake_gpu.instances == []


def test_similar_items_leave_the_item_itself_out():
    result = fit(confidence(data()), TrainParams(factors=8, iterations=3, device="cpu", threads=1))
    items = np.arange(80, dtype=np.int32)
    ids, scores = similar_items(result.model, items, 5)
    assert ids.shape == (80, 5)
    assert not (ids == items[:, None]).any()
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_bad_parameters():
    for params, flag in (
        (TrainParams(factors=0), "--factors"),
        (TrainParams(iterations=0), "--iterations"),
        (TrainParams(regularization=-1), "--regularization"),
        (TrainParams(device="tpu"), "--device"),
    ):
        with pytest.raises(WorkerError, match=flag):
            params.check()


def test_popularity_baseline_matches_a_full_ranking():
    from implicit.cpu.topk import topk

    from airflow_gpu.worker.recommend import popularity_top_n

    rng = np.random.default_rng(3)
    seen = scipy.sparse.random(300, 90, density=0.1, format="lil", dtype=np.float32, random_state=4)
    seen[5, :85] = 1.0  # a user who has seen almost everything takes the fallback path
    seen[6, :] = 1.0  # and one who has seen everything gets nothing
    seen = seen.tocsr()
    popularity = rng.permutation(90).astype(np.float32)  # distinct, so the ranking is unique
    users = np.arange(300, dtype=np.int32)
    ids, scores = popularity_top_n(popularity, seen, users, 10)
    full_ids, full_scores = topk(popularity.reshape(-1, 1), np.ones((300, 1), np.float32), 10, filter_query_items=seen)
    full_ids = np.where(np.asarray(full_scores) <= -1e30, -1, full_ids)
    assert (ids == full_ids).all()
    assert (ids[6] == -1).all() and (ids[5] >= 0).sum() == 5
    dense = seen.toarray() > 0
    assert not any(dense[u, i] for u in range(300) for i in ids[u] if i >= 0)


@pytest.mark.parametrize("n_items", [400, 2_000, 3_217])  # below and above the chunked fast path, ragged tail
def test_cpu_ranking_matches_implicits_topk(monkeypatch, n_items):
    from implicit.cpu.topk import topk

    from airflow_gpu.worker import recommend
    from airflow_gpu.worker.recommend import blocked_top_k

    monkeypatch.setattr(recommend, "_BLOCK_ELEMENTS", 50 * n_items)  # several blocks, run in threads
    rng = np.random.default_rng(8)
    users, items = (
        rng.standard_normal((700, 16)).astype(np.float32),
        rng.standard_normal((n_items, 16)).astype(np.float32),
    )
    seen = scipy.sparse.random(700, n_items, density=0.05, format="lil", dtype=np.float32, random_state=9)
    seen[3, : n_items - 4] = 1.0  # at most 4 unseen items: 6 slots stay empty
    seen[4, :] = 1.0  # nothing left to recommend
    seen[5, : n_items // 2] = 1.0  # half the chunks blanked: a tie on -inf among the chunk maxima
    seen = seen.tocsr()
    ids, scores = blocked_top_k(users, items, 10, seen=seen, threads=2)
    ref_ids, ref_scores = topk(items, users, 10, filter_query_items=seen, num_threads=1)
    ref_ids = np.where(ref_scores <= -1e30, -1, ref_ids)
    assert (ids == ref_ids).all()
    filled = ids >= 0
    np.testing.assert_allclose(scores[filled], ref_scores[filled], rtol=1e-5)
    assert (ids[3] >= 0).sum() == n_items - seen[3].nnz and (ids[4] == -1).all()


@pytest.mark.parametrize("skew", [0.0, 3.0])  # item norms equal-ish (most rows fall back) or heavy-tailed (most settle)
def test_cpu_ranking_by_the_norm_head_matches_implicits_topk(monkeypatch, skew):
    from implicit.cpu.topk import topk

    from airflow_gpu.worker import recommend
    from airflow_gpu.worker.recommend import blocked_top_k

    monkeypatch.setattr(recommend, "_BLOCK_ELEMENTS", 100 * 2_048)  # several blocks in both passes, run in threads
    rng = np.random.default_rng(12)
    n_items = 6_000  # head: 2,048 items
    users = rng.standard_normal((900, 16)).astype(np.float32)
    items = rng.standard_normal((n_items, 16)).astype(np.float32) * np.exp(
        skew * rng.standard_normal((n_items, 1))
    ).astype(np.float32)
    seen = scipy.sparse.random(900, n_items, density=0.01, format="lil", dtype=np.float32, random_state=13)
    by_norm = np.argsort(-np.linalg.norm(items, axis=1))
    seen[7, by_norm[:3_000]] = 1.0  # the whole head seen: this row must fall back
    seen[8, by_norm[:5]] = 1.0  # the very best items seen
    seen = seen.tocsr()
    settled = []
    original = recommend._norm_head
    monkeypatch.setattr(recommend, "_norm_head", lambda *a: settled.append(1) or original(*a))
    ids, scores = blocked_top_k(users, items, 10, seen=seen, threads=2)
    ref_ids, ref_scores = topk(items, users, 10, filter_query_items=seen, num_threads=1)
    assert settled, "the head pass did not run"
    assert (ids == ref_ids).all()
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    assert not set(ids[8]) & set(by_norm[:5])


@pytest.mark.parametrize("n_items", [300, 1_500])
def test_cpu_similar_items_match_implicits(n_items):
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=8)
    rng = np.random.default_rng(2)
    model.item_factors = rng.standard_normal((n_items, 8)).astype(np.float32)
    model.user_factors = rng.standard_normal((5, 8)).astype(np.float32)
    items = np.arange(n_items)
    ids, scores = similar_items(model, items, 7)
    ref_ids, ref_scores = model.similar_items(items, N=8)
    ref_ids, ref_scores = ref_ids[:, 1:], ref_scores[:, 1:]  # implicit's first hit is the item itself
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # Ids agree except where two scores tie to float precision and either order is right.
    tied = np.zeros_like(ids, dtype=bool)
    close = np.abs(np.diff(ref_scores, axis=1)) < 1e-5
    tied[:, :-1] |= close
    tied[:, 1:] |= close
    assert (ids[~tied] == ref_ids[~tied]).all()


def test_on_iteration_sees_every_iteration_as_recorded():
    seen = []
    params = TrainParams(
        factors=8,
        iterations=3,
        device="cpu",
        threads=1,
        on_iteration=lambda i, seconds, loss: seen.append((i, seconds, loss)),
    )
    result = fit(confidence(data()), params)
    assert [i for i, _, _ in seen] == [0, 1, 2]
    assert [s for _, s, _ in seen] == result.iteration_seconds
    assert [loss for _, _, loss in seen] == result.loss and all(isinstance(x, float) for x in result.loss)


def test_largest_singular_value_matches_a_dense_svd_whole_and_sampled():
    from airflow_gpu.worker.regularization import largest_singular_value

    rng = np.random.default_rng(5)
    # Rows of a low-rank pattern plus noise, so sigma_1 is well separated, as in real data.
    pattern = rng.random((6, 300)) < 0.2
    rows = pattern[rng.integers(0, 6, 20_000)] & (rng.random((20_000, 300)) < 0.5)
    matrix = scipy.sparse.csr_matrix(rows.astype(np.float32) * rng.integers(1, 5, rows.shape).astype(np.float32))
    exact = np.linalg.svd(matrix.toarray(), compute_uv=False)[0]
    assert largest_singular_value(matrix) == pytest.approx(exact, rel=1e-3)
    # A sample of about a sixth of the rows, scaled back up.
    assert largest_singular_value(matrix, max_nnz=matrix.nnz // 6, seed=1) == pytest.approx(exact, rel=0.03)
    assert largest_singular_value(scipy.sparse.csr_matrix((3, 4), dtype=np.float32)) == 0.0


def test_regularization_is_scaled_to_the_data_unless_given(caplog):
    from airflow_gpu.worker.regularization import AUTO_REGULARIZATION_SHARE, largest_singular_value

    caplog.set_level(logging.INFO, "airflow_gpu.worker")
    weighted = confidence(data())
    auto = fit(weighted, TrainParams(factors=8, iterations=1, device="cpu", threads=1))
    sigma = largest_singular_value(weighted)
    assert auto.regularization == pytest.approx(AUTO_REGULARIZATION_SHARE * sigma, rel=1e-6)
    assert auto.model.regularization == pytest.approx(auto.regularization)
    assert any("regularization" in r.message and "auto" in r.message for r in caplog.records)
    # Twice the confidence, twice the regularization: the rule has no scale of its own.
    doubled = weighted.copy()
    doubled.data *= 2
    assert fit(doubled, TrainParams(factors=8, iterations=1, device="cpu", threads=1)).regularization == pytest.approx(
        2 * auto.regularization, rel=1e-4
    )
    fixed = fit(weighted, TrainParams(factors=8, iterations=1, regularization=3.5, device="cpu", threads=1))
    assert fixed.regularization == 3.5 and fixed.model.regularization == 3.5


def test_cli_regularization_is_auto_or_a_number(capsys):
    from airflow_gpu.worker.__main__ import build_parser

    parser = build_parser()
    base = ["als", "--input", "in", "--output", "out"]
    assert parser.parse_args(base).regularization is None
    assert parser.parse_args(base + ["--regularization", "AUTO"]).regularization is None
    assert parser.parse_args(base + ["--regularization", "12.5"]).regularization == 12.5
    for bad in ("-1", "lots", "nan"):
        with pytest.raises(SystemExit):
            parser.parse_args(base + ["--regularization", bad])
        assert "must be auto or a number >= 0" in capsys.readouterr().err


def test_pipeline_records_the_trained_regularization_and_keeps_the_callback_out_of_its_files(tmp_path):
    import json

    from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards
    from airflow_gpu.worker.config import AlsConfig
    from airflow_gpu.worker.ingest import Columns
    from airflow_gpu.worker.pipeline import run_als

    write_shards(synthetic_interactions(20_000, n_users=800, n_items=200, seed=2), tmp_path / "in", objects=2)
    calls = []
    config = AlsConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        columns=Columns(weight="plays"),
        train=TrainParams(factors=8, iterations=3, on_iteration=lambda *args: calls.append(args)),
        similar_n=0,
        write_factors=False,
        eval_holdout=0.2,
    )
    run = run_als(config)
    assert len(calls) == 3
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    metrics = json.loads((tmp_path / "out" / manifest["metrics"]).read_text())
    assert run.training.regularization > 0
    assert metrics["training"]["regularization"] == pytest.approx(run.training.regularization)
    assert metrics["training"]["regularization_auto"] is True
    assert manifest["params"]["train"]["regularization"] is None and "on_iteration" not in manifest["params"]["train"]
    evaluation = metrics["evaluation"]
    assert evaluation["als"]["precision_at_10"] > evaluation["popularity"]["precision_at_10"]


def test_the_weighting_help_names_exactly_the_accepted_choices():
    from airflow_gpu.worker.__main__ import build_parser
    from airflow_gpu.worker.matrix import WEIGHTINGS

    als = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith(" als"))
    weighting = next(a for a in als._actions if "--weighting" in a.option_strings)
    listed = weighting.help.split(":", 1)[1].split("(")[0]
    assert [name.strip() for name in listed.split(",")] == list(weighting.choices) == list(WEIGHTINGS)


def test_quiet_and_the_s3_options_are_defined_once_and_work_everywhere():
    from pathlib import Path

    from airflow_gpu.worker.__main__ import build_parser

    parser = build_parser()
    assert parser.parse_args(["-q", "als", "--input", "i", "--output", "o"]).quiet is True
    assert parser.parse_args(["als", "-q", "--input", "i", "--output", "o"]).quiet is True
    assert getattr(parser.parse_args(["als", "--input", "i", "--output", "o"]), "quiet", False) is False
    script = parser.parse_args(
        ["run-script", "--script", "s.py", "--output", "o", "--endpoint-url", "http://x", "--concurrency", "3"]
    )
    assert (script.endpoint_url, script.concurrency, getattr(script, "quiet", False)) == ("http://x", 3, False)
    source = (Path(__file__).resolve().parents[2] / "airflow_gpu" / "worker" / "__main__.py").read_text()
    assert (
        source.count('"--quiet"') == 1
        and source.count('"--endpoint-url"') == 1
        and source.count('"--concurrency"') == 1
    )
