"""report.html leads with its result: the headline (ALS against popularity on precision@10, the
lift, users, iterations, wall time) comes before anything else on the page; training time is
shown once; the per-iteration charts start at zero."""

from __future__ import annotations

import re

from airflow_gpu.worker.report import render


def _metrics() -> dict:
    return {
        "run_id": "r1",
        "total_seconds": 61.5,
        "training": {
            "device": "cpu",
            "iterations": 15,
            "iterations_run": 12,
            "seconds": 7.25,
            "iteration_seconds": [0.51, 0.5, 0.49, 0.5],
            "loss": [0.9, 0.7, 0.6, 0.55],
        },
        "stages": {"ingest": 3.0, "train": 7.9},
        "evaluation": {
            "k": 10,
            "users_evaluated": 2000,
            "holdout": 1,
            "als": {"precision_at_10": 0.0421, "map_at_10": 0.02, "ndcg_at_10": 0.05},
            "popularity": {"precision_at_10": 0.0105, "map_at_10": 0.01, "ndcg_at_10": 0.02},
        },
    }


def test_the_headline_comes_first_with_the_result():
    page = render(_metrics())
    headline = page.index("class=headline")
    assert headline < page.index("<h2>")  # before the first section
    text = re.sub("<[^>]+>", "", page[headline : page.index("</div>", headline)])
    assert "ALS precision@10 0.0421 against popularity's 0.0105: 4.01x the baseline" in text
    assert "2,000 held-out users" in text and "12 iterations" in text and "61.5 s wall time" in text


def test_a_run_without_evaluation_says_so_in_its_headline():
    metrics = {**_metrics(), "evaluation": None}
    assert "No held-out evaluation" in render(metrics)


def test_training_time_is_shown_once():
    page = render(_metrics())
    assert "7.9" in page  # the training stage, in "Time per stage"
    assert "7.25" not in page  # not a second, different figure in the training table


def test_the_seconds_per_iteration_axis_starts_at_zero():
    page = render(_metrics())
    chart = page[page.index("aria-label='seconds per iteration'") :]
    chart = chart[: chart.index("</svg>")]
    ticks = re.findall(r"text-anchor=end font-size=11 fill='#555'>([^<]+)<", chart)
    assert ticks[0] == "0"


def _headline_text(page: str) -> str:
    start = page.index("class=headline")
    return re.sub("<[^>]+>", "", page[start : page.index("</div>", start)])


def test_the_headline_carries_the_runs_estimated_cost():
    from airflow_gpu.worker.instance import Placement
    from airflow_gpu.worker.run_cost import estimate

    cost = estimate(Placement("p5.48xlarge", "on-demand"), run_s=3600, gpus=2)
    text = _headline_text(render({**_metrics(), "cost": cost}))
    assert "Estimated cost ~$13.76: 1 h 0 min on p5.48xlarge (on-demand), 2/8 of the instance at $55.04/h" in text
    assert text.index("ALS precision@10") < text.index("Estimated cost")  # the result first, then its price


def test_the_headline_says_cost_unknown_plainly_without_an_instance_to_ask():
    from airflow_gpu.worker.run_cost import run_cost

    cost = run_cost({"duration_s": 60.0, "gpus": []}, environ={})  # no Batch, no IMDS: nothing is asked
    text = _headline_text(render({**_metrics(), "cost": cost}))
    assert "Cost unknown: not on AWS Batch (no AWS_BATCH_JOB_ID), so no instance was asked." in text
    assert "$" not in text
