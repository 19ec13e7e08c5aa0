"""Provider registration, checked with the real `airflow` CLI in a throw-away AIRFLOW_HOME."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import airflow_gpu

# How Airflow discovers the provider, its triggers and extra links.
pytestmark = pytest.mark.airflow_behaviour

AIRFLOW = Path(sys.executable).with_name("airflow")


def airflow_cli(tmp_path: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow-home")
    done = subprocess.run(
        [str(AIRFLOW), *args], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def json_rows(output: str) -> list[dict]:
    # The CLI may print log lines before the JSON document.
    return json.loads(output[output.index("[") :])


def test_airflow_providers_list_shows_airflow_gpu(tmp_path):
    rows = json_rows(airflow_cli(tmp_path, "providers", "list", "-o", "json"))
    ours = [r for r in rows if r["package_name"] == "airflow-gpu"]
    assert ours and ours[0]["version"] == airflow_gpu.__version__


def test_airflow_registers_our_extra_links(tmp_path):
    rows = json_rows(airflow_cli(tmp_path, "providers", "links", "-o", "json"))
    names = {r["extra_link_class_name"] for r in rows}
    assert {"airflow_gpu.links.BatchJobLink", "airflow_gpu.links.CloudWatchLogsLink"} <= names


def test_provider_info_points_at_importable_classes():
    info = airflow_gpu.get_provider_info()
    for path in info["extra-links"]:
        module, name = path.rsplit(".", 1)
        link = getattr(importlib.import_module(module), name)()
        assert link.name
    for trigger in info["triggers"]:
        for module in trigger["python-modules"]:
            assert hasattr(importlib.import_module(module), "GpuBatchJobTrigger")


def test_task_gpu_batch_is_registered_as_a_task_decorator(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow-home")
    code = "from airflow.sdk import task; import airflow_gpu.decorators as d; print(task.gpu_batch is d.gpu_batch_task)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.stdout.strip().splitlines()[-1:] == ["True"], done.stderr[-3000:]
    assert {
        "name": "gpu_batch",
        "class-name": "airflow_gpu.decorators.gpu_batch_task",
    } in airflow_gpu.get_provider_info()["task-decorators"]
