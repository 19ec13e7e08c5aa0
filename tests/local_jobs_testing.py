"""Helpers for tests that start local-backend jobs (real processes)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path


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
