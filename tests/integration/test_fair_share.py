"""share_identifier and scheduling_priority (Batch fair-share queues) reach SubmitJob on every path.

The moto server's SubmitJob handler is where they are read back (tests/support/moto_aws.py records
the request): moto 5.2.6 neither stores a job's shareIdentifier nor its schedulingPriority, so
DescribeJobs cannot show them, and it enforces no fair-share policy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred
from airflow.triggers.base import TaskSuccessEvent

from airflow_gpu.decorators import GpuBatchDecoratedOperator
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.operators import GpuBatchOperator
from airflow_gpu.triggers import GpuBatchStartTrigger
from tests.support.gpu_batch_testing import FakeTaskInstance, make_context

CLI = Path(sys.executable).with_name("airflow-gpu")
FAIR_SHARE = {"share_identifier": "recsys", "scheduling_priority": 70}
pytestmark = pytest.mark.timeout(300)


def sent_share(moto_aws) -> tuple[str | None, int | None]:
    sent = moto_aws.log.submitted[-1]
    return sent["shareIdentifier"], sent["schedulingPriorityOverride"]


def test_the_operator_submits_its_share_and_priority(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNABLE")
    op = GpuBatchOperator(
        task_id="train",
        job_queue=gpu_batch["job_queue"],
        job_definition=gpu_batch["job_definition"],
        command=["als"],
        **FAIR_SHARE,
    )
    with pytest.raises(TaskDeferred):
        op.execute(make_context())
    assert sent_share(moto_aws) == ("recsys", 70)


def test_a_job_without_a_share_sends_neither(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNABLE")
    op = GpuBatchOperator(
        task_id="train", job_queue=gpu_batch["job_queue"], job_definition=gpu_batch["job_definition"], command=["als"]
    )
    with pytest.raises(TaskDeferred):
        op.execute(make_context())
    assert sent_share(moto_aws) == (None, None)  # a queue without a fair-share policy refuses a share


def test_rendered_templates_are_checked_and_submitted(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNABLE")
    op = GpuBatchOperator(
        task_id="train",
        job_queue=gpu_batch["job_queue"],
        job_definition=gpu_batch["job_definition"],
        command=["als"],
        share_identifier="{{ params.share }}",
        scheduling_priority="{{ params.priority }}",
    )
    op.share_identifier, op.scheduling_priority = "nightly", "9999"  # as Airflow renders them
    with pytest.raises(TaskDeferred):
        op.execute(make_context())
    assert sent_share(moto_aws) == ("nightly", 9999)


async def test_the_start_trigger_submits_them_from_the_triggerer(moto_aws, gpu_batch, aws_conn):
    op = GpuBatchOperator(
        task_id="train",
        job_queue=gpu_batch["job_queue"],
        job_definition=gpu_batch["job_definition"],
        command=["als"],
        poll_interval=0.1,
        start_from_trigger=True,
        **FAIR_SHARE,
    )
    trigger = GpuBatchStartTrigger(**op.start_trigger_args.trigger_kwargs)
    trigger.task_instance = FakeTaskInstance()
    try:
        events = [event async for event in trigger.run()]
    finally:
        await trigger.cleanup()
        await JobWatcher.close_all()
    assert [type(event) for event in events] == [TaskSuccessEvent]
    assert sent_share(moto_aws) == ("recsys", 70)


def test_the_decorator_submits_them(moto_aws, gpu_batch, aws_conn):
    moto_aws.client("s3").create_bucket(Bucket="staging")
    moto_aws.batch.hold("RUNNABLE")

    def train() -> int:
        return 1

    op = GpuBatchDecoratedOperator(
        task_id="train",
        python_callable=train,
        job_queue=gpu_batch["job_queue"],
        job_definition=gpu_batch["job_definition"],
        staging_prefix="s3://staging/airflow-gpu/",
        **FAIR_SHARE,
    )
    with pytest.raises(TaskDeferred):
        op.execute(make_context())
    assert sent_share(moto_aws) == ("recsys", 70)


def terminal_submit(moto_aws, gpu_batch, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    target = ("--queue", gpu_batch["job_queue"], "--definition", gpu_batch["job_definition"])
    aws = ("--endpoint-url", moto_aws.endpoint_url, "--region", moto_aws.region)
    return subprocess.run(
        [str(CLI), "submit", *target, *flags, "--detach", *aws, "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_terminal_submits_them(moto_aws, gpu_batch):
    done = terminal_submit(moto_aws, gpu_batch, "--share-identifier", "recsys", "--scheduling-priority", "70")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sent_share(moto_aws) == ("recsys", 70)


def test_the_terminal_refuses_a_bad_share_in_one_line_before_submitting(moto_aws, gpu_batch):
    done = terminal_submit(moto_aws, gpu_batch, "--share-identifier", "rec-sys")
    assert done.returncode != 0
    assert "share_identifier must be 1 to 255 letters and digits" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert moto_aws.log.calls["submitjob"] == 0
