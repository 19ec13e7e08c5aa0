"""The extra links as the UI reads them, and no unclosed client after an inline trigger.

tests/support/links_driver.py runs a GpuBatchOperator DAG with dag.test() against moto in a fresh
Airflow home, then asks the serialized task for its links with the task instance from the
database, as the API server's extra-links endpoint does (Airflow's XComOperatorLink reads the
XCom the task runner saved from our links at the end of each run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_gpu.jobs.aws.backend import batch_job_url
from tests.support.airflow_e2e import seed_airflow_home

pytestmark = pytest.mark.timeout(420)

DRIVER = Path(__file__).resolve().parents[1] / "support" / "links_driver.py"


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    return seed_airflow_home(tmp_path_factory.mktemp("links-airflow-home"))


def run_driver(home: Path, *flags: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(home), *flags], env=env, capture_output=True, text=True, timeout=400
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.split(" ", 1)[1]), output


def test_the_ui_shows_the_job_and_log_links_and_no_client_is_left_unclosed(airflow_home):
    result, output = run_driver(airflow_home)
    assert result["state"] == "success"
    [job_id] = result["job_ids"]
    assert result["links"]["AWS Batch job"] == batch_job_url(result["region"], job_id)
    assert job_id in result["links"]["CloudWatch log stream"]
    # The trigger ran inline on a loop that ended with its event: its aiohttp session went with it.
    assert "Unclosed client session" not in output and "Unclosed connector" not in output
    # A try's first run has nothing saved to look up: no "XCom not found" errors in its log.
    assert "XCom not found" not in output


def test_a_resume_that_learned_no_url_keeps_the_link_saved_when_the_task_deferred(airflow_home):
    result, _ = run_driver(airflow_home, "--event-without-links")
    assert result["state"] == "success"
    [job_id] = result["job_ids"]
    assert result["links"]["AWS Batch job"] == batch_job_url(result["region"], job_id)
