"""The Docker entrypoint convention: ``airflow-gpu-worker python train.py`` runs ``python train.py``.

The image's ENTRYPOINT is ``airflow-gpu-worker`` and a job's ``command`` is its argv (on Batch,
and on the local backend, which plays the entrypoint's part). So that a plain command runs
unchanged everywhere, an argv whose first word is not one of the worker's subcommands (nor an
option) is the command itself. Decided before anything heavy is imported, so it works on an
installation without the worker's dependencies too.

The command runs as a child of this process, not in its place, so that the profile's sampler
(worker/profile.py) can watch it like every other job: the child inherits stdin, stdout and
stderr, so its output is the job's own; its exit code is returned (128 + N when signal N
killed it, as a shell reports it); SIGTERM (how Batch stops a job, with SIGKILL after the
stop timeout) and SIGINT are passed on to it, so its own handlers run. At its end the
profile's summary line and the run's estimated cost go to the log (stderr). A plain command has
no output folder, so there is no profile.json: the log line is its profile.

A signal sent to the whole process group (the local backend stops a job that way) reaches the
child directly too, so the child may see SIGTERM twice; a SIGINT from the terminal's Ctrl-C,
which the terminal already sent to the child, is not passed on again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from types import FrameType
from typing import Any

#: The worker's own subcommands (build_parser's; a test keeps the two lists equal).
SUBCOMMANDS = ("als", "run-script", "run-function")
#: The signals passed on to the command.
FORWARDED = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("airflow_gpu.worker")


def plain_command(argv: list[str]) -> list[str] | None:
    """``argv`` when it is a plain command to run, else None (a subcommand, an option, or nothing)."""
    if not argv or argv[0].startswith("-") or argv[0] in SUBCOMMANDS:
        return None
    return argv


def run_command(argv: list[str], prog: str) -> int:
    """Run ``argv`` as a profiled child, passing signals on; its exit code, or the shell's for one that
    cannot start (127 not found, 126 not executable), with one line saying why."""
    from .profile import profiled  # stdlib only (NVML if present): fine on a bare installation

    sys.stdout.flush()
    sys.stderr.flush()
    started: list[subprocess.Popen[bytes]] = []
    early: list[int] = []  # a signal that came before the child existed: passed on once it does

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and _terminal_sent_it():
            return
        if not started:
            early.append(signum)
            return
        try:
            started[0].send_signal(signum)
        except ProcessLookupError:  # it ended meanwhile
            pass

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        try:
            child = subprocess.Popen(argv)
        except FileNotFoundError:
            print(
                f"{prog}: error: {argv[0]!r} is neither a worker command ({', '.join(SUBCOMMANDS)}) nor a program "
                "on PATH; check the job's command",
                file=sys.stderr,
            )
            return 127
        except PermissionError:
            print(f"{prog}: error: {argv[0]!r} is not executable; check the job's command", file=sys.stderr)
            return 126
        started.append(child)
        for signum in early:
            child.send_signal(signum)
        with profiled(process=child.pid) as profile:
            _wait_unreaped(child)  # the profile's last sample still reads its CPU time
        returncode = child.wait()  # a handled signal does not end a wait (PEP 475)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _log_cost(profile.document)
    return 128 - returncode if returncode < 0 else returncode


def _wait_unreaped(child: subprocess.Popen[bytes]) -> None:
    """Wait until the child ends but leave it unreaped: until it is, /proc keeps its CPU time."""
    if hasattr(os, "waitid"):
        try:
            os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass


def _terminal_sent_it() -> bool:
    """Is this process in the terminal's foreground group? Then a Ctrl-C reached the child already."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):  # no terminal, or no stdin
        return False


def _log_cost(document: dict[str, Any] | None) -> None:
    from .run_cost import run_cost

    try:
        log.info("cost: %s", run_cost(document)["text"])
    except Exception as exc:  # noqa: BLE001 - the estimate never changes the job's outcome
        log.warning("cost unknown (%s)", exc)
