"""report.html's new parts from metrics alone: the job, the GPU, the notes on stopping, the spread of pairs.
(tests/integration/test_worker_report_browser.py renders a real run's report in Chromium.)"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import scipy.sparse

from airflow_gpu.worker.report import render
from airflow_gpu.worker.report_data import distribution, distributions
from airflow_gpu.worker.run_info import job_context

STARTED = datetime(2026, 12, 1, 12, 0, 30, tzinfo=timezone.utc)


def test_job_context_reads_batchs_variables_and_the_submit_time_when_given():
    env = {
        "AWS_BATCH_JOB_ID": "abc-123",
        "AWS_BATCH_JQ_NAME": "gpu-queue",
        "AWS_BATCH_JOB_ATTEMPT": "2",
        "AIRFLOW_GPU_SUBMITTED_AT": "2026-12-01T12:00:00Z",
        "AWS_SECRET_ACCESS_KEY": "never-this",
    }
    context = job_context(STARTED, env)
    assert context["job_id"] == "abc-123" and context["backend"] == "aws_batch" and context["queue"] == "gpu-queue"
    assert context["queue_wait_seconds"] == 30.0 and context["attempt"] == "2"
    assert "never-this" not in repr(context)
    assert job_context(STARTED, {"AIRFLOW_GPU_JOB_ID": "local-7"}) == {
        "job_id": "local-7",
        "backend": "local",
        "queue_wait_seconds": None,
    }
    assert job_context(STARTED, {"AIRFLOW_GPU_SUBMITTED_AT": "not a time"})["queue_wait_seconds"] is None


def _metrics(**training) -> dict:
    return {
        "run_id": "r1",
        "total_seconds": 61.5,
        "training": {"device": "gpu", "iterations": 15, **training},
        "job": job_context(STARTED, {"AWS_BATCH_JOB_ID": "abc-123", "AIRFLOW_GPU_SUBMITTED_AT": "1796126400"}),
        "gpu": {"name": "NVIDIA H200", "memory_bytes": 150 * 2**30, "compute_capability": "9.0"},
    }


def test_report_shows_the_job_its_wait_and_the_gpu():
    page = render(_metrics())
    assert "abc-123" in page and "61.5 s" in page and "queue wait" in page
    assert "NVIDIA H200, 150.0 GiB, compute capability 9.0" in page
    assert "not known" in render({"training": {"device": "cpu"}, "job": job_context(STARTED, {})})


def test_report_notes_an_early_stop_and_a_plateau_that_ran_on():
    stopped = render(_metrics(iterations_run=8, stop_reason="converged: the loss improved by less than 0.001"))
    assert "class=note>Training stopped after 8 of at most 15 iterations" in stopped
    flat = [1.0, 0.5, 0.3, 0.29999, 0.299989, 0.299988, 0.299987]
    ran_on = render(_metrics(iterations_run=7, iterations=7, loss=flat))
    assert "class=note>The loss had plateaued by iteration 5 of 7" in ran_on
    falling = [1.0, 0.8, 0.6, 0.45, 0.35]
    assert "class=note" not in render(_metrics(iterations_run=5, iterations=5, loss=falling))


def test_pair_distributions_count_distinct_pairs_in_power_of_two_bins():
    matrix = scipy.sparse.csr_matrix(np.array([[3, 1, 0, 0], [0, 2, 0, 0], [1, 1, 1, 1]], dtype=np.float32))
    spread = distributions(matrix)
    assert [b["count"] for b in spread["pairs_per_user"]["bins"]] == [1, 1, 1]  # 1 | 2-3 | 4-7 items
    assert spread["pairs_per_item"]["max"] == 3 and spread["pairs_per_item"]["count"] == 4
    assert distribution(np.array([0, 0]))["bins"] == []
    page = render({"training": {}, "distributions": spread})
    assert "distinct items per user" in page and "distinct users per item" in page
