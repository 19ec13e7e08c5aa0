"""A project folder as one content-addressed code bundle, staged once under the staging prefix.

A job's code is a package, not one file: modules that import each other, a config file, a
``requirements.txt``. ``pack`` turns a folder into one ``.tar.gz`` whose bytes depend only on
the files' paths, contents and executable bits (sorted paths, zero times and owners, gzip
with no name or time), so the same project gives the same sha256 on every machine and a
second submit of unchanged code uploads nothing: ``stage_bundle`` names the object
``<prefix>/code/<sha256>.tar.gz`` and skips the PUT when it is already there.

Which files: in a git checkout, the files git tracks (what a colleague's clone would run);
files the folder holds but git does not track are left out and reported, so a forgotten
``git add`` shows at submit rather than as an ImportError on the GPU. Elsewhere, every file
but those an ignore file (``.airflowgpuignore``, glob patterns, one a line) names.

This module belongs to the Airflow wing and imports neither Airflow nor the worker (the
worker's ``bundle`` module unpacks what this one packs; ``contract`` holds the names both use).
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from airflow_gpu.contract import CODE_DIR, bundle_name, join
from airflow_gpu.jobs.spec import JobSpecError

IGNORE_FILE = ".airflowgpuignore"
DEFAULT_MAX_BYTES = 200 * 10**6
# Never shipped, git checkout or not: interpreter caches and version-control internals.
ALWAYS_LEFT_OUT = ("__pycache__", "*.pyc", ".git", IGNORE_FILE)


class BundleError(JobSpecError):
    """The folder cannot be shipped as it is; the message says why and what to do."""


@dataclass(frozen=True)
class Bundle:
    data: bytes
    sha256: str
    files: tuple[str, ...]
    # Present in the folder but not shipped: untracked files of a git checkout.
    left_out: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return bundle_name(self.sha256)


@dataclass(frozen=True)
class StagedBundle:
    uri: str
    sha256: str
    uploaded: bool  # False when the same content was already staged


class Store(Protocol):
    def size(self, uri: str) -> int | None: ...

    def write(self, uri: str, data: bytes, content_type: str = ...) -> None: ...


def _git(folder: Path, *args: str) -> list[str] | None:
    """NUL-separated output of a git command run in ``folder``, or None outside a checkout (or without git)."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return [name for name in done.stdout.decode("utf-8", "surrogateescape").split("\0") if name]


def _left_out_always(relative: str) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in relative.split("/") for pattern in ALWAYS_LEFT_OUT)


def _ignore_patterns(folder: Path) -> list[str]:
    path = folder / IGNORE_FILE
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    """A pattern with a '/' matches the path from the folder's root; one without matches any name in it."""
    parts = relative.split("/")
    for pattern in patterns:
        if "/" in pattern.strip("/"):
            anchored = pattern.lstrip("/")
            if fnmatch.fnmatch(relative, anchored) or any(
                fnmatch.fnmatch("/".join(parts[:i]), anchored) for i in range(1, len(parts))
            ):
                return True
        elif any(fnmatch.fnmatch(part, pattern.lstrip("/")) for part in parts):
            return True
    return False


def select_files(folder: Path) -> tuple[list[str], list[str]]:
    """(files to ship, files left out), as sorted paths relative to ``folder``."""
    tracked = _git(folder, "ls-files", "-z", "--cached")
    if tracked is not None:
        # ls-files lists the index; a tracked file deleted from the work tree is not there to ship.
        present = [name for name in tracked if (folder / name).is_file() or (folder / name).is_symlink()]
        untracked = _git(folder, "ls-files", "-z", "--others", "--exclude-standard") or []
        return sorted(f for f in present if not _left_out_always(f)), sorted(
            f for f in untracked if not _left_out_always(f)
        )
    patterns = _ignore_patterns(folder)
    files: list[str] = []
    for current, dirs, names in os.walk(folder):
        base = Path(current).relative_to(folder)
        dirs[:] = [d for d in dirs if not _left_out_always(d) and not _ignored((base / d).as_posix(), patterns)]
        for name in names:
            relative = (base / name).as_posix()
            if not _left_out_always(relative) and not _ignored(relative, patterns):
                files.append(relative)
    return sorted(files), []


