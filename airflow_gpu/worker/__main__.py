"""``airflow-gpu-worker``: the command the GPU container runs.

    airflow-gpu-worker als --input s3://bucket/interactions/ --output s3://bucket/als/run-1/
    airflow-gpu-worker run-script --script s3://bucket/jobs/train.py --input ... --output ...
    airflow-gpu-worker run-script --code s3://.../code/SHA.tar.gz --script train.py --output ...
    airflow-gpu-worker run-function --payload s3://.../functions/SHA.json --sha256 SHA --result s3://.../
    airflow-gpu-worker python train.py      (any other command: run as it is, see entrypoint.py)

A user's mistake ends with one line on stderr, ``airflow-gpu-worker: error: ...``, and
exit code 2; progress goes to stderr as timestamped lines, which Batch sends to
CloudWatch Logs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings
from typing import TYPE_CHECKING, TextIO

from .errors import WorkerError

PROG = "airflow-gpu-worker"


def package_version() -> str:
    """The installed distribution's version (the image installs the package with --no-deps, so it has one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("airflow-gpu")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from .commands import als, run_function, run_script
    from .commands.options import positive_int

    # Options every command takes, written once. -q works before or after the command; SUPPRESS
    # keeps a subcommand that was not given -q from resetting the top level's value (absent = not quiet).
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="log warnings and errors only"
    )
    s3 = argparse.ArgumentParser(add_help=False)
    s3.add_argument(
        "--endpoint-url", default=None, help="S3 endpoint (else the standard AWS settings, AWS_ENDPOINT_URL included)"
    )
    s3.add_argument("--concurrency", type=positive_int, default=16, help="S3 requests in flight")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The airflow-gpu container worker: built-in ALS collaborative filtering, or your own script.",
        parents=[quiet],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (als, run_script, run_function):  # each module declares its own options and handler
        command.add_parser(commands, parents=[quiet, s3])
    return parser


if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[TextIO]
else:  # StreamHandler takes a type argument at run time only from Python 3.11
    _StreamHandler = logging.StreamHandler


class _StderrHandler(_StreamHandler):
    """Writes to whatever sys.stderr is at the time, never to a stream that was replaced and closed."""

    _worker_cli: bool  # set on the handler _configure_logging installs

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _configure_logging(level: int) -> None:
    """Timestamped lines on stderr for the worker's own logger (replacing any set by an earlier call)."""
    logger = logging.getLogger("airflow_gpu.worker")
    for handler in list(logger.handlers):
        if getattr(handler, "_worker_cli", False):
            logger.removeHandler(handler)
    handler = _StderrHandler()
    handler._worker_cli = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logging.getLogger("implicit").setLevel(logging.WARNING)


def _missing_dependency(exc: ModuleNotFoundError) -> int:
    """An installation without the worker's dependencies (pip install without the ``worker`` extra)."""
    if not exc.name or exc.name.split(".")[0] == "airflow_gpu":
        raise exc
    print(
        f"{PROG}: error: this installation lacks {exc.name!r}, which the worker needs: install the package with its "
        "worker extra (`pip install -e '.[worker]'` in a checkout, or the image built from container/Dockerfile)",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    from .entrypoint import plain_command, run_command

    command = plain_command(list(sys.argv[1:] if argv is None else argv))
    if command is not None:  # not a worker command: the job's own program (the Docker entrypoint convention)
        _configure_logging(logging.INFO)  # for its profile's summary line
        return run_command(command, PROG)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except ModuleNotFoundError as exc:
        return _missing_dependency(exc)
    _configure_logging(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    warnings.filterwarnings("ignore", message=".*OpenBLAS is configured.*")
    from .profile import profiled

    try:
        with profiled():  # every command: its GPU/CPU profile, summed up in the log's last lines
            code: int = args.handler(args)
        return code
    except ModuleNotFoundError as exc:
        return _missing_dependency(exc)
    except WorkerError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except asyncio.CancelledError:
        # SIGTERM (how Batch stops a job) cancels the run; its uploads were removed.
        print(f"{PROG}: stopped by SIGTERM; nothing was published", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was published", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
