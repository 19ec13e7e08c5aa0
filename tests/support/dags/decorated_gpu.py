"""A DAG with a ``@task.gpu_batch`` task, for tests/support/decorated_dag_driver.py (settings from its environment).

An upstream task's list goes into the decorated function as an XCom; its dict comes back with
multiple_outputs, and one key of it goes on, as an XCom, to a downstream task.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, task

with DAG("decorated_gpu", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

    @task
    def sizes() -> list[int]:
        return [3, 4]

    @task.gpu_batch(
        job_queue=os.environ.get("DECORATED_QUEUE", "local"),
        job_definition=os.environ.get("DECORATED_DEFINITION", "local"),
        backend=os.environ.get("DECORATED_BACKEND", "local"),
        staging_prefix=os.environ.get("DECORATED_STAGING"),
        poll_interval=0.2,
        multiple_outputs=True,
        retries=0,
    )
    def squares(ns: list[int], label: str) -> dict:
        import platform

        print("squaring", ns, flush=True)
        return {"total": sum(n * n for n in ns), "label": label, "python": platform.python_version()}

    @task
    def report(total: int) -> str:
        return f"total={total}"

    report(squares(sizes(), label="dag-test")["total"])
