"""Helpers for tests that start local-backend jobs (real processes)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from airflow_gpu.jobs.local import runner as records


def kill_leftover_local_jobs(state_dir: Path) -> None:
    """SIGKILL whatever a failed test left running: every job's process group, then its supervisor."""
    for run_file in state_dir.glob("*/run.json"):
        run = json.loads(run_file.read_text())
        for kill, target in ((os.killpg, run.get("pgid")), (os.kill, run.get("runner_pid"))):
            if target:
                try:
                    kill(int(target), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def job_record(state_dir: Path | str, job_id: str) -> dict[str, Any]:
    """Every record the local runner keeps for one job (job, run, exit, cancel), None where absent."""
    folder = Path(state_dir) / job_id
    return {
        name: records.read_json(str(folder / name))
        for name in (records.JOB_FILE, records.RUN_FILE, records.EXIT_FILE, records.CANCEL_FILE)
    }
