"""`airflow-gpu submit`: one GPU job from a terminal, checked by the same JobSpec rules as a task,
followed live until it ends; the command exits with the job's exit code.

    airflow-gpu submit --queue gpu --definition airflow-gpu-worker --gpus 1 -- python -c "import torch"
    airflow-gpu submit --queue gpu --definition airflow-gpu-worker --script train.py \\
        --input s3://data/in/ --output s3://data/out/ --staging-prefix s3://data/staging/ -- --epochs 3

Ctrl-C asks whether to terminate the job (a second Ctrl-C, or --terminate-on-interrupt, does);
--detach returns once the job is submitted.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import secrets
import sys
import time
from pathlib import Path

from airflow_gpu.job_request import JobRequest
from airflow_gpu.jobs.backend import BackendTarget
from airflow_gpu.jobs.follower import LogFollower
from airflow_gpu.jobs.spec import JobSpec, TaskIdentity
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.terminal.follow import JobView, exit_code_of
from airflow_gpu.terminal.options import (
    TERMINAL_DAG_ID,
    TerminalError,
    add_target_arguments,
    call,
    give_up_after,
    guarded,
    target_flags,
    target_of,
)

log = logging.getLogger("airflow_gpu.terminal")


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "Everything after -- is the job's command (argv, never a shell string), or the script's arguments with --script."
    job = parser.add_argument_group("the job")
    job.add_argument("--queue", help="Batch job queue (not needed with --backend local)")
    job.add_argument(
        "--definition", help="Batch job definition: name, name:revision or ARN (not needed with --backend local)"
    )
    for name, flag in JobRequest.flags().items():  # the fields a flag maps one to one: --gpus, --share-identifier...
        job.add_argument("--" + name.replace("_", "-"), default=JobRequest.defaults()[name], **flag)
    job.add_argument("--name", default=None, help="job name (else the script's or the command's name)")
    job.add_argument(
        "--env", type=_pair, action="append", default=[], metavar="K=V", help="environment variable (repeatable)"
    )
    job.add_argument("--tag", type=_pair, action="append", default=[], metavar="K=V", help="job tag (repeatable)")
    script = parser.add_argument_group("a local script, run by the image's run-script")
    script.add_argument(
        "--script",
        default=None,
        metavar="PATH",
        help="a local .py file, uploaded to the staging prefix; with --code, its path inside the code folder",
    )
    script.add_argument(
        "--code",
        default=None,
        metavar="FOLDER",
        help="ship this folder as one code bundle (git-tracked files in a checkout), staged once per content",
    )
    script.add_argument("--module", default=None, metavar="PKG.MODULE", help="with --code: run `python -m PKG.MODULE`")
    script.add_argument(
        "--requirements",
        default=None,
        metavar="PATH",
        help="with --code: the requirements file inside it to install first (default: its requirements.txt)",
    )
    script.add_argument(
        "--max-code-size", default=None, metavar="SIZE", help="refuse a --code bundle larger than this (default 200MB)"
    )
    script.add_argument("--input", default=None, metavar="URI", help="copied into the script's input/ folder")
    script.add_argument("--output", default=None, metavar="URI", help="where the script's output/ and manifest.json go")
    script.add_argument(
        "--staging-prefix",
        default=None,
        metavar="URI",
        help="where the script is uploaded (else $AIRFLOW_GPU_STAGING_PREFIX)",
    )
    watch = parser.add_argument_group("watching")
    watch.add_argument("--detach", action="store_true", help="print the job id and links, and return at once")
    watch.add_argument("--terminate-on-interrupt", action="store_true", help="Ctrl-C terminates the job without asking")
    watch.add_argument("--no-logs", action="store_true", help="states only, no log lines")
    watch.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between status polls (default 2 with --backend local, else 5)",
    )
    add_target_arguments(parser)
    parser.add_argument("argv", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _argv(args: argparse.Namespace) -> list[str]:
    rest = list(args.argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return rest


def _stage_script(args: argparse.Namespace, target: BackendTarget):
    """Upload the script under ``<staging>/scripts/<sha256>/<name>``; its URI and digest."""
    from airflow_gpu.config import staging_prefix
    from airflow_gpu.object_store import ObjectStore
    from airflow_gpu.shipping import stage

    path = Path(args.script).expanduser()
    if not path.is_file():
        raise TerminalError(f"--script {args.script}: no such file; pass the path of your .py file")
    if not args.output:
        raise TerminalError(
            "--script needs --output URI: where the script's output/ folder goes "
            "(s3://bucket/prefix/, or a local folder with --backend local)"
        )
    from airflow_gpu.config import local_staging_default

    local = local_staging_default(airflow_home=False) if target.backend == "local" else None
    prefix = staging_prefix(args.staging_prefix, airflow_config=False, local_default=local)
    client = None
    if prefix.startswith("s3://"):
        import boto3

        session = boto3.Session(profile_name=args.profile, region_name=args.region)
        client = session.client("s3", endpoint_url=args.endpoint_url)
    staged = stage(ObjectStore(client=client), prefix, "scripts", path.read_bytes(), path.name)
    print(f"Uploaded {path.name} to {staged.uri} (sha256 {staged.sha256[:12]})", flush=True)
    return staged


def _spec(args: argparse.Namespace, target: BackendTarget) -> JobSpec:
    argv = _argv(args)
    if args.code:
        from airflow_gpu.terminal.code import code_command

        command = code_command(args, target) + (["--", *argv] if argv else [])
        base = args.name or (Path(args.script).stem if args.script else str(args.module).replace(".", "-"))
    elif args.module or args.requirements:
        raise TerminalError("--module and --requirements need --code FOLDER: the project the module or file lives in")
    elif args.script:
        staged = _stage_script(args, target)
        from airflow_gpu.config import local_path_or_uri

        # Relative local paths mean the submitter's folder, whatever folder the job runs in.
        command = [
            "run-script",
            "--script",
            staged.uri,
            "--sha256",
            staged.sha256,
            "--output",
            local_path_or_uri(args.output),
        ]
        if args.input:
            command += ["--input", local_path_or_uri(args.input)]
        if args.endpoint_url and target.backend == "local":
            command += ["--endpoint-url", args.endpoint_url]
        command += ["--", *argv] if argv else []
        base = args.name or Path(args.script).stem
    else:
        if not argv:
            raise TerminalError(
                "no command: put the job's argv after --, e.g. `-- python train.py` "
                "(run by the image's entrypoint as it is), or pass --script train.py"
            )
        command = argv
        base = args.name or Path(argv[0]).name
    if target.backend == "local":  # the local backend puts the image's entrypoint in front, as Batch does
        queue, definition = args.queue or "local", args.definition or "local"
    else:
        if not args.queue or not args.definition:
            raise TerminalError("--queue and --definition are required for AWS Batch (see `airflow-gpu batch-setup`)")
        queue, definition = args.queue, args.definition
    # Each submit is its own "task instance", so it never reattaches to an earlier one.
    run = f"{getpass.getuser()}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    request = JobRequest(
        job_queue=queue,
        job_definition=definition,
        job_name=base,
        command=command,
        environment=dict(args.env),
        tags=dict(args.tag),
        **{name: getattr(args, name) for name in JobRequest.flags()},
    )
    return request.spec(TaskIdentity(TERMINAL_DAG_ID, base, run))


def _ask_to_terminate(job_id: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"\nTerminate job {job_id}? [y/N] (Ctrl-C again: yes) ")
    except KeyboardInterrupt:
        return True
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


async def _watch(target: BackendTarget, job_id: str, args: argparse.Namespace):
    try:
        return await JobView(
            target, stream_logs=not args.no_logs, poll_interval=args.poll_interval, give_up_after=give_up_after(args)
        ).watch(job_id, max_queued=args.max_queued)
    finally:
        await LogFollower.close_all()
        await JobWatcher.close_all()


def _submit(args: argparse.Namespace) -> int:
    target = target_of(args)
    if args.poll_interval is None:  # a local job is a process here: no API quota to spare
        args.poll_interval = 2.0 if target.backend == "local" else 5.0
    from airflow_gpu.jobs.spec import check_max_queued

    check_max_queued(args.max_queued)
    spec = _spec(args, target)

    async def submit(backend):
        try:
            state = await backend.submit(spec)
        except Exception as exc:
            from airflow_gpu.terminal.batch_names import unknown_queue_or_definition

            line = await unknown_queue_or_definition(backend, exc, spec.queue, spec.definition)
            if line is None:
                raise
            raise TerminalError(line) from None
        return state, backend.location, backend.job_url(state.job_id)

    state, location, url = call(target, submit, timeout=give_up_after(args))
    print(f"Submitted job {state.job_id} ({spec.name}) to {location}, queue {spec.queue}, {spec.gpus} GPU(s)")
    if url:
        print(f"  job:  {url}")
    print(f"  logs: airflow-gpu logs {state.job_id} --follow{target_flags(args)}", flush=True)
    if args.detach:
        return 0
    try:
        final = asyncio.run(_watch(target, state.job_id, args))
    except KeyboardInterrupt:
        if args.terminate_on_interrupt or _ask_to_terminate(state.job_id):
            reason = f"terminated from a terminal by {getpass.getuser()} (Ctrl-C)"
            call(target, lambda backend: backend.terminate(state.job_id, reason), timeout=give_up_after(args))
            print(f"Terminated job {state.job_id}.", flush=True)
            return 130
        print(
            f"Job {state.job_id} keeps running; `airflow-gpu cancel {state.job_id}{target_flags(args)}` stops it, "
            f"`airflow-gpu logs {state.job_id} --follow{target_flags(args)}` follows it again.",
            flush=True,
        )
        return 130
    return exit_code_of(final)


def run(args: argparse.Namespace) -> int:
    return guarded("submit", lambda: _submit(args), args)
