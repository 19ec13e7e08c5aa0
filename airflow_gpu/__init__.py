"""airflow-gpu: GPU jobs on AWS Batch as deferrable Airflow tasks.

This module is the provider entry point. It must stay cheap to import: the
Airflow providers manager imports it in every process, and the worker image
imports the package without Airflow installed.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata read by Airflow's ProvidersManager (`airflow providers list`)."""
    return {
        "package-name": "airflow-gpu",
        "name": "airflow-gpu",
        "description": "Deferrable GPU jobs on AWS Batch, watched by one shared poller per triggerer.",
        "versions": [__version__],
        "triggers": [
            {
                "integration-name": "AWS Batch GPU",
                "python-modules": ["airflow_gpu.triggers"],
            }
        ],
        "task-decorators": [
            {"name": "gpu_batch", "class-name": "airflow_gpu.decorators.gpu_batch_task"},
        ],
        "extra-links": [
            "airflow_gpu.links.BatchJobLink",
            "airflow_gpu.links.CloudWatchLogsLink",
        ],
    }
