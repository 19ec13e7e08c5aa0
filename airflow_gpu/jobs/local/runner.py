"""The supervisor of one local job: ``python runner.py JOB_DIR``, started by LocalBackend.submit.

It detaches (double fork, its own session), so the job outlives the Airflow task that
submitted it, and no process is left for the submitter to reap. It then starts the
job's command in a process group of its own, with stdout and stderr going to
``output.log``, records ``run.json`` (pids, start time, boot id), waits, and records
``exit.json`` (exit code, end time, why) when the command ends. The submitter returns
only after ``run.json`` exists, so a submitted job is always on record as started.

It is run by path, not as a module, so it imports nothing but the standard library and
starts in a few milliseconds. The record layout is read by ``airflow_gpu.jobs.local.backend``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

# typing.TYPE_CHECKING without importing typing, which would add ~3 ms to the runner's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

JOB_FILE = "job.json"
RUN_FILE = "run.json"
EXIT_FILE = "exit.json"
CANCEL_FILE = "cancel.json"
LOG_FILE = "output.log"
#: Exit code recorded when the command could not be started at all (as a shell would say).
CANNOT_START = 127
#: Seconds between SIGTERM and SIGKILL when the runner itself stops the job (timeout).
KILL_GRACE = 10.0


def boot_id() -> str | None:
    """Changes on every boot (Linux): a record from an earlier boot describes no live process."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot; Linux), so a reused pid is not mistaken for ours."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def write_json(path: str, document: dict[str, Any]) -> None:
    """Atomically: a reader sees the old file or the whole new one, never half of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump(document, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as handle:
            document: dict[str, Any] = json.load(handle)
            return document
    except (OSError, ValueError):
        return None


def main(job_dir: str) -> int:
    job = read_json(os.path.join(job_dir, JOB_FILE))
    if job is None:
        print(f"airflow-gpu local runner: no readable {JOB_FILE} in {job_dir}", file=sys.stderr)
        return 2
    ready_read, ready_write = os.pipe()
    if os.fork() > 0:
        # The submitter waits for this process: exit once the job is on record (or failed to start).
        os.close(ready_write)
        with os.fdopen(ready_read, "rb") as ready:
            ok = ready.read(1) == b"1"
        return 0 if ok else 3
    os.close(ready_read)
    os.setsid()  # no controlling terminal, no signals from the submitter's session
    code = 0
    try:
        supervise(job_dir, job, ready_write)
    except BaseException:  # a bug here: leave the trace in the job's log; the backend sees no exit record
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)  # the forked child must not run the parent's exit path a second time


def supervise(job_dir: str, job: dict[str, Any], ready_fd: int) -> None:
    log_path = os.path.join(job_dir, LOG_FILE)
    run_path = os.path.join(job_dir, RUN_FILE)
    exit_path = os.path.join(job_dir, EXIT_FILE)
    log = open(log_path, "ab", buffering=0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # our own stray output goes to the job's log, never to the submitter's pipes
        os.dup2(devnull if fd == 0 else log.fileno(), fd)
    started_at = time.time()
    base = {
        "runner_pid": os.getpid(),
        "runner_start": process_start_ticks(os.getpid()),
        "boot_id": boot_id(),
        "host": socket.gethostname(),
        "started_at": started_at,
    }
    cancel = read_json(os.path.join(job_dir, CANCEL_FILE))
    if cancel is not None:  # terminated before it started
        write_json(run_path, {**base, "pgid": None})
        write_json(exit_path, {"exit_code": None, "ended_at": time.time(), "reason": cancel.get("reason")})
        _signal_ready(ready_fd)
        return
    try:
        workdir = job.get("workdir")
        child = subprocess.Popen(
            job["command"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=workdir if workdir and os.path.isdir(workdir) else None,  # else the job's own folder
        )
    except (OSError, ValueError) as exc:
        log.write(f"airflow-gpu local backend: cannot start {job['command'][0]!r}: {exc}\n".encode())
        write_json(run_path, {**base, "pgid": None})
        write_json(
            exit_path,
            {"exit_code": CANNOT_START, "ended_at": time.time(), "reason": f"cannot start the command: {exc}"},
        )
        _signal_ready(ready_fd)
        return
    write_json(run_path, {**base, "pgid": child.pid})
    _signal_ready(ready_fd)

    def forward(signum: int, _frame: FrameType | None) -> None:  # someone stopped the runner: stop the job with it
        _kill_group(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    timeout = job.get("timeout_s")
    reason = None
    try:
        code = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        reason = f"Job attempt duration exceeded timeout ({timeout} s)"
        log.write(f"airflow-gpu local backend: {reason}; stopping the job\n".encode())
        _kill_group(child.pid, signal.SIGTERM)
        try:
            code = child.wait(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            _kill_group(child.pid, signal.SIGKILL)
            code = child.wait()
    # Stragglers the command left in its group (e.g. a forked helper) go with it.
    _kill_group(child.pid, signal.SIGKILL)
    if code < 0:  # killed by a signal: report it the way a shell and the ECS agent do
        signame = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        reason = reason or f"the command was killed by {signame}"
        code = 128 - code
    write_json(exit_path, {"exit_code": code, "ended_at": time.time(), "reason": reason})
    log.close()


def _signal_ready(fd: int) -> None:
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)


def _kill_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: runner.py JOB_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
