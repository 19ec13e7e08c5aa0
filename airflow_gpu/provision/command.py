"""`airflow-gpu batch-setup`: arguments and the run, kept apart from cli.py so that it stays a dispatcher."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        metavar="PATH",
        help="TOML file describing the set-up (see container/batch-setup.example.toml)",
    )
    parser.add_argument("--region", help="AWS region; overrides the config's region")
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="send every AWS call to this endpoint (LocalStack, moto); AWS_ENDPOINT_URL works too",
    )
    parser.add_argument("--profile", help="AWS profile from ~/.aws/config (default: the usual credential chain)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    parser.add_argument(
        "--delete",
        action="store_true",
        help="tear down: disable and delete the queue, then the compute environment; deregister the job definition",
    )
    parser.add_argument(
        "--delete-logs", action="store_true", help="with --delete, delete the log group and its logs too"
    )
    parser.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="json: one JSON document on stdout (queue, job definition ARN, actions); progress on stderr",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="how long to wait for AWS to finish each create, disable or delete (default 900)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="time between status checks while waiting (default 5)",
    )


def run(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    from .apply import execute, outputs_of
    from .aws import WaitPolicy, connect
    from .config import load_config
    from .dependencies import check_dependencies
    from .errors import ConfigError, ProvisionError
    from .plan import plan_setup, plan_teardown
    from .report import render_outputs, render_plan, write_json

    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    as_json = args.output == "json"
    # With --output json, stdout carries only the JSON document.
    human = stderr if as_json else stdout

    def say(line: str) -> None:
        print(line, file=human, flush=True)

    if args.delete_logs and not args.delete:
        print("error: --delete-logs only goes with --delete", file=stderr)
        return EXIT_BAD_CONFIG
    if args.wait_timeout <= 0 or args.poll_interval <= 0:
        print("error: --wait-timeout and --poll-interval must be positive", file=stderr)
        return EXIT_BAD_CONFIG
    try:
        cfg = load_config(args.config, region=args.region)
    except ConfigError as exc:
        print(f"error: {exc}", file=stderr)
        return EXIT_BAD_CONFIG
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=stderr)

    try:
        clients = connect(cfg.region, endpoint_url=args.endpoint_url, profile=args.profile)
        if args.delete:
            plan = plan_teardown(cfg, clients, delete_logs=args.delete_logs)
        else:
            plan = plan_setup(cfg, clients)
        for line in render_plan(plan):
            say(line)
        if args.dry_run:
            outputs = outputs_of(plan, None, dry_run=True)
            missing = [] if args.delete else check_dependencies(cfg, clients)
            if missing:
                print(
                    f"error: the set-up depends on {len(missing)} thing(s) that AWS does not have; "
                    "the real run would fail. Create them, then run batch-setup again:",
                    file=stderr,
                )
                for item in missing:
                    print("\n".join(["  - " + item.render()[0], *item.render()[1:]]), file=stderr)
                return EXIT_FAILED
        else:
            outputs = execute(plan, clients, WaitPolicy(timeout=args.wait_timeout, interval=args.poll_interval), say)
    except ProvisionError as exc:
        print(f"error: {exc}", file=stderr)
        return EXIT_FAILED
    for line in render_outputs(outputs):
        say(line)
    if as_json:
        write_json(outputs, stdout)
    return EXIT_OK
