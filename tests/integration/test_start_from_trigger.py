"""GpuBatchOperator(start_from_trigger=True): refusals at parse time, and the start trigger against moto.

The trigger runs here as a triggerer runs it (run(), then cleanup()); the job system and S3 are a
moto server, so SubmitJob is counted where it arrives. The whole path through a real scheduler and
triggerer is tests/e2e/test_e2e_zero_slots.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from airflow.sdk import DAG, Asset
from airflow.triggers.base import TaskFailedEvent, TaskSuccessEvent, TriggerEvent

from airflow_gpu.jobs.spec import JobSpecError
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.operators import JOB_ID_XCOM_KEY, GpuBatchOperator
from airflow_gpu.triggers.start import CLASSPATH, GpuBatchStartTrigger
from tests.support.gpu_batch_testing import RUN_ID, SECRET_KEY, FakeTaskInstance
from tests.support.waiting import wait_until

pytestmark = pytest.mark.airflow_behaviour

BUCKET = "lake"
OUTPUT = f"s3://{BUCKET}/recommendations/run-1/"


@pytest.fixture
async def closed_after():
    yield
    await JobWatcher.close_all()


def operator(**kwargs: Any) -> GpuBatchOperator:
    base = dict(
        task_id="train",
        job_queue="gpu-queue",
        job_definition="gpu-def",
        command=["als", "--output", OUTPUT],
        poll_interval=0.1,
        start_from_trigger=True,
    )
    return GpuBatchOperator(**{**base, **kwargs})


def start_trigger(op: GpuBatchOperator, map_index: int = -1) -> GpuBatchStartTrigger:
    """The trigger the scheduler creates from the operator's start_trigger_args, with its task instance."""
    args = op.start_trigger_args
    assert args.trigger_cls == CLASSPATH
    kwargs = json.loads(json.dumps(args.trigger_kwargs))  # what the Trigger row stores
    trigger = GpuBatchStartTrigger(**kwargs)
    trigger.task_instance = FakeTaskInstance(map_index=map_index)
    return trigger


async def events_of(trigger: GpuBatchStartTrigger, timeout: float = 30) -> list[TriggerEvent]:
    async def drain():
        return [event async for event in trigger.run()]

    try:
        return await asyncio.wait_for(drain(), timeout)
    finally:
        await trigger.cleanup()


def put_manifest(moto_aws, **summary: Any) -> None:
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    manifest = {
        "format": "airflow-gpu-als",
        "complete": True,
        "run_id": "w-123",
        "root": "",
        "finished_at": "2026-12-01T00:00:00Z",
        "summary": {"users": 3, "items": 2, "interactions": 5, "recommendations": 6, **summary},
        "datasets": {"recommendations": {"files": 1, "rows": 6, "bytes": 100}},
        "files": [],
    }
    s3.put_object(Bucket=BUCKET, Key="recommendations/run-1/manifest.json", Body=json.dumps(manifest).encode())


# -- parse time ---------------------------------------------------------------------------------


def test_start_trigger_args_carry_the_unrendered_fields_and_no_secret():
    op = operator(command=["als", "--output", "{{ params.out }}"], gpus="{{ params.gpus }}", timeout=3600)
    args = op.start_trigger_args
    assert op.start_from_trigger is True
    assert args.next_method == "execute_complete"
    kwargs = args.trigger_kwargs
    assert kwargs["command"] == ["als", "--output", "{{ params.out }}"]  # rendered by the triggerer, not here
    assert kwargs["gpus"] == "{{ params.gpus }}"
    assert kwargs["timeout"] == 3600 and kwargs["end_on_trigger"] is True
    assert SECRET_KEY not in json.dumps(kwargs)
    # Every template field the trigger takes is an attribute of the trigger, so the triggerer renders it.
    taken = set(kwargs) & set(GpuBatchOperator.template_fields)
    assert taken >= {"command", "gpus", "output_uri", "backend", "job_queue", "environment", "tags"}
    assert all(hasattr(GpuBatchStartTrigger(**kwargs), field) for field in taken)


def test_a_task_with_outlets_does_not_end_on_the_triggerer():
    assert (
        operator(outlets=[Asset("s3://lake/recommendations/")]).start_trigger_args.trigger_kwargs["end_on_trigger"]
        is False
    )


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"deferrable": False}, "needs deferrable=True"),
        ({"reattach": False}, "needs reattach=True"),
    ],
)
def test_parameters_that_need_a_worker_are_refused_at_parse_time(kwargs, says):
    with pytest.raises(JobSpecError, match=says):
        operator(**kwargs)


