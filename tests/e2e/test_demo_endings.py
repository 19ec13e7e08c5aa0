"""How `airflow-gpu demo` ends when it does not succeed, in fresh processes: a failed quality gate
ends with the gate's own message as the last line and no Airflow traceback in the narration; Ctrl-C
(in a pseudo-terminal) ends with "interrupted" and what was cleaned up, without a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.airflow_e2e import seed_airflow_home

pytestmark = pytest.mark.timeout(500)

CLI = Path(sys.executable).with_name("airflow-gpu")


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    return seed_airflow_home(tmp_path_factory.mktemp("demo-endings-home"))


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    env["AIRFLOW_GPU_LOCAL_JOBS_DIR"] = str(tmp_path / "jobs")
    return env


def demo_argv(home: Path, tmp_path: Path, *more: str) -> list[str]:
    return [
        str(CLI),
        "demo",
        "--size",
        "20000",
        "--objects",
        "2",
        "--home",
        str(home),
        "--output-dir",
        str(tmp_path / "out"),
        *more,
    ]


def test_a_failed_quality_gate_ends_with_its_reason(airflow_home, tmp_path):
    done = subprocess.run(
        demo_argv(airflow_home, tmp_path, "--param", "min_lift=1000"),
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=450,
    )
    text = done.stdout + done.stderr
    assert done.returncode == 1, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("airflow-gpu demo: the DAG run failed at publish: "), last
    assert "does not beat popularity by 1000x" in last


def test_ctrl_c_ends_with_interrupted_and_what_was_stopped(airflow_home, tmp_path):
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        # ten times the data, so that the interrupt lands while the DAG runs
        demo_argv(airflow_home, tmp_path, "--size", "200000"),
        env=clean_env(tmp_path),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 400
        # The first word of the train task: the progress line may skip "running" when a state is short.
        while b"task train: " not in seen:
            assert time.monotonic() < deadline and process.poll() is None, seen.decode(errors="replace")[-3000:]
            try:
                seen += os.read(controller, 4096)
            except OSError:  # EIO: the demo ended before its train task began
                raise AssertionError(seen.decode(errors="replace")[-3000:]) from None
        process.send_signal(signal.SIGINT)
        while True:  # to the end of its output (EIO once the process is gone)
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        code = process.wait(timeout=60)
    finally:
        process.kill()
        os.close(controller)
    text = seen.decode(errors="replace")
    assert "Traceback" not in text, text[-4000:]
    last = [line for line in text.splitlines() if line.strip()][-1]
    assert last.startswith("airflow-gpu demo: interrupted; "), text[-3000:]
    assert "stopped local job(s)" in last or "no job was left running" in last
    assert code == 130
