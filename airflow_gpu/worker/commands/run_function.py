"""``airflow-gpu-worker run-function``: its options and its handler (the work is in ``worker/function.py``)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from .options import add_code_arguments


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    function = commands.add_parser(
        "run-function",
        help="run a function shipped by @task.gpu_batch",
        description=(
            "Fetch the payload @task.gpu_batch staged, refuse it unless its sha256 and Python version match, run "
            "the function, and write result.json (or error.json with the traceback) under --result."
        ),
        parents=parents,
    )
    function.add_argument("--payload", required=True, metavar="URI", help="the staged function document")
    function.add_argument("--sha256", required=True, help="the payload's digest, as the DAG computed it")
    function.add_argument("--result", required=True, metavar="URI", help="prefix for result.json or error.json")
    add_code_arguments(function)
    function.add_argument(
        "--code-sha256", default=None, help="refuse the --code bundle unless its bytes have this digest"
    )
    function.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..function import run_function_async

    return asyncio.run(
        run_function_async(
            args.payload,
            args.sha256,
            args.result,
            endpoint_url=args.endpoint_url,
            code=args.code,
            code_sha256=args.code_sha256,
            requirements=args.requirements,
        )
    )