def test_an_upstream_xcom_is_refused_at_parse_time():
    from airflow.sdk import task

    with DAG("xcom_in", schedule=None):

        @task
        def prepare() -> list[str]:
            return ["als"]

        with pytest.raises(JobSpecError, match="command come.s. from an upstream task's XCom"):
            operator(command=prepare())


def test_the_decorator_refuses_start_from_trigger_at_parse_time():
    from airflow_gpu.decorators import gpu_batch_task

    with DAG("decorated", schedule=None):

        @gpu_batch_task(job_queue="q", job_definition="d", staging_prefix="s3://b/s/", start_from_trigger=True)
        def fn() -> int:
            return 1

        with pytest.raises(JobSpecError, match="cannot start_from_trigger: it stages the function"):
            fn()


# -- on the triggerer ---------------------------------------------------------------------------


async def test_a_rerun_trigger_finds_its_job_and_never_submits_a_second(moto_aws, gpu_batch, aws_conn, closed_after):
    moto_aws.batch.hold("RUNNING")
    op = operator(job_queue=gpu_batch["job_queue"], job_definition=gpu_batch["job_definition"], output_uri=None)
    first = start_trigger(op)
    running = asyncio.create_task(events_of(first))
    await wait_until(lambda: moto_aws.log.calls["submitjob"] == 1 and moto_aws.log.calls["describejobs"] >= 1)
    # The triggerer stops (or hands the trigger over): run() is cancelled and cleanup() runs; the job lives on.
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert moto_aws.log.terminated == []
    [job_id] = moto_aws.batch.wait_for_jobs(1)
    # The next triggerer runs the trigger again from its kwargs, as stored in the database.
    second = start_trigger(op)
    again = asyncio.create_task(events_of(second))
    await wait_until(lambda: second.job_id == job_id)
    moto_aws.batch.set_status(job_id, "SUCCEEDED")
    [event] = await again
    assert moto_aws.log.calls["submitjob"] == 1
    assert isinstance(event, TaskSuccessEvent)
    assert event.xcoms[JOB_ID_XCOM_KEY] == job_id
    assert event.xcoms["return_value"]["job_id"] == job_id and event.xcoms["return_value"]["status"] == "SUCCEEDED"
    assert "cost_basis" in event.xcoms["return_value"]["cost"]  # the bill, made on the triggerer too
    assert "reused" not in event.xcoms["return_value"]["cost"]


async def test_a_retry_on_the_triggerer_that_finds_its_job_succeeded_bills_it_marked_reused(
    moto_aws, gpu_batch, aws_conn, closed_after
):
    moto_aws.batch.hold("RUNNING")
    op = operator(job_queue=gpu_batch["job_queue"], job_definition=gpu_batch["job_definition"], output_uri=None)
    trigger = start_trigger(op)
    first = asyncio.create_task(events_of(trigger))
    await wait_until(lambda: bool(trigger.job_id))
    job_id = trigger.job_id
    moto_aws.batch.set_status(job_id, "SUCCEEDED")
    [fresh] = await first
    [reused] = await events_of(start_trigger(op))  # the next try: the job is found SUCCEEDED, not watched
    assert moto_aws.log.calls["submitjob"] == 1 and isinstance(reused, TaskSuccessEvent)
    fresh_cost, reused_cost = (e.xcoms["return_value"]["cost"] for e in (fresh, reused))
    assert "reused" not in fresh_cost and reused_cost["reused"] is True
    assert (
        reused_cost.keys() - {"reused"} == fresh_cost.keys() and reused_cost["cost_basis"] == fresh_cost["cost_basis"]
    )


async def test_success_ends_on_the_triggerer_with_the_manifest_read_there(moto_aws, gpu_batch, aws_conn, closed_after):
    put_manifest(moto_aws, precision_at_k={"k": 10, "als": 0.3, "popularity": 0.1})
    op = operator(job_queue=gpu_batch["job_queue"], job_definition=gpu_batch["job_definition"], output_uri=OUTPUT)
    [event] = await events_of(start_trigger(op, map_index=3))
    assert isinstance(event, TaskSuccessEvent)
    manifest = event.xcoms["return_value"]["manifest"]
    assert manifest["run_id"] == "w-123" and manifest["manifest_uri"] == OUTPUT + "manifest.json"
    assert manifest["summary"]["precision_at_k"]["als"] == 0.3
    [submitted] = moto_aws.log.submitted
    assert submitted["tags"]["airflow:map_index"] == "3" and submitted["tags"]["airflow:run_id"] == RUN_ID
    assert SECRET_KEY not in json.dumps(event.xcoms)


