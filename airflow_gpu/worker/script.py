"""``run-script``: the user's own Python, kept outside the image, with input/ and output/ beside it.

The script and its inputs are fetched into a fresh working folder; the script runs there
as ``python SCRIPT [ARGS...]`` (an argv list, never a shell string) with the folders
``input/`` and ``output/`` next to it, also named by $INPUT_DIR and $OUTPUT_DIR. When it
exits 0, output/ goes up under ``runs/<run_id>/output/`` and manifest.json is written last.
Its exit code becomes the job's; a failed script publishes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..contract import MANIFEST, local_path
from .bundle import fetch_code
from .errors import WorkerError
from .publish import DEFAULT_KEEP_RUNS, Publisher
from .requirements import install_for_code, python_path
from .safe_paths import check_keys, files_to_publish, path_inside
from .storage import ObjectRef, Store, open_store
from .writable import prove_writable

log = logging.getLogger("airflow_gpu.worker")


async def _fetch_script(uri: str, dest_dir: Path, endpoint_url: str | None) -> Path:
    if uri.startswith("s3://"):
        async with open_store(uri, endpoint_url=endpoint_url) as store:
            refs = await store.list()
            single = [r for r in refs if r.key == store.prefix] if hasattr(store, "prefix") else []
            if len(single) != 1:
                raise WorkerError(f"script {uri} not found; check --script (it must name one .py object)")
            path = path_inside(dest_dir, single[0].name)
            await store.read_to_file(single[0], path)
            return path
    source = local_path(uri)
    if not source.is_file():
        raise WorkerError(f"script {uri} not found; check --script (a local .py file or an s3:// object)")
    path = dest_dir / source.name
    await asyncio.to_thread(shutil.copyfile, source, path)
    return path


def _verify_script(path: Path, expected: str) -> None:
    """``airflow-gpu submit --script`` staged the script under its sha256: run exactly those bytes."""
    import hashlib

    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected.lower():
        raise WorkerError(
            f"script digest mismatch: expected sha256 {expected}, got {actual}; the staged script was changed "
            "after it was submitted, so nothing was run. Submit it again."
        )


async def _fetch_inputs(store: Store, folder: Path, concurrency: int) -> tuple[int, int]:
    refs = await store.list()
    if not refs:
        raise WorkerError(f"no objects under {store.uri}; check --input")
    # Every key is checked before the first download: a bad one refuses the run with nothing written.
    paths = check_keys(folder, [r.name for r in refs])
    slots = asyncio.Semaphore(concurrency)

    async def one(ref: ObjectRef, path: Path) -> None:
        async with slots:
            await store.read_to_file(ref, path)

    await asyncio.gather(*(one(r, p) for r, p in zip(refs, paths)))
    return len(refs), sum(r.size for r in refs)


async def run_script_async(
    script: str | None,
    input_uri: str | None,
    output_uri: str,
    args: list[str] | None = None,
    *,
    endpoint_url: str | None = None,
    concurrency: int = 16,
    workdir: str | None = None,
    run_id: str | None = None,
    keep_workdir: bool = False,
    keep_runs: int = DEFAULT_KEEP_RUNS,
    sha256: str | None = None,
    code: str | None = None,
    module: str | None = None,
    requirements: str | None = None,
) -> int:
    if bool(script) == bool(module):
        raise WorkerError("run-script needs one of --script or --module (--module with --code); pass exactly one")
    if (module or requirements) and not code:
        raise WorkerError("--module and --requirements need --code URI: the bundle the module or file lives in")
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="airflow-gpu-script-"))
    try:
        return await _run_in(
            folder,
            script,
            input_uri,
            output_uri,
            args,
            endpoint_url,
            concurrency,
            run_id,
            keep_runs,
            sha256,
            CodeRun(code, module, requirements) if code else None,
        )
    finally:
        # A temporary folder holds the inputs too: never leave it behind, unless asked to (to debug).
        if not workdir and not keep_workdir:
            await asyncio.to_thread(shutil.rmtree, folder, True)
        elif not workdir:
            log.info("run-script: kept the working folder %s (--keep-workdir)", folder)


async def _run_in(
    folder: Path,
    script: str | None,
    input_uri: str | None,
    output_uri: str,
    args: list[str] | None,
    endpoint_url: str | None,
    concurrency: int,
    run_id: str | None,
    keep_runs: int,
    sha256: str | None,
    bundle: CodeRun | None = None,
) -> int:
    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    inputs, outputs = folder / "input", folder / "output"
    inputs.mkdir(exist_ok=True)
    outputs.mkdir(exist_ok=True)
    async with open_store(output_uri, endpoint_url=endpoint_url, concurrency=concurrency) as out:
        await out.read_small(MANIFEST)  # fail fast on a missing bucket or a denied prefix
        await prove_writable(out)  # or on a local folder that cannot be written, before any input is read
        if bundle:
            # The code (and what it requires) is in place and verified before any input is fetched.
            cwd, _, env_extra = await bundle.prepare(folder, endpoint_url, sha256)
            argv_head = [str(_script_in(cwd, script))] if script else ["-m", bundle.module or ""]
            label = script or f"-m {bundle.module}"
        else:
            assert script is not None
            path = await _fetch_script(script, folder, endpoint_url)
            if sha256:
                _verify_script(path, sha256)
            cwd, env_extra, argv_head, label = folder, {}, [str(path)], path.name
        count = size = 0
        if input_uri:
            async with open_store(input_uri, endpoint_url=endpoint_url, concurrency=concurrency) as source:
                count, size = await _fetch_inputs(source, inputs, concurrency)
        log.info("run-script: %d input objects (%.1f MB) in %s; running %s", count, size / 2**20, inputs, label)

        env = dict(os.environ, INPUT_DIR=str(inputs), OUTPUT_DIR=str(outputs), **env_extra)
        argv = [sys.executable, *argv_head, *(args or [])]
        process = await asyncio.create_subprocess_exec(*argv, cwd=str(cwd), env=env)
        loop = asyncio.get_running_loop()
        # Batch stops a job with SIGTERM: pass it on, so the script can stop cleanly too.
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, process.send_signal, sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread
                pass
        try:
            code = await process.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError):  # pragma: no cover
                    pass
        if code < 0:
            # Killed by signal N: exit 128+N as a shell does (SIGKILL 137, the OOM killer's mark),
            # not -N, which the exit status would wrap to 256-N.
            log.error("run-script: %s was killed by signal %d", label, -code)
            code = 128 - code
        if code != 0:
            log.error("run-script: %s exited with %d; nothing is published", label, code)
            return code

        publisher = Publisher(out, run_id)
        try:
            files = await asyncio.to_thread(files_to_publish, outputs)
            for file in files:
                await publisher.put_file("output/" + file.relative_to(outputs).as_posix(), file, kind="output")
            await publisher.commit(
                {
                    "command": "run-script",
                    "script": script,
                    **({"code": bundle.code, "module": bundle.module} if bundle else {}),
                    "input": input_uri,
                    "params": {"args": redacted_args(args or []), "input_objects": count, "input_bytes": size},
                    "exit_code": code,
                    "summary": {
                        "files": len(files),
                        "bytes": publisher.bytes_written,
                        "seconds": round(time.monotonic() - started, 3),
                    },
                }
            )
        except BaseException:
            await publisher.abort()
            raise
        await publisher.prune(keep_runs)
    return 0


@dataclass(frozen=True)
class CodeRun:
    """``--code``: the bundle to unpack, what to run from it, and which requirements file to install."""

    code: str
    module: str | None = None
    requirements: str | None = None

    async def prepare(
        self, folder: Path, endpoint_url: str | None, sha256: str | None
    ) -> tuple[Path, Path | None, dict[str, str]]:
        """(the code's root, its requirements folder, the environment the run adds)."""
        root = await fetch_code(self.code, folder / "code", endpoint_url=endpoint_url, sha256=sha256)
        target = await install_for_code(root, self.requirements)
        return root, target, {"PYTHONPATH": python_path(root, target), "CODE_DIR": str(root)}


def _script_in(root: Path, script: str) -> Path:
    """``--script`` as a path inside the code's root; a one-line refusal otherwise."""
    try:
        path = path_inside(root, script)
    except WorkerError as exc:
        raise WorkerError(f"--script {script}: {exc}") from None
    if not path.is_file():
        raise WorkerError(f"--script {script} is not in the code bundle; name a .py file by its path inside --code")
    return path


#: Flags whose values the manifest never shows: anything that looks like a secret by its name.
SECRET_FLAG = re.compile(
    r"(secret|token|passw(or)?d|passphrase|credential|api[-_]?key|access[-_]?key|private[-_]?key|auth|^-+key$)", re.I
)
REDACTED = "***"


def redacted_args(args: list[str]) -> list[str]:
    """The script's arguments as the manifest records them: values of secret-looking flags replaced.

    Arguments are a job's only channel for settings, and some carry secrets; manifests are read
    by everyone who reads the outputs. ``--api-key X`` and ``--api-key=X`` both become ``***``.
    """
    shown: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next and not arg.startswith("-"):
            shown.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        if arg.startswith("-"):
            name, sep, _ = arg.partition("=")
            if SECRET_FLAG.search(name.lstrip("-")) or SECRET_FLAG.search(name):
                if sep:
                    shown.append(name + "=" + REDACTED)
                    continue
                hide_next = True
        shown.append(arg)
    return shown
