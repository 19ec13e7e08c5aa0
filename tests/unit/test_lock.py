"""The locked environment: the image's own pins agree with uv.lock, and make installs exactly the lock."""

from __future__ import annotations

import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tests.support.paths import ROOT


def _locked_versions() -> dict[str, set[str]]:
    versions: dict[str, set[str]] = {}
    for entry in tomllib.loads((ROOT / "uv.lock").read_text())["package"]:
        versions.setdefault(entry["name"], set()).add(entry.get("version"))
    return versions


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_images_pins_agree_with_the_lock_for_every_package_they_share():
    locked = _locked_versions()
    pins = {}
    for line in (ROOT / "container" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_normalized(name)] = version
    shared = {name for name in pins if name in locked}
    # numpy, scipy, pyarrow, implicit, aiobotocore, botocore at least: the worker's own libraries.
    assert {"numpy", "scipy", "pyarrow", "implicit", "aiobotocore", "botocore"} <= shared
    assert {name: pins[name] for name in shared if pins[name] not in locked[name]} == {}


def test_the_lock_pins_what_the_suite_was_written_against():
    locked = _locked_versions()
    for package in ("moto", "apache-airflow", "aiobotocore", "implicit", "pytest", "ruff", "mypy", "uv"):
        assert len(locked.get(package, ())) == 1, package


def test_make_installs_the_lock_as_it_is_and_moves_it_only_on_purpose():
    makefile = (ROOT / "Makefile").read_text()
    [install] = [line for line in makefile.splitlines() if "sync" in line and "$(UV)" in line]
    assert "--frozen" in install  # never a fresh resolution on a newcomer's machine
    assert "uv.lock" in makefile.split("$(STAMP):", 1)[1].splitlines()[0]  # a changed lock reinstalls
    lock_target = makefile.split("\nlock:", 1)[1].split("\n\n", 1)[0]
    assert "lock --upgrade" in lock_target
    uv_pin = re.search(r"^UV_VERSION := (\S+)$", makefile, re.M).group(1)
    assert _locked_versions()["uv"] == {uv_pin}  # the bootstrap uv is the one the lock keeps
