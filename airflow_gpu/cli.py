"""`airflow-gpu`: a thin dispatcher to subcommand modules.

Only the chosen subcommand's module is imported, so `airflow-gpu batch-setup` never
loads Airflow and `airflow-gpu demo` never loads boto3. Each module offers
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

SUBCOMMANDS = {
    "submit": ("airflow_gpu.terminal.submit", "submit a GPU job from this terminal and follow it live"),
    "logs": ("airflow_gpu.terminal.logs", "print a job's log (--follow: live)"),
    "status": ("airflow_gpu.terminal.status", "show a job's state, reason, exit code and links"),
    "cancel": ("airflow_gpu.terminal.cancel", "terminate a job"),
    "jobs": ("airflow_gpu.terminal.jobs", "list the jobs airflow-gpu submitted"),
    "batch-setup": (
        "airflow_gpu.provision.command",
        "create or update the AWS Batch GPU compute environment, job queue and job definition",
    ),
    "demo": ("airflow_gpu.demo.command", "run the gpu_recommendations DAG end to end on this machine"),
}


def _load(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # the module exists but something it needs is missing: show that
            raise
        return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from airflow_gpu import __version__

    parser = argparse.ArgumentParser(
        prog="airflow-gpu", description="GPU jobs on AWS Batch as deferrable Airflow tasks."
    )
    parser.add_argument("--version", action="version", version=f"airflow-gpu {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = _load(module_name)
            if module is None:
                print(
                    f"airflow-gpu {name}: not available: this installation has no {module_name} module", file=sys.stderr
                )
                return 2
            module.add_arguments(sub)
    args = parser.parse_args(argv)
    assert module is not None  # argparse has rejected any other command
    try:
        code = int(module.run(args))
        sys.stdout.flush()
    except KeyboardInterrupt:
        # Whatever was waited on has been stopped by then (a job's wait terminates the job).
        print(f"airflow-gpu {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`... --output json | head`): what it did not read is not wanted,
        # which is no error to report. Point stdout at /dev/null so the exit's flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
