"""The rules of the house on imports, checked on every `make test`.

import-linter ([tool.importlinter] in pyproject.toml) proves the wings never import each
other, through any chain of our own modules. The checks here cover what it cannot say:
that every module belongs to a wing in its config, that the contract needs the standard
library only, and that the benchmarks stand on the package rather than on the tests.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import airflow_gpu

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(airflow_gpu.__file__).resolve().parent
BIN = Path(sys.executable).parent


def imported_modules(path: Path) -> set[str]:
    """Absolute names of what a file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module or "")
    return names


def test_lint_imports_keeps_every_contract():
    done = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"{len(contracts)} kept, 0 broken" in done.stdout  # every contract written down was checked


def test_every_module_of_the_package_belongs_to_a_wing():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    airflow_wing = set(config[1]["source_modules"])
    assert set(config[0]["forbidden_modules"]) == airflow_wing | {"airflow"}
    assert set(config[2]["forbidden_modules"]) == airflow_wing | {"airflow", "airflow_gpu.worker"}
    tops = {
        f"airflow_gpu.{p.stem if p.is_file() else p.name}"
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert tops - {"airflow_gpu.worker", "airflow_gpu.contract"} == airflow_wing


def test_the_contract_needs_the_standard_library_only():
    imported = imported_modules(PACKAGE / "contract.py")
    assert imported, "the contract's imports were not read"
    assert {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names} == set()


def test_the_package_root_imports_nothing_of_either_wing():
    assert {m for m in imported_modules(PACKAGE / "__init__.py") if m.startswith("airflow")} == set()


def test_benchmarks_import_the_package_and_the_harnesses_not_the_tests():
    """benchmarks/ may use the harnesses in tests/support (moto, PostgreSQL), never a test module."""
    found = {
        (path.name, name)
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
        for name in imported_modules(path)
        if name.startswith("tests") and not name.startswith("tests.support")
    }
    assert found == set(), found
    harness_users = {
        path.name
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
        if any(name.startswith("tests.support") for name in imported_modules(path))
    }
    assert harness_users == {"triggerer_scale.py", "triggerer_airflow.py"}, harness_users


def test_no_test_module_imports_another():
    """What two test modules share lives in tests/support."""
    tiers = [ROOT / "tests" / tier for tier in ("unit", "integration", "e2e")]
    test_modules = {p.stem for tier in tiers for p in tier.glob("test_*.py")}
    assert len(test_modules) > 50, "the test modules were not found"
    found = {
        (path.name, name)
        for tier in tiers
        for path in sorted(tier.glob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[-1] in test_modules or name.split(".")[0] in test_modules
    }
    assert found == set(), found
