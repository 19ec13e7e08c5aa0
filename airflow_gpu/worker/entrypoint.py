"""The Docker entrypoint convention: ``airflow-gpu-worker python train.py`` runs ``python train.py``.

The image's ENTRYPOINT is ``airflow-gpu-worker`` and a job's ``command`` is its argv (on Batch,
and on the local backend, which plays the entrypoint's part). So that a plain command runs
unchanged everywhere, an argv whose first word is not one of the worker's subcommands (nor an
option) is the command itself: it replaces this process (exec), so its exit code, signals and
output are the job's own. Decided before anything heavy is imported, so it works on an
installation without the worker's dependencies too.
"""

from __future__ import annotations

import os
import sys

#: The worker's own subcommands (build_parser's; a test keeps the two lists equal).
SUBCOMMANDS = ("als", "run-script", "run-function")


def plain_command(argv: list[str]) -> list[str] | None:
    """``argv`` when it is a plain command to run, else None (a subcommand, an option, or nothing)."""
    if not argv or argv[0].startswith("-") or argv[0] in SUBCOMMANDS:
        return None
    return argv


def exec_command(argv: list[str], prog: str) -> int:
    """Replace this process with ``argv``; if that cannot be done, one line and the shell's exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
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
    return 0  # not reached: exec does not return
