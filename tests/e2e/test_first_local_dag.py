"""A first DAG on the local backend, written with only what the docs give (no staging prefix, no
poll interval, a plain ``echo`` command), run with dag.test() in a fresh process: it succeeds, the
fast job's output reaches the task log, and nobody is told a result was "reused"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.airflow_e2e import seed_airflow_home
from tests.support.local_jobs_testing import kill_leftover_local_jobs

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


def test_a_first_local_dag_runs_as_written_and_shows_its_jobs_output(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    env.update(HOME=str(tmp_path), AIRFLOW_GPU_LOCAL_JOBS_DIR=str(tmp_path / "jobs"), PYTHONPATH=str(ROOT))
    # The run's migrated database (the driver's migrate_if_needed then finds it at head): 40 s of CPU saved.
    seed_airflow_home(tmp_path / "home")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.support.first_dag_driver", str(tmp_path / "home")],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=560,
        )
    finally:
        kill_leftover_local_jobs(tmp_path / "jobs")
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-6000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    assert result["state"] == "success" and result["tasks"] == {"add": "success", "echo": "success"}, logs[-6000:]
    assert result["add"] == 5
    assert result["polls"] == {"add": 2.0, "echo": 2.0}  # the local backend's default, not Batch's 30 s
    assert "FAST-JOB-OUTPUT" in logs and "adding 2 3" in logs  # each job's output in its task's log
    assert "Reusing" not in logs  # said only of a job an earlier try submitted
    assert "Traceback" not in logs
    # Staged without being told where: under the Airflow home.
    assert list((tmp_path / "home" / "airflow-gpu" / "staging" / "functions").glob("*/function.json"))
