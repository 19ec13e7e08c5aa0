"""Early stopping (train.fit + early_stop.py), warm starts, and the settings search (tune.py, on by
default), on the CPU for real and on the GPU path through test_worker_train's stand-in for implicit's GPU model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards
from airflow_gpu.worker import models, regularization, tune
from airflow_gpu.worker.__main__ import main
from airflow_gpu.worker.early_stop import NO_LOSS, OFF, REACHED_MAXIMUM, LossPlateau
from airflow_gpu.worker.evaluate import holdout_split
from airflow_gpu.worker.matrix import build_interactions, confidence
from airflow_gpu.worker.train import TrainParams, fit
from airflow_gpu.worker.tune import DEFAULT, OutOfTime, Setting, search
from tests.support.train_testing import FakeGpuAls, data


@pytest.fixture
def fake_gpu(monkeypatch):
    FakeGpuAls.instances.clear()
    monkeypatch.setattr(models, "_gpu_als_class", lambda: FakeGpuAls)
    monkeypatch.setattr(models, "_compute_capability", lambda: (9, 0))
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
    fixed = fit(
        weighted, TrainParams(factors=8, iterations=stopped.iterations_run, device=device, threads=1, early_stop=0)
    )
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


def test_warm_start_begins_from_the_given_fit_and_leaves_its_factors_alone():
    weighted = confidence(data())
    params = TrainParams(factors=8, iterations=30, device="cpu", threads=1, early_stop=1e-4)
    converged = fit(weighted, params)
    before = converged.item_factors().copy()
    cold = fit(weighted, replace(params, iterations=1, early_stop=0))
    warm = fit(weighted, replace(params, iterations=1, early_stop=0), start=converged)
    assert warm.warm_start and not cold.warm_start
    # One iteration from the converged factors lands at (about) the converged loss; from random ones, far above it.
    assert warm.loss[0] == pytest.approx(converged.loss[-1], rel=1e-3)
    assert converged.loss[-1] < cold.loss[0] / 1.05
    np.testing.assert_array_equal(converged.item_factors(), before)
    # A fit of another shape cannot start from it: it starts as usual.
    assert not fit(confidence(data()[:150]), replace(params, iterations=1), start=converged).warm_start


def _per_user(precision: float, users: int = 400) -> np.ndarray:
    """Per-user precisions with the given mean and a little spread (the same spread for every point)."""
    return precision + np.tile([-0.01, 0.01], users // 2)


def test_search_scores_the_default_first_then_walks_its_shares_then_the_weightings_warm_from_the_best():
    table = {
        ("bm25", 0.05): 0.14,
        ("bm25", 0.1): 0.15,
        ("bm25", 0.2): 0.10,
        ("bm25", 0.3): 0.09,
        ("log", 0.05): 0.20,
        ("log", 0.1): 0.17,
        ("none", 0.05): 0.11,
    }
    calls = []

    def score(point: Setting, start: Setting | None) -> np.ndarray:
        calls.append((point.label, start and start.label))
        return _per_user(table.get((point.weighting, point.share), 0.05))

    best = search(score)
    assert best == Setting("log", tune.ALPHAS["log"], 0.05)
    assert calls == [
        ("bm25:0.5:x0.2", None),  # the default, cold: the baseline every other point is measured from
        ("bm25:0.5:x0.1", "bm25:0.5:x0.2"),  # down a share: a clear win...
        ("bm25:0.5:x0.05", "bm25:0.5:x0.1"),  # ... so on down; no better: the walk up is skipped
        ("log:2:x0.1", "bm25:0.5:x0.1"),  # the other weightings at the best share
        ("log:2:x0.05", "log:2:x0.1"),  # log won: its shares in turn (x0.1 is known: the walk ends)
        ("none:10:x0.05", "log:2:x0.05"),
    ]


def test_never_worse_the_default_stays_unless_a_point_beats_it_beyond_noise_and_by_a_clear_margin():
    rng = np.random.default_rng(0)
    incumbent = rng.integers(0, 4, 2_000) / 10  # per-user precision@10 of 2,000 users
    noise = rng.choice([-0.1, 0.0, 0.1], 2_000)  # each user gains or loses one hit at random
    assert not tune.beats(incumbent + noise + 0.004, incumbent)  # a mean gain inside the noise
    assert not tune.beats(incumbent + 0.005, incumbent)  # certain, but 3% (less than MIN_GAIN)
    assert tune.beats(incumbent + noise + 0.03, incumbent)  # 20%, many standard errors
    assert not tune.beats(incumbent, incumbent)
    # Every challenger a little better (4%, no noise at all), or much better in mean but buried in noise:
    # the search keeps the default.
    assert search(lambda point, start: _per_user(0.100 if point == DEFAULT else 0.104)) == DEFAULT
    spread = np.tile([-0.3, 0.3], 5)
    assert search(lambda point, start: 0.3 + (0 if point == DEFAULT else 0.05) + spread * (point != DEFAULT)) == DEFAULT


def test_the_search_ends_when_its_clock_says_so_and_keeps_the_best_so_far():
    calls = []

    def score(point: Setting, start: Setting | None) -> np.ndarray:
        calls.append(point)
        return _per_user(0.2 if point.share == 0.1 else 0.1)

    def before_each() -> None:
        if len(calls) == 2:
            raise OutOfTime

    assert search(score, before_each) == Setting("bm25", 0.5, 0.1)  # the win before time ran out stands
    assert [point.label for point in calls] == ["bm25:0.5:x0.2", "bm25:0.5:x0.1"]


def _matrix(events: int, users: int, items: int, seed: int = 3):
    table = synthetic_interactions(events, n_users=users, n_items=items, seed=seed)
    return build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix


def test_the_sample_scales_with_the_data_the_budget_or_the_validation_pairs_it_needs():
    def expected(matrix, budget: float) -> tuple[int, int, int]:
        active = np.count_nonzero(np.diff(matrix.indptr))
        by_budget = int(np.ceil(active * budget / tune.SAMPLE_FITS))
        by_pairs = int(np.ceil(tune.MIN_VALIDATION_PAIRS / (tune.VALIDATION_SHARE * matrix.nnz / active)))
        return active, by_budget, by_pairs

    many = scipy.sparse.random(100_000, 500, density=0.04, format="csr", random_state=0)  # 20 pairs per user
    _, by_budget, by_pairs = expected(many, 0.25)
    assert len(tune.sample_users(many, 0.25, 0)) == by_budget > by_pairs  # a share of the users...
    assert len(tune.sample_users(many, 0.5, 0)) == expected(many, 0.5)[1] > by_budget  # ... that follows the budget
    sparse = scipy.sparse.random(60_000, 500, density=0.01, format="csr", random_state=0)  # 5 pairs per user
    _, by_budget, by_pairs = expected(sparse, 0.25)
    assert len(tune.sample_users(sparse, 0.25, 0)) == by_pairs > by_budget  # enough validation pairs
    # Small data with many pairs per user: the validation pairs it needs, not a fixed count of users.
    dense = scipy.sparse.random(2_000, 500, density=0.2, format="csr", random_state=0)  # 100 pairs per user
    assert len(tune.sample_users(dense, 0.25, 0)) == expected(dense, 0.25)[2] == 500
    tiny = scipy.sparse.random(300, 50, density=0.1, format="csr", random_state=0)
    assert len(tune.sample_users(tiny, 0.25, 0)) == np.count_nonzero(np.diff(tiny.indptr))  # all of them


def test_tune_stops_at_its_time_budget_says_so_and_keeps_the_default(monkeypatch, caplog):
    monkeypatch.setattr(tune, "MIN_SECONDS", 0.0)  # so that the share alone sets the budget
    matrix = _matrix(30_000, 1_500, 300)
    params = TrainParams(factors=8, iterations=20, device="cpu", threads=1)
    with caplog.at_level("INFO", logger="airflow_gpu.worker"):
        # A budget of 1% of the estimated fit: less than the default's own fit on the sample.
        result = tune.tune(matrix, params, budget=0.01)
    assert result.stopped_by_budget and [row["setting"] for row in result.grid] == [DEFAULT.label]
    assert result.choice == DEFAULT and result.gain_over_default == 0
    assert result.budget_seconds == pytest.approx(0.01 * result.estimated_fit_seconds)
    assert result.budget_seconds < result.seconds
    assert "tune: stopped after 1 fit(s): the next would pass the budget" in caplog.text
    assert result.as_dict()["stopped_by_budget"] is True


def test_tune_starts_no_fit_that_its_clock_says_would_end_past_the_budget(monkeypatch):
    now = [0.0]
    real_fit = tune.fit

    def slow_fit(*args, **kwargs):
        now[0] += 2.0  # on the search's clock, every candidate's fit takes 2 s
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(tune, "fit", slow_fit)
    matrix = _matrix(30_000, 1_500, 300)
    result = tune.tune(
        matrix, TrainParams(factors=8, iterations=20, device="cpu", threads=1), budget=0.25, clock=lambda: now[0]
    )
    # The real fits are far shorter than MIN_SECONDS (5 s), so that is the budget: after 2 fits (4 s), a
    # third would end at 6 s. The search stops there, within its budget, and says it stopped.
    assert result.budget_seconds == tune.MIN_SECONDS and result.stopped_by_budget
    assert [row["seconds"] for row in result.grid] == [2.0, 2.0] and result.seconds == 4.0


def test_each_candidate_stops_on_its_own_plateau_even_when_the_final_fit_does_not_stop_early():
    matrix = _matrix(60_000, 3_000, 400)
    params = TrainParams(factors=8, iterations=60, device="cpu", threads=1, early_stop=0, loss=False)
    result = tune.tune(matrix, params, budget=1.0)
    assert len(result.grid) >= 4 and not result.stopped_by_budget
    assert all(row["iterations"] < 60 and row["stop_reason"].startswith("converged") for row in result.grid)
    assert [row["warm_start"] for row in result.grid] == [False] + [True] * (len(result.grid) - 1)
    # Warm from the best so far, a candidate needs fewer iterations than the cold default.
    assert max(row["iterations"] for row in result.grid[1:]) < result.grid[0]["iterations"]


def test_tune_samples_users_validates_inside_the_training_matrix_and_records_every_point(monkeypatch):
    monkeypatch.setattr(tune, "MIN_VALIDATION_PAIRS", 1_000)  # lowered, so that a sample is drawn
    matrix = _matrix(60_000, 3_000, 400)
    result = tune.tune(matrix, TrainParams(factors=8, iterations=6, device="cpu", threads=1), budget=0.5)
    assert result.sample_users == len(tune.sample_users(matrix, 0.5, 0)) < 3_000
    assert result.sample_interactions + result.validation_interactions < matrix.nnz
    assert [row["setting"] for row in result.grid][:2] == [DEFAULT.label, "bm25:0.5:x0.1"]  # then as x0.1 fared
    scores = {row["setting"]: row["precision_at_10"] for row in result.grid}
    assert result.choice == DEFAULT or scores[result.choice.label] > scores[DEFAULT.label] * (1 + tune.MIN_GAIN)
    document = json.loads(json.dumps(result.as_dict()))
    assert document["choice"]["label"] == result.choice.label and document["metric"] == "precision_at_10"
    assert document["searched"] == [row["setting"] for row in result.grid]
    assert document["default_precision_at_10"] == scores[DEFAULT.label]
    assert document["choice_precision_at_10"] == scores[result.choice.label]
    assert document["gain_over_default"] == pytest.approx(
        scores[result.choice.label] / scores[DEFAULT.label] - 1, abs=1e-4
    )
    assert all("against" in row and "z" in row for row in document["grid"][1:])
    # Each candidate ranks items for at most MAX_VALIDATION_USERS of the sample's users.
    monkeypatch.setattr(tune, "MAX_VALIDATION_USERS", 100)
    capped = tune.tune(matrix, TrainParams(factors=8, iterations=6, device="cpu", threads=1), budget=0.5)
    assert capped.validation_users == 100 < result.validation_users


@pytest.fixture
def shards(tmp_path) -> Path:
    table = synthetic_interactions(30_000, n_users=1_200, n_items=250, seed=6)
    write_shards(table, tmp_path / "in", "parquet", objects=2)
    return tmp_path / "in"


def _run(tmp_path: Path, shards: Path, *extra: str, quiet: bool = True) -> tuple[dict, dict]:
    out = tmp_path / "out"
    assert (
        main(
            ["-q"] * quiet
            + [
                "als",
                "--input",
                str(shards),
                "--output",
                str(out),
                "--weight-col",
                "plays",
                "--factors",
                "8",
                "--iterations",
                "40",
                "--eval-holdout",
                "0.2",
                "--similar-n",
                "0",
                "--threads",
                "1",
                *extra,
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = json.loads((out / manifest["metrics"]).read_text())
    return manifest, metrics


def test_pipeline_tunes_by_default_on_the_training_split_only_and_trains_with_the_winner(tmp_path, shards, monkeypatch):
    from airflow_gpu.worker import stages

    seen = {}
    real_tune, real_fit = stages.tune, stages.fit

    def spy_tune(matrix, params, budget):
        seen["tuned_on"] = matrix.copy()
        return real_tune(matrix, params, budget)

    def spy_fit(weighted, params):
        seen["final"] = (weighted.copy(), params)
        return real_fit(weighted, params)

    monkeypatch.setattr(stages, "tune", spy_tune)
    monkeypatch.setattr(stages, "fit", spy_fit)
    manifest, metrics = _run(tmp_path, shards)  # no flag: the search is on by default

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
    assert tuning["searched"][0] == DEFAULT.label and len(tuning["grid"]) >= 3 and tuning["share_of_training"] > 0
    weighted, params = seen["final"]
    expected = confidence(tuned_on, choice.weighting, choice.alpha)
    np.testing.assert_allclose(weighted.toarray(), expected.toarray(), rtol=1e-6)
    assert params.regularization == pytest.approx(
        choice.share * regularization.largest_singular_value(expected, seed=0), rel=1e-6
    )
    assert metrics["training"]["weighting"] == choice.weighting and metrics["training"]["alpha"] == choice.alpha
    summary = manifest["summary"]
    tuned = summary["tuned"]
    assert (
        tuned["choice"] == choice.label and tuned["points"] == len(tuning["grid"]) and tuned["default"] == DEFAULT.label
    )
    assert tuned["searched"] == tuning["searched"] and tuned["share_of_training"] == tuning["share_of_training"] > 0
    assert tuned["gain_over_default"] == tuning["gain_over_default"] >= 0
    assert tuned["precision_at_10"] == tuning["choice_precision_at_10"] and tuned["stopped_by_budget"] is False
    assert summary["iterations_run"] == metrics["training"]["iterations_run"] < 40
    assert summary["stop_reason"].startswith("converged")
    assert summary["pairs"] == metrics["counts"]["pairs"] < summary["interactions"] == 30_000
    report = (tmp_path / "out" / manifest["report"]).read_text()
    assert "Tuning" in report and choice.label in report and "stopped after" in report
    assert f"{len(tuning['grid'])} points searched" in report and "standard errors" in report


def test_cli_no_tune_and_explicit_settings_skip_the_search_and_say_so(tmp_path, shards, caplog):
    _, metrics = _run(tmp_path, shards, "--no-tune")
    assert metrics["tuning"] is None and metrics["training"]["weighting"] == "bm25"
    for flags, weighting in (
        (("--weighting", "log"), "log"),
        (("--alpha", "0.7"), "bm25"),
        (("--regularization", "0.5"), "bm25"),
    ):
        caplog.clear()
        with caplog.at_level("INFO", logger="airflow_gpu.worker"):
            _, metrics = _run(tmp_path, shards, *flags, quiet=False)
        assert metrics["tuning"] is None and metrics["training"]["weighting"] == weighting
        assert f"tune: skipped: {flags[0]} given, and used as given" in caplog.text
    manifest, metrics = _run(tmp_path, shards, "--no-tune", "--early-stop", "0")
    assert metrics["training"]["iterations_run"] == 40 and metrics["training"]["stop_reason"] == OFF
    assert "The loss had plateaued by iteration" in (tmp_path / "out" / manifest["report"]).read_text()
