"""What a new user reads before installing: the install line works from a checkout with the extra
local jobs need, the docs say Airflow comes with the package, the image's build context leaves the
heavy folders out, and no document points at a file the repository does not have."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_doc_installs_a_package_that_no_index_serves():
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            assert not re.search(r"pip install\s+airflow-gpu(\s|$|\[)", line), f"{doc.name}: {line}"


def test_the_data_scientists_install_brings_the_worker_extra_and_says_airflow_comes_with_it():
    text = (ROOT / "docs" / "data_scientists.md").read_text()
    assert "pip install -e '.[worker]'" in text
    assert "install Apache Airflow as a dependency" in text


def test_the_image_build_context_leaves_out_what_the_image_does_not_need():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".airflow", ".demo", "tests"} <= ignored
    copied = re.findall(r"^COPY (.+) \S+$", (ROOT / "container" / "Dockerfile").read_text(), re.M)
    for sources in copied:
        for source in sources.split():
            assert source.split("/")[0] not in ignored, source  # the image's own inputs stay in the context


def test_every_design_reference_points_at_a_file_that_exists():
    for path in [*DOCS, ROOT / "pyproject.toml"]:
        for name in re.findall(r"(?<![\w/])((?:docs/)?[Dd][Ee][Ss][Ii][Gg][Nn]\.md)", path.read_text()):
            target = (path.parent / name) if (path.parent / name).exists() else ROOT / name
            assert target.exists(), f"{path.name} refers to {name}, which is not in the repository"
