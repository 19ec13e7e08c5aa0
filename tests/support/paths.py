"""Where things are, for tests and the harness: the repository root and its folders."""

from __future__ import annotations

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent
BENCHMARKS = ROOT / "benchmarks"
DAGS = ROOT / "dags"
#: The environment variable naming a folder all xdist workers of one test run share (set by the plugin).
SHARED_TMP_ENV = "AIRFLOW_GPU_TESTS_SHARED_TMP"
