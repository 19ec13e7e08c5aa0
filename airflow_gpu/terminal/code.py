"""`airflow-gpu submit --code FOLDER`: the project packed as one bundle, staged once, run by `run-script --code`."""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath

from airflow_gpu.jobs.backend import BackendTarget
from airflow_gpu.terminal.options import TerminalError


def _staging_store(args: argparse.Namespace, prefix: str):
    from airflow_gpu.object_store import ObjectStore

    client = None
    if prefix.startswith("s3://"):
        import boto3

        session = boto3.Session(profile_name=args.profile, region_name=args.region)
        client = session.client("s3", endpoint_url=args.endpoint_url)
    return ObjectStore(client=client)


def _inside(code: str, script: str) -> str:
    """``--script`` as a path inside ``--code``: given that way (``train.py``, ``./jobs/a.py``) or from here (``proj/train.py``)."""
    relative = PurePosixPath(Path(script).as_posix()).as_posix()
    if (Path(code) / relative).is_file() and not Path(relative).is_absolute():
        return relative
    try:
        return Path(script).resolve().relative_to(Path(code).resolve()).as_posix()
    except ValueError:
        return relative


def code_command(args: argparse.Namespace, target: BackendTarget) -> list[str]:
    """Pack and stage ``--code``; the worker's argv that runs it (without the script's own arguments)."""
    from airflow_gpu.bundles import (
        DEFAULT_MAX_BYTES,
        left_out_note,
        pack,
        parse_size,
        stage_bundle,
    )
    from airflow_gpu.config import staging_prefix

    if bool(args.script) == bool(args.module):
        raise TerminalError("--code needs one of --script PATH (inside the folder) or --module PKG.MODULE")
    if not args.output:
        raise TerminalError("--code needs --output URI: where the job's output/ folder goes (s3://bucket/prefix/)")
    try:
        limit = parse_size(args.max_code_size) if args.max_code_size else DEFAULT_MAX_BYTES
    except ValueError as exc:
        raise TerminalError(f"--max-code-size: {exc}") from None
    prefix = staging_prefix(args.staging_prefix, airflow_config=False)
    bundle = pack(args.code, max_bytes=limit)
    script = _inside(args.code, args.script) if args.script else None
    if script is not None and script not in bundle.files:
        raise TerminalError(
            f"--script {args.script} is not among the files of --code {args.code}; give its path inside the folder"
        )
    note = left_out_note(bundle, args.code)
    if note:
        print(f"Note: {note}", flush=True)
    staged = stage_bundle(_staging_store(args, prefix), prefix, bundle)
    verb = "Uploaded" if staged.uploaded else "Already staged:"
    print(
        f"{verb} {len(bundle.files)} files of {args.code} as {staged.uri} ({len(bundle.data) / 1e6:.2f} MB)", flush=True
    )
    command = ["run-script", "--code", staged.uri, "--sha256", staged.sha256, "--output", args.output]
    command += ["--script", script] if script else ["--module", args.module]
    if args.requirements:
        command += ["--requirements", args.requirements]
    if args.input:
        command += ["--input", args.input]
    if args.endpoint_url and target.backend == "local":
        command += ["--endpoint-url", args.endpoint_url]
    return command
