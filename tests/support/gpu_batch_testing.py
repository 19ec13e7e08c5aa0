"""Helpers for the operator, trigger and watcher tests: an Airflow AWS connection pointing at the
moto server, a stand-in task instance, a stand-in for a trigger's log, and a way to run a
trigger to its event.

Import the fixtures with ``from gpu_batch_testing import aws_conn, fast_watcher  # noqa: F401``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from airflow_gpu.jobs.aws.backend import AwsBatchBackend
from airflow_gpu.jobs.backoff import RetryPolicy
from airflow_gpu.jobs.blocking import run_blocking
from airflow_gpu.jobs.lease import ClientLease


class LineLog:
    """Stands in for a trigger's ``self.log``: the relayed container lines, in the order logged."""

    def __init__(self) -> None:
        self.records: list[str] = []

    def info(self, message: str, *args: object) -> None:
        self.records.append(message % args if args else message)

    warning = error = debug = info

    def relayed(self, job_id: str) -> list[str]:
        """Container lines only, without the trigger's own lines about the job."""
        own = f"Job {job_id} is "
        return [line for r in self.records if not r.startswith(own) for line in r.split("\n")]


# A recognisable secret: it must never show up in trigger kwargs or events.
SECRET_KEY = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET"
RUN_ID = "manual__2026-01-01T00:00:00+00:00"


@pytest.fixture
def fast_watcher(monkeypatch):
    """Short grace period and backoff, so tests that wait on them stay fast."""
    monkeypatch.setattr(ClientLease, "grace_period", 0.2)
    monkeypatch.setattr(AwsBatchBackend, "retry_policy", RetryPolicy(base=0.05, cap=0.4, attempts=6))


@pytest.fixture
def aws_conn(moto_aws, monkeypatch, fast_watcher) -> dict[str, Any]:
    """``aws_default`` as an Airflow connection: credentials, region and endpoint_url in its extras."""
    return use_aws_connection(monkeypatch, moto_aws.endpoint_url, moto_aws.region)


def use_aws_connection(monkeypatch, endpoint_url: str, region: str) -> dict[str, Any]:
    """Make ``aws_default`` the test credentials at ``endpoint_url`` (moto, or a proxy in front of it)."""
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": SECRET_KEY,
        "extra": {"endpoint_url": endpoint_url, "region_name": region},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
    return conn


class FakeTaskInstance:
    """What the operator uses of a RuntimeTaskInstance: its ids and XCom."""

    def __init__(self, dag_id: str = "gpu_dag", task_id: str = "train", run_id: str = RUN_ID, map_index: int = -1):
        self.dag_id = dag_id
        self.task_id = task_id
        self.run_id = run_id
        self.map_index = map_index
        self.try_number = 1
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value", map_indexes: Any = None, **_: Any) -> Any:
        assert task_ids in (None, self.task_id) and map_indexes in (None, self.map_index)
        return self.xcoms.get(key)


def make_context(ti: FakeTaskInstance | None = None) -> dict[str, Any]:
    ti = ti or FakeTaskInstance()
    return {"ti": ti, "task_instance": ti, "run_id": ti.run_id}


async def collect_events(trigger, timeout: float = 30) -> list[dict[str, Any]]:
    async def drain():
        return [event.payload async for event in trigger.run()]

    try:
        return await asyncio.wait_for(drain(), timeout)
    finally:
        await trigger.cleanup()


def in_triggerer(trigger, ti: FakeTaskInstance | None = None):
    """The trigger as a triggerer runs it: with its task instance set. Without one a trigger runs
    inline (``dag.test``), where it closes its loop's idle clients as it fires instead of keeping
    them through the grace period for the next trigger."""
    trigger.task_instance = ti or FakeTaskInstance()
    return trigger


def fire(trigger, timeout: float = 30) -> dict[str, Any]:
    """Run a trigger on its own loop, as a triggerer would, and return its one event."""
    events = run_blocking(lambda: collect_events(trigger, timeout))
    assert len(events) == 1, events
    return events[0]


def submit_raw(moto_aws, gpu_batch, name: str = "raw-job", **kwargs: Any) -> str:
    return moto_aws.client("batch").submit_job(
        jobName=name, jobQueue=gpu_batch["job_queue"], jobDefinition=gpu_batch["job_definition"], **kwargs
    )["jobId"]


def put_log_lines(moto_aws, group: str, stream: str, lines: list[str]) -> None:
    logs = moto_aws.client("logs")
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    base = int(time.time() * 1000) - len(lines)  # CloudWatch rejects events older than 14 days
    logs.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[{"timestamp": base + i, "message": line} for i, line in enumerate(lines)],
    )
