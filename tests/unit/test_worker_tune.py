"""Early stopping (train.fit + early_stop.py) and the settings search (tune.py), on the CPU for real
and on the GPU path through test_worker_train's stand-in for implicit's GPU model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards
from airflow_gpu.worker import train, tune
from airflow_gpu.worker.__main__ import main
from airflow_gpu.worker.early_stop import NO_LOSS, OFF, REACHED_MAXIMUM, LossPlateau
from airflow_gpu.worker.evaluate import holdout_split
from airflow_gpu.worker.matrix import build_interactions, confidence
from airflow_gpu.worker.train import TrainParams, fit
from airflow_gpu.worker.tune import DEFAULT, POINTS, Setting, search
from tests.support.train_testing import FakeGpuAls, data


@pytest.fixture
def fake_gpu(monkeypatch):
    FakeGpuAls.instances.clear()
    monkeypatch.setattr(train, "_gpu_als_class", lambda: FakeGpuAls)
    monkeypatch.setattr(train, "_compute_capability", lambda: (9, 0))
    return FakeGpuAls


def test_plateau_needs_patience_small_steps_in_a_row_and_a_rise_counts_as_none():
    plateau = LossPlateau(tolerance=0.01, patience=2)
    # 10% step, one small step (0.5%), then a big drop again: the count starts over.
    assert [plateau.update(x) for x in (1.0, 0.9, 0.8955, 0.80)] == [None] * 4
    assert plateau.update(0.7999) is None  # first small step
    assert plateau.update(0.81) is not None  # a rise is no improvement: second in a row
    assert LossPlateau(0.01, 1).update(None) is None


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_early_stop_ends_the_fit_and_keeps_that_iterations_factors(device, request):
    if device == "gpu":
        request.getfixturevalue("fake_gpu")
    weighted = confidence(data())
    stopped = fit(weighted, TrainParams(factors=8, iterations=60, device=device, threads=1, early_stop=1e-3))
    assert stopped.device == device
    assert 2 < stopped.iterations_run < 60 and stopped.stop_reason.startswith("converged")
    assert len(stopped.loss) == stopped.iterations_run
    # The factors are those of a fit that ran exactly that many iterations (same seed, one thread).
    fixed = fit(weighted, TrainParams(factors=8, iterations=stopped.iterations_run, device=device, threads=1,
                                      early_stop=0))
    assert fixed.stop_reason == OFF and fixed.iterations_run == stopped.iterations_run
    np.testing.assert_allclose(stopped.user_factors(), fixed.user_factors(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stopped.item_factors(), fixed.item_factors(), rtol=1e-5, atol=1e-6)


def test_without_loss_or_with_early_stop_off_every_iteration_runs_and_says_why():
    weighted = confidence(data())
    no_loss = fit(weighted, TrainParams(factors=8, iterations=12, device="cpu", threads=1, loss=False))
    assert no_loss.iterations_run == 12 and no_loss.stop_reason == NO_LOSS
    off = fit(weighted, TrainParams(factors=8, iterations=12, device="cpu", threads=1, early_stop=0))
    assert off.iterations_run == 12 and off.stop_reason == OFF
    short = fit(weighted, TrainParams(factors=8, iterations=2, device="cpu", threads=1))
    assert short.iterations_run == 2 and short.stop_reason == REACHED_MAXIMUM


def test_search_finds_the_best_reachable_point_in_six_fits_and_ties_keep_the_default():
    table = {("bm25", 0.05): 0.10, ("bm25", 0.1): 0.11, ("bm25", 0.2): 0.12, ("bm25", 0.3): 0.115,
             ("log", 0.05): 0.13, ("log", 0.1): 0.16, ("log", 0.2): 0.14, ("log", 0.3): 0.12,
             ("none", 0.2): 0.09}
    calls = []

    def score(point: Setting) -> float:
        calls.append(point)
        return table.get((point.weighting, point.share), 0.0)

    best = search(score)
    assert (best.weighting, best.share, best.alpha) == ("log", 0.1, tune.ALPHAS["log"])
    assert len(calls) == len(set(calls)) == POINTS == 6
    calls.clear()
    assert search(lambda point: calls.append(point) or 0.5) == DEFAULT


def test_a_challenger_must_beat_the_best_by_more_than_the_paired_noise():
    rng = np.random.default_rng(0)
    incumbent = rng.integers(0, 4, 2_000) / 10  # per-user precision@10 of 2,000 users
    noise = rng.choice([-0.1, 0.0, 0.1], 2_000)  # each user gains or loses one hit at random
    assert not tune.beats(incumbent + noise + 0.001, incumbent)  # a mean gain far inside the noise
    assert tune.beats(incumbent + noise + 0.02, incumbent)
    assert not tune.beats(incumbent, incumbent) and tune.beats(0.2, 0.1)


def test_tune_samples_users_validates_inside_the_training_matrix_and_records_every_point(monkeypatch):
    monkeypatch.setattr(tune, "MIN_USERS", 1_000)  # the floor, lowered so that 3,000 users get sampled
    table = synthetic_interactions(60_000, n_users=3_000, n_items=400, seed=3)
    matrix = build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix
    result = tune.tune(matrix, TrainParams(factors=8, iterations=6, device="cpu", threads=1), budget=0.25)
    assert result.sample_users == max(tune.MIN_USERS, int(np.ceil(3_000 * 0.25 / POINTS))) < 3_000
    assert result.sample_interactions + result.validation_interactions < matrix.nnz
    assert [row["setting"] for row in result.grid][:3] == [DEFAULT.label, "log:2:x0.2", "none:10:x0.2"]
    assert len(result.grid) == POINTS
    scores = {row["setting"]: row["precision_at_10"] for row in result.grid}
    assert result.choice == DEFAULT or scores[result.choice.label] > scores[DEFAULT.label]
    document = json.loads(json.dumps(result.as_dict()))
    assert document["choice"]["label"] == result.choice.label and document["metric"] == "precision_at_10"


@pytest.fixture
def shards(tmp_path) -> Path:
    table = synthetic_interactions(30_000, n_users=1_200, n_items=250, seed=6)
    write_shards(table, tmp_path / "in", "parquet", objects=2)
    return tmp_path / "in"


def _run(tmp_path: Path, shards: Path, *extra: str) -> tuple[dict, dict]:
    out = tmp_path / "out"
    assert main(["-q", "als", "--input", str(shards), "--output", str(out), "--weight-col", "plays", "--factors", "8",
                 "--iterations", "40", "--eval-holdout", "0.2", "--similar-n", "0", "--threads", "1", *extra]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = json.loads((out / manifest["metrics"]).read_text())
    return manifest, metrics


def test_pipeline_tunes_on_the_training_split_only_and_trains_with_the_winner(tmp_path, shards, monkeypatch):
    from airflow_gpu.worker import pipeline

    seen = {}
    real_tune, real_fit = pipeline.tune, pipeline.fit

    def spy_tune(matrix, params, budget):
        seen["tuned_on"] = matrix.copy()
        return real_tune(matrix, params, budget)

    def spy_fit(weighted, params):
        seen["final"] = (weighted.copy(), params)
        return real_fit(weighted, params)

    monkeypatch.setattr(pipeline, "tune", spy_tune)
    monkeypatch.setattr(pipeline, "fit", spy_fit)
    manifest, metrics = _run(tmp_path, shards, "--tune")

    # The matrix the search saw is exactly the training side of the evaluation split.
    table = synthetic_interactions(30_000, n_users=1_200, n_items=250, seed=6)
    whole = build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix
    train_part, test_part = holdout_split(whole, 0.2, 0)
    tuned_on = seen["tuned_on"]
    assert tuned_on.nnz == train_part.nnz and test_part.nnz > 0
    held = set(zip(*test_part.nonzero()))
    assert not held & set(zip(*tuned_on.nonzero()))

    tuning = metrics["tuning"]
    choice = tune.Setting(tuning["choice"]["weighting"], tuning["choice"]["alpha"], tuning["choice"]["share"])
    assert len(tuning["grid"]) == POINTS and tuning["share_of_training"] > 0
    weighted, params = seen["final"]
    expected = confidence(tuned_on, choice.weighting, choice.alpha)
    np.testing.assert_allclose(weighted.toarray(), expected.toarray(), rtol=1e-6)
    assert params.regularization == pytest.approx(choice.share * train.largest_singular_value(expected, seed=0), rel=1e-6)
    assert metrics["training"]["weighting"] == choice.weighting and metrics["training"]["alpha"] == choice.alpha
    summary = manifest["summary"]
    assert summary["tuned"]["choice"] == choice.label and summary["tuned"]["points"] == POINTS
    assert summary["iterations_run"] == metrics["training"]["iterations_run"] < 40
    assert summary["stop_reason"].startswith("converged")
    assert summary["pairs"] == metrics["counts"]["pairs"] < summary["interactions"] == 30_000
    report = (tmp_path / "out" / manifest["report"]).read_text()
    assert "Tuning" in report and choice.label in report and "stopped after" in report


def test_cli_no_tune_and_explicit_settings_skip_the_search(tmp_path, shards):
    _, metrics = _run(tmp_path, shards, "--no-tune")
    assert metrics["tuning"] is None and metrics["training"]["weighting"] == "bm25"
    _, metrics = _run(tmp_path, shards, "--tune", "--weighting", "log")
    assert metrics["tuning"] is None and metrics["training"]["weighting"] == "log"
    manifest, metrics = _run(tmp_path, shards, "--early-stop", "0")
    assert metrics["training"]["iterations_run"] == 40 and metrics["training"]["stop_reason"] == OFF
    assert "The loss had plateaued by iteration" in (tmp_path / "out" / manifest["report"]).read_text()
