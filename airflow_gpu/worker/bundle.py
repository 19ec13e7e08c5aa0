"""``--code URI``: a project's files, unpacked under the job's folder before anything runs.

The URI names one of three things:

- a staged bundle, ``.../code/<sha256>.tar.gz`` (what ``airflow-gpu submit --code`` and
  ``@task.gpu_batch(code=...)`` upload): its bytes must hash to the digest its name declares,
  and to ``--sha256`` when given, or nothing is unpacked;
- an ``s3://`` prefix (a repository synced to S3): every object under it;
- a local folder (or a local ``.tar.gz``).

Every member's path goes through the same rules as input keys (:mod:`.safe_paths`): no ``..``,
no absolute path, nothing through a link. A bundle is a tree of regular files: a link, a
device file or a pipe refuses the whole bundle. All of it is checked before the first file is
written, so a refused bundle leaves nothing behind and nothing runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import stat
import tarfile
from pathlib import Path

from ..contract import BUNDLE_SUFFIX, bundle_digest, local_path
from .errors import WorkerError
from .safe_paths import path_inside
from .storage import open_store

log = logging.getLogger("airflow_gpu.worker")

# Never copied from a local folder: interpreter caches and version-control internals.
_SKIPPED_DIRS = {".git", "__pycache__"}


class BundleRefused(WorkerError):
    """The code cannot be trusted or placed: nothing of it was written and nothing ran."""


def _verify(uri: str, data: bytes, expected: str | None) -> str:
    actual = hashlib.sha256(data).hexdigest()
    declared = bundle_digest(uri)
    for want, source in ((declared, "its name"), (expected.lower() if expected else None, "--sha256")):
        if want and actual != want:
            raise BundleRefused(
                f"code bundle {uri} does not match {source}: expected sha256 {want}, got {actual}; it was changed "
                "after it was staged, so nothing was run. Submit the code again."
            )
    return actual


def _members(uri: str, tar: tarfile.TarFile) -> list[tuple[str, tarfile.TarInfo]]:
    """Every member as (clean relative name, info), or BundleRefused naming the first bad one."""
    try:
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleRefused(
            f"code bundle {uri} is not a readable .tar.gz ({exc}); build it with airflow-gpu submit --code"
        ) from None
    named: list[tuple[str, tarfile.TarInfo]] = []
    for member in members:
        name = member.name.removeprefix("./")
        if member.issym() or member.islnk():
            raise BundleRefused(
                f"code bundle {uri}: {member.name!r} is a link (to {member.linkname!r}); a bundle carries files only, so nothing was run"
            )
        if not (member.isfile() or member.isdir()):
            raise BundleRefused(
                f"code bundle {uri}: {member.name!r} is a device file or pipe, not a file; nothing was run"
            )
        if name in ("", "."):
            continue
        named.append((name.rstrip("/") if member.isdir() else name, member))
    return named


def _extract(uri: str, data: bytes, dest: Path) -> int:
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleRefused(
            f"code bundle {uri} is not a readable .tar.gz ({exc}); build it with airflow-gpu submit --code"
        ) from None
    with tar:
        return _write_members(uri, tar, dest)


def _write_members(uri: str, tar: tarfile.TarFile, dest: Path) -> int:
    named = _members(uri, tar)
    try:
        # All paths first: one bad name refuses the bundle before a byte is written.
        paths = [path_inside(dest, name) for name, _ in named]
    except WorkerError as exc:
        raise BundleRefused(f"code bundle {uri} refused, nothing was run: {exc}") from None
    count = 0
    for (_, member), path in zip(named, paths):
        if member.isdir():
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None  # a regular file
        path.write_bytes(source.read())
        path.chmod(0o755 if member.mode & 0o111 else 0o644)
        count += 1
    return count


def _copy_folder(source: Path, dest: Path) -> int:
    """A local folder's regular files; a link is copied as the file it names only when that file is inside."""
    root = os.path.realpath(source)
    planned: list[tuple[str, str]] = []
    for current, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        for name in sorted(files):
            path = os.path.join(current, name)
            relative = Path(path).relative_to(source).as_posix()
            real = os.path.realpath(path)
            if real != root and not real.startswith(root + os.sep):
                raise BundleRefused(
                    f"code folder {source}: {relative} is a link that leads outside it; nothing was run"
                )
            mode = os.stat(real).st_mode
            if not stat.S_ISREG(mode):
                raise BundleRefused(
                    f"code folder {source}: {relative} is a device file or pipe, not a file; nothing was run"
                )
            planned.append((relative, real))
    try:
        targets = [path_inside(dest, relative) for relative, _ in planned]
    except WorkerError as exc:
        raise BundleRefused(f"code folder {source} refused, nothing was run: {exc}") from None
    for (_, real), target in zip(planned, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(real).read_bytes())
        target.chmod(0o755 if os.access(real, os.X_OK) else 0o644)
    return len(planned)


