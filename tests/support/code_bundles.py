"""Projects, wheels and hostile archives for the code-bundle tests, built on the spot (no network)."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path


def two_module_project(root: Path) -> Path:
    """``pkg/helper.py`` and ``pkg/train.py`` (which imports it), plus a top-level ``train.py`` that does too."""
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "helper.py").write_text("def greet(who):\n    return f'hello {who} from helper'\n")
    (root / "pkg" / "train.py").write_text(
        "import os, sys\nfrom pkg.helper import greet\nprint(greet('module'), sys.argv[1:])\n"
        "open(os.path.join(os.environ['OUTPUT_DIR'], 'greeting.txt'), 'w').write(greet('module'))\n"
    )
    (root / "train.py").write_text(
        "import os\nfrom pkg.helper import greet\nprint(greet('script'))\n"
        "open(os.path.join(os.environ['OUTPUT_DIR'], 'greeting.txt'), 'w').write(greet('script'))\n"
    )
    return root


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(folder: Path, name: str, version: str, module_source: str) -> Path:
    """A pure-Python wheel ``name-version-py3-none-any.whl`` holding one module ``name``; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_source.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: airflow-gpu-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [_record_line(n, d) for n, d in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in files.items():
            wheel.writestr(member, data)
    return path


def tar_gz(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A .tar.gz of (name, bytes) files and ready-made TarInfo entries (links, devices), in order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def hostile_entry(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info
