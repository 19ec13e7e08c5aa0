"""Storage keys -> local paths that stay inside their folder, or a refusal naming the key.

Whoever can write to an input prefix chooses its keys. Joined to a local folder as they
are, ``in/../script.py`` or ``in//etc/x`` would land outside it (and could replace the
script about to run). So every key is checked segment by segment before anything is
written, rather than resolved and compared afterwards: a refusal then leaves nothing
behind, and a symlink planted earlier in the folder cannot redirect a later write.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import WorkerError

# Most filesystems (ext4, xfs, overlayfs) refuse longer names with ENAMETOOLONG, mid-download.
MAX_NAME_BYTES = 255


def _refuse(key: str, why: str) -> WorkerError:
    return WorkerError(f"refusing object key {key!r}: {why}; rename the object under the prefix and rerun")


def path_inside(folder: Path, key: str) -> Path:
    """``folder/key`` for a relative, clean key; raises WorkerError naming the key otherwise."""
    if not key:
        raise _refuse(key, "it is empty")
    if "\x00" in key:
        raise _refuse(key, "it contains a NUL byte")
    if key.startswith("/"):
        raise _refuse(key, "it is an absolute path")
    segments = key.split("/")
    for segment in segments:
        if segment == "":
            raise _refuse(key, "it has an empty path segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise _refuse(key, f"it has a '{segment}' segment, which would leave its folder")
        if len(segment.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise _refuse(key, f"a name in it is longer than {MAX_NAME_BYTES} bytes")
    path = folder.joinpath(*segments)
    # A symlink already in the folder could still point a clean key elsewhere.
    root = os.path.realpath(folder)
    parent = os.path.realpath(path.parent)
    if parent != root and not parent.startswith(root + os.sep):
        raise _refuse(key, "its folder is a link that leads outside the working folder")
    if path.is_symlink():
        raise _refuse(key, "a link already sits at its place in the working folder")
    return path


def check_keys(folder: Path, keys: list[str]) -> list[Path]:
    """All keys at once, so one bad key refuses the lot before the first byte is written."""
    return [path_inside(folder, key) for key in keys]


def files_to_publish(folder: Path) -> list[Path]:
    """Regular files under ``folder``, refusing any link that leads outside it (never followed out).

    A link that stays inside is published as the file it names; a link to a folder is not
    walked, since what it shows is already published under its real place.
    """
    root = os.path.realpath(folder)
    found: list[Path] = []
    for current, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(current, name)
            if not path.is_symlink():
                if name in files:
                    found.append(path)
                continue
            target = os.path.realpath(path)
            relative = path.relative_to(folder).as_posix()
            if target != root and not target.startswith(root + os.sep):
                raise WorkerError(
                    f"output/{relative} is a link to {os.readlink(path)}, outside output/; nothing is published. "
                    "Write the file itself into output/ instead of a link"
                )
            if os.path.isfile(target):
                found.append(path)
    return sorted(found)