async def _read_bundle(uri: str, endpoint_url: str | None) -> bytes:
    if uri.startswith("s3://"):
        folder, _, name = uri.rpartition("/")
        async with open_store(folder + "/", endpoint_url=endpoint_url) as store:
            data = await store.read_small(name)
    else:
        path = local_path(uri)
        data = await asyncio.to_thread(path.read_bytes) if path.is_file() else None
    if data is None:
        raise WorkerError(f"code bundle {uri} not found; check --code (the staging prefix may have been cleaned up)")
    return data


async def _fetch_prefix(uri: str, dest: Path, endpoint_url: str | None) -> int:
    """Every object under an s3:// prefix (a repository synced with ``aws s3 sync``), dot and underscore files included."""
    async with open_store(uri, endpoint_url=endpoint_url) as store:
        names = [name for name in await store.names_under("") if not name.endswith("/")]
        if not names:
            raise WorkerError(
                f"no objects under {uri}; check --code (an s3:// prefix, a staged bundle or a local folder)"
            )
        try:
            paths = [path_inside(dest, name) for name in names]
        except WorkerError as exc:
            raise BundleRefused(f"code under {uri} refused, nothing was run: {exc}") from None
        for name, path in zip(names, paths):
            data = await store.read_small(name)
            if data is None:
                raise WorkerError(f"{uri}{name} vanished while the code was fetched; rerun once the sync has finished")
            path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(path.write_bytes, data)
    return len(names)


async def fetch_code(uri: str, dest: Path, *, endpoint_url: str | None = None, sha256: str | None = None) -> Path:
    """Unpack ``uri`` into ``dest`` (created, must be empty) and return it: the code's root."""
    dest.mkdir(parents=True, exist_ok=True)
    is_archive = uri.rstrip("/").endswith(BUNDLE_SUFFIX)
    if sha256 and not is_archive:
        raise WorkerError(
            f"--sha256 pins a bundle (.../<sha256>{BUNDLE_SUFFIX}), but --code {uri} is a folder; drop --sha256"
        )
    if is_archive:
        data = await _read_bundle(uri, endpoint_url)
        digest = _verify(uri, data, sha256)
        count = await asyncio.to_thread(_extract, uri, data, dest)
        log.info("code: %d files from bundle %s (sha256 %s, %.1f MB)", count, uri, digest[:12], len(data) / 1e6)
    elif uri.startswith("s3://"):
        count = await _fetch_prefix(uri, dest, endpoint_url)
        log.info("code: %d files from %s", count, uri)
    else:
        source = local_path(uri)
        if not source.is_dir():
            raise WorkerError(f"--code {uri}: no such folder; pass a staged bundle, an s3:// prefix or a local folder")
        count = await asyncio.to_thread(_copy_folder, source, dest)
        log.info("code: %d files from %s", count, source)
    return dest
