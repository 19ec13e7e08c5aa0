"""A plain command through the worker's entrypoint (`airflow-gpu-worker python ...`) runs as a child
of the entrypoint, profiled: its exit code is the job's, SIGTERM reaches its own handler, a signal
death reads 128 + N as from a shell, and the log ends with the profile's summary line and the cost.
Real processes, as Batch runs the image's ENTRYPOINT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(sys.executable).with_name("airflow-gpu-worker")
pytestmark = pytest.mark.timeout(120)


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_GPU", "AWS_BATCH"))}
    return {**env, **more}


def test_a_plain_commands_exit_code_is_kept_and_its_log_ends_with_the_profile_and_the_cost():
    done = subprocess.run(
        [str(WORKER), sys.executable, "-c", "print('hello from the job'); raise SystemExit(3)"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert done.stdout == "hello from the job\n"  # the command's own output, untouched
    lines = done.stderr.strip().splitlines()
    assert re.search(r" INFO profile: (cpu: .* cores mean|gpu 0 \()", lines[-2]), done.stderr
    assert lines[-1].endswith(
        "INFO cost: Cost unknown: not on AWS Batch (no AWS_BATCH_JOB_ID), so no instance was asked."
    )


def test_sigterm_to_the_entrypoint_reaches_the_commands_own_handler():
    child = (
        "import signal, sys, time\n"
        "def stop(signum, frame):\n"
        "    print('handler ran for', signal.Signals(signum).name, flush=True)\n"
        "    sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "for _ in range(600):\n"
        "    time.sleep(0.1)\n"
        "sys.exit(1)\n"
    )
    worker = subprocess.Popen(
        [str(WORKER), sys.executable, "-c", child],
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # like a container's PID 1: only the entrypoint is signalled
    )
    try:
        assert worker.stdout.readline() == "ready\n"
        worker.send_signal(signal.SIGTERM)  # what `docker stop` does, before SIGKILL after the stop timeout
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    assert out == "handler ran for SIGTERM\n"
    assert worker.returncode == 7, err
    assert " INFO profile: " in err


def test_a_command_killed_by_a_signal_exits_128_plus_the_signal_as_from_a_shell():
    done = subprocess.run(
        [str(WORKER), sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 128 + signal.SIGKILL
    assert " INFO profile: " in done.stderr


def test_the_cpu_side_of_the_profile_is_the_commands_own():
    burn = "import time\nwhile time.process_time() < 1.0:\n    pass\n"  # one second of the command's own CPU
    done = subprocess.run(
        [str(WORKER), sys.executable, "-c", burn], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    if "INFO profile: gpu " in done.stderr:  # a machine with a GPU sums up its GPUs instead
        pytest.skip("NVML found a GPU here: the summary line is the GPU's")
    found = re.search(r"INFO profile: cpu: (\d+\.\d) cores mean", done.stderr)
    assert found and float(found.group(1)) > 0.0, done.stderr  # the entrypoint itself only waits: ~0 cores