def _check_size(folder: Path, files: list[str], max_bytes: int) -> None:
    sizes = {name: (folder / name).stat().st_size for name in files}
    total = sum(sizes.values())
    if total <= max_bytes:
        return
    largest = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:5]
    named = ", ".join(f"{name} ({_human(size)})" for name, size in largest)
    raise BundleError(
        f"code bundle of {folder} is {_human(total)}, over the {_human(max_bytes)} limit; largest files: "
        f"{named}. Keep data out of the code folder (pass it with --input), list such files in {IGNORE_FILE} "
        "(or leave them untracked by git), or raise the limit."
    )


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _resolved_inside(folder: Path, name: str) -> Path:
    """The file to read for ``name``: a link is shipped as the file it names, only when that file is inside."""
    path = folder / name
    if not path.is_symlink():
        return path
    root = os.path.realpath(folder)
    target = os.path.realpath(path)
    if not target.startswith(root + os.sep) or not os.path.isfile(target):
        raise BundleError(
            f"{name} in {folder} is a link to {os.readlink(path)}, outside the folder (or not a file); a bundle "
            "carries files, not links. Copy the file into the folder, or leave the link out."
        )
    return Path(target)


def pack(folder: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Bundle:
    """The folder's files as one deterministic ``.tar.gz``; BundleError when it cannot be shipped."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise BundleError(f"code folder {folder} does not exist; pass the folder of your project (e.g. --code .)")
    files, left_out = select_files(root)
    if not files:
        raise BundleError(
            f"code folder {folder} has no files to ship (in a git checkout: none tracked; `git add` them)"
        )
    sources = {name: _resolved_inside(root, name) for name in files}
    _check_size(root, files, max_bytes)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in files:
            source = sources[name]
            info = tarfile.TarInfo(name)
            info.size = source.stat().st_size
            info.mode = 0o755 if os.access(source, os.X_OK) else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with source.open("rb") as handle:
                tar.addfile(info, handle)
    packed = io.BytesIO()
    # No file name and mtime 0 in the gzip header: the same files give the same bytes anywhere.
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0) as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    return Bundle(data, hashlib.sha256(data).hexdigest(), tuple(files), tuple(left_out))


def left_out_note(bundle: Bundle, folder: str | Path, shown: int = 5) -> str | None:
    """One line naming the files the folder holds but the bundle leaves out (untracked by git), or None."""
    if not bundle.left_out:
        return None
    names = ", ".join(bundle.left_out[:shown]) + (
        f" and {len(bundle.left_out) - shown} more" if len(bundle.left_out) > shown else ""
    )
    return f"left out of the bundle (not tracked by git in {folder}): {names}; `git add` them to ship them"


def stage_bundle(store: Store, prefix: str, bundle: Bundle) -> StagedBundle:
    """Put the bundle at ``<prefix>/code/<sha256>.tar.gz`` unless that object is already there."""
    uri = join(prefix, f"{CODE_DIR}/{bundle.name}")
    if store.size(uri) == len(bundle.data):
        return StagedBundle(uri, bundle.sha256, uploaded=False)
    store.write(uri, bundle.data, "application/gzip")
    return StagedBundle(uri, bundle.sha256, uploaded=True)


def parse_size(text: str) -> int:
    """``200MB``, ``1.5GB``, ``500k`` or a plain byte count -> bytes (decimal units)."""
    units = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
    cleaned = text.strip().lower()
    number = cleaned.rstrip("kmgb")
    unit = cleaned[len(number) :]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected a size such as 200MB, got {text!r}") from None
    if unit not in units or value <= 0:
        raise ValueError(f"expected a size such as 200MB, got {text!r}")
    return int(value * units[unit])