async def test_a_success_without_a_manifest_fails_the_task_on_the_triggerer(
    moto_aws, gpu_batch, aws_conn, closed_after
):
    moto_aws.client("s3").create_bucket(Bucket=BUCKET)
    op = operator(job_queue=gpu_batch["job_queue"], job_definition=gpu_batch["job_definition"], output_uri=OUTPUT)
    [event] = await events_of(start_trigger(op))
    assert isinstance(event, TaskFailedEvent)
    assert event.xcoms[JOB_ID_XCOM_KEY] == moto_aws.batch.wait_for_jobs(1)[0]


async def test_a_failed_job_resumes_on_a_worker_with_the_job_event(moto_aws, gpu_batch, aws_conn, closed_after):
    moto_aws.batch.hold("RUNNING")
    op = operator(job_queue=gpu_batch["job_queue"], job_definition=gpu_batch["job_definition"])
    running = asyncio.create_task(events_of(start_trigger(op)))
    await wait_until(lambda: moto_aws.log.calls["submitjob"] == 1)
    [job_id] = moto_aws.batch.wait_for_jobs(1)
    moto_aws.batch.set_status(job_id, "FAILED", reason="Essential container in task exited", exit_code=3)
    [event] = await running
    assert type(event) is TriggerEvent
    assert (
        event.payload["status"] == "FAILED" and event.payload["exit_code"] == 3 and event.payload["reattached"] is False
    )


async def test_with_outlets_success_resumes_on_a_worker_carrying_the_summary(
    moto_aws, gpu_batch, aws_conn, closed_after
):
    put_manifest(moto_aws)
    op = operator(
        job_queue=gpu_batch["job_queue"],
        job_definition=gpu_batch["job_definition"],
        output_uri=OUTPUT,
        outlets=[Asset("s3://lake/recommendations/")],
    )
    [event] = await events_of(start_trigger(op))
    assert type(event) is TriggerEvent
    assert event.payload["status"] == "SUCCEEDED" and event.payload["manifest"]["run_id"] == "w-123"


async def test_fields_that_render_wrong_fail_the_task_before_any_submit(moto_aws, gpu_batch, aws_conn, closed_after):
    op = operator(
        job_queue=gpu_batch["job_queue"], job_definition=gpu_batch["job_definition"], gpus="{{ params.gpus }}"
    )
    trigger = start_trigger(op)
    trigger.gpus = "many"  # as a template could render
    [event] = await events_of(trigger)
    assert isinstance(event, TaskFailedEvent)
    assert moto_aws.log.calls["submitjob"] == 0


# -- the worker's resume: Asset events --------------------------------------------------------


class OutletEvents(dict):
    """Airflow's context["outlet_events"]: an accessor per asset, made on first use."""

    def __missing__(self, asset):
        class Accessor:
            extra: dict = {}

        self[asset] = Accessor()
        return self[asset]


def test_the_resume_gives_every_asset_outlet_the_manifest_summary_as_extra(aws_conn):  # the bill's DescribeJobs: moto
    asset = Asset("s3://lake/recommendations/")
    op = operator(output_uri=OUTPUT, outlets=[asset])
    summary = {
        "run_id": "w-123",
        "output_uri": OUTPUT,
        "manifest_uri": OUTPUT + "manifest.json",
        "finished_at": "t",
        "summary": {
            "users": 3,
            "items": 2,
            "interactions": 5,
            "recommendations": 6,
            "precision_at_k": {"k": 10, "als": 0.3, "popularity": 0.1},
        },
    }
    event = {"job_id": "j-1", "status": "SUCCEEDED", "attempts": 1, "exit_code": 0, "manifest": summary}
    context = {"ti": FakeTaskInstance(), "outlet_events": OutletEvents()}
    result = op.execute_complete(context, event)
    assert result["manifest"] == summary  # the trigger's read, not a second one (nothing is at OUTPUT)
    extra = context["outlet_events"][asset].extra
    assert extra["run_id"] == "w-123" and extra["manifest_uri"] == OUTPUT + "manifest.json"
    assert extra["counts"] == {"users": 3, "items": 2, "interactions": 5, "recommendations": 6}
    assert extra["precision_at_k"] == {"k": 10, "als": 0.3, "popularity": 0.1}


def test_a_mapped_task_has_no_start_arguments_so_it_starts_on_a_worker():
    """Airflow 3.3 takes a mapped task's StartTriggerArgs from partial() or the class, never from an
    instance: without them the scheduler queues the task for a worker (documented fallback)."""
    with DAG("mapped", schedule=None):
        mapped = GpuBatchOperator.partial(
            task_id="train", job_queue="q", job_definition="d", start_from_trigger=True
        ).expand(command=[["als", "--shard", "0"], ["als", "--shard", "1"]])
    assert mapped.start_from_trigger is True
    assert mapped.start_trigger_args is None
