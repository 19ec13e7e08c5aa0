"""``airflow-gpu-worker run-script``: its options and its handler (the work is in ``worker/script.py``)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from .options import DefaultsHelpFormatter, add_code_arguments, add_keep_runs


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    script = commands.add_parser(
        "run-script",
        help="run your own Python script with input/ and output/ folders",
        description=(
            "Fetch --script and every object under --input into a fresh folder, run `python SCRIPT [ARGS...]` there "
            "with input/ and output/ beside it ($INPUT_DIR, $OUTPUT_DIR), then upload output/ and write manifest.json "
            "last. The script's exit code is the job's; a failed script publishes nothing."
        ),
        formatter_class=DefaultsHelpFormatter,
        parents=parents,
    )
    script.add_argument(
        "--script",
        default=None,
        metavar="URI",
        help="s3://bucket/path/script.py or a local .py file; with --code, a path inside the code",
    )
    add_code_arguments(script)
    script.add_argument(
        "--module",
        default=None,
        metavar="PKG.MODULE",
        help="with --code: run `python -m PKG.MODULE` instead of a script",
    )
    script.add_argument("--input", default=None, metavar="URI", help="s3:// prefix or local folder copied into input/")
    script.add_argument("--output", required=True, metavar="URI", help="where output/ and manifest.json go")
    script.add_argument(
        "--sha256", default=None, help="refuse the script (or the --code bundle) unless its bytes have this digest"
    )
    script.add_argument(
        "--workdir", default=None, help="working folder (default: a fresh temporary folder, removed after)"
    )
    script.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temporary working folder, inputs included, even on failure",
    )
    add_keep_runs(script)
    script.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script, after --")
    script.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..script import run_script_async

    extra = args.args[1:] if args.args[:1] == ["--"] else args.args
    return asyncio.run(
        run_script_async(
            args.script,
            args.input,
            args.output,
            extra,
            endpoint_url=args.endpoint_url,
            concurrency=args.concurrency,
            workdir=args.workdir,
            sha256=args.sha256,
            keep_workdir=args.keep_workdir,
            keep_runs=args.keep_runs,
            code=args.code,
            module=args.module,
            requirements=args.requirements,
        )
    )
