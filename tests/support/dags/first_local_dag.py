"""A new user's first DAG on the local backend, written with nothing the docs do not give: no
staging prefix, no poll interval, a plain command. For tests/support/first_dag_driver.py."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_gpu.operators import GpuBatchOperator

with DAG("first_local_dag", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

    @task.gpu_batch(backend="local", retries=0)
    def add(a: int, b: int) -> int:
        print("adding", a, b, flush=True)
        return a + b

    echo = GpuBatchOperator(task_id="echo", command=["echo", "FAST-JOB-OUTPUT"], backend="local", retries=0)

    add(2, 3) >> echo
