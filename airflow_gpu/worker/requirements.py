"""A code bundle's ``requirements.txt``, installed once per host and content.

Packages go into ``<cache>/<sha256 of the file>`` with ``pip install --target``, and that folder
joins the job's ``PYTHONPATH``. A second job with the same file on the same host finds the
folder complete and installs nothing (on Batch the cache is a host volume that
``airflow-gpu batch-setup``'s job definition mounts; locally a folder under ~/.cache).

``--target`` alone would not see what the image already has, and would reinstall (and shadow)
numpy or torch. So pip first resolves the file against the running environment
(``--dry-run --report``): what it would install is exactly what the image lacks. Those
artifacts alone are then installed into the target, ``--no-deps``, as resolved.

A folder is filled under a temporary name and renamed into place: two jobs installing at once
on one host never see each other's half-written folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..contract import REQUIREMENTS_CACHE_ENV, REQUIREMENTS_CACHE_PATH
from .errors import WorkerError

log = logging.getLogger("airflow_gpu.worker")

_NOT_FOUND = re.compile(r"(?:No matching distribution found for|satisfies the requirement)\s+(\S+)")


def cache_root() -> Path:
    """$AIRFLOW_GPU_REQUIREMENTS_CACHE, else the Batch host volume when mounted, else ~/.cache."""
    explicit = os.environ.get(REQUIREMENTS_CACHE_ENV)
    if explicit:
        return Path(explicit)
    host = Path(REQUIREMENTS_CACHE_PATH)
    if host.is_dir():
        if os.access(host, os.W_OK | os.X_OK):
            return host
        # Docker creates a missing host folder owned by root; the image runs as the user "worker".
        log.warning(
            "requirements: the host cache %s is not writable by uid %d, so this job installs into its own home; "
            "create it on the hosts owned by that uid to share installs between jobs",
            host,
            os.getuid(),
        )
    return Path.home() / ".cache" / "airflow-gpu" / "requirements"


def _pip_env() -> dict[str, str]:
    return dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")


async def _pip(*args: str, cwd: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pip",
        *args,
        cwd=str(cwd),
        env=_pip_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace")


def _failure(file: Path, output: str) -> WorkerError:
    if "No module named pip" in output:
        return WorkerError(
            f"requirements: {file.name} cannot be installed: this image's Python ({sys.executable}) has no pip; "
            "add pip to the image, or bake the requirements into it; nothing was run"
        )
    found = _NOT_FOUND.search(output)
    if found:
        return WorkerError(
            f"requirements: could not install {found.group(1)} from {file.name}: no matching distribution; check its name "
            "and version, and that the job can reach the package index; nothing was run"
        )
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error")]
    return WorkerError(
        f"requirements: installing {file.name} failed: {(errors or lines or ['pip failed'])[-1]}; nothing was run"
    )


def _artifact(item: dict[str, Any]) -> str:
    """The exact artifact pip resolved, as an argument to ``pip install``."""
    info = item.get("download_info") or {}
    url = info.get("url")
    vcs = info.get("vcs_info")
    if url and vcs:
        return f"{vcs['vcs']}+{url}@{vcs['commit_id']}"
    if url:
        return str(url)
    metadata = item["metadata"]
    return f"{metadata['name']}=={metadata['version']}"


async def install(file: Path, *, root: Path | None = None) -> Path:
    """The folder holding what ``file`` requires beyond the image, installed now unless already there."""
    data = file.read_bytes()  # noqa: ASYNC240  (a requirements file: a few hundred bytes)
    digest = hashlib.sha256(data).hexdigest()
    root = root or cache_root()
    target = root / digest
    if target.is_dir():
        log.info("requirements: %s (sha256 %s) already installed on this host in %s", file.name, digest[:12], target)
        return target
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=root))
    try:
        report = work / "report.json"
        # Run where the file is, so the relative paths it names (--find-links ./wheels) resolve as its author meant.
        code, output = await _pip(
            "install", "--dry-run", "--quiet", "--report", str(report), "-r", str(file), cwd=file.parent
        )
        if code != 0:
            raise _failure(file, output)
        wanted = json.loads(report.read_text()).get("install", [])
        packages = work / "packages"
        packages.mkdir()
        if wanted:
            artifacts = [_artifact(item) for item in wanted]
            code, output = await _pip(
                "install", "--quiet", "--no-deps", "--target", str(packages), *artifacts, cwd=file.parent
            )
            if code != 0:
                raise _failure(file, output)
        names = (
            ", ".join(f"{item['metadata']['name']}=={item['metadata']['version']}" for item in wanted) or "nothing new"
        )
        try:
            os.rename(packages, target)
        except OSError:
            if not target.is_dir():
                raise
            # Another job on this host finished the same install first: use its folder.
        log.info(
            "requirements: installed %s (%d packages; the image had the rest) in %.1f s into %s",
            names,
            len(wanted),
            time.monotonic() - started,
            target,
        )
        return target
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


async def install_for_code(code_root: Path, name: str | None) -> Path | None:
    """Install ``name`` (a path inside the code, else its requirements.txt when it has one); the folder, or None."""
    from ..contract import REQUIREMENTS_FILE
    from .safe_paths import path_inside

    try:
        file = path_inside(code_root, name or REQUIREMENTS_FILE)
    except WorkerError as exc:
        raise WorkerError(f"--requirements {name}: {exc}") from None
    if not file.is_file():
        if name:
            raise WorkerError(f"--requirements {name}: no such file in the code; name a file inside the bundle")
        return None
    return await install(file)


def python_path(*folders: Path | None) -> str:
    """PYTHONPATH with ``folders`` first (the code's root, then its requirements), then what was set."""
    parts = [str(folder) for folder in folders if folder is not None]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)
