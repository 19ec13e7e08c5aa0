"""``@task.gpu_batch`` against the moto server (S3, Batch, Logs), the test playing the container:
staged by sha256, deferred, resumed, the function's value returned, its exceptions carried back."""

from __future__ import annotations

import threading

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_gpu.decorators import GpuBatchDecoratedOperator
from airflow_gpu.exceptions import GpuFunctionFailed, GpuJobFailed
from airflow_gpu.jobs.spec import JobSpecError
from tests.support.container_testing import play_container
from tests.support.gpu_batch_testing import FakeTaskInstance, fire, make_context

STAGING = "s3://staging/airflow-gpu/"


def scores(n: int, label: str = "x") -> dict:
    import platform

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return {"label": label, "squares": [i * i for i in range(n)], "python": platform.python_version()}


def make(gpu_batch, fn=scores, **kwargs) -> GpuBatchDecoratedOperator:
    args = dict(
        task_id="scores",
        python_callable=fn,
        op_args=[4],
        op_kwargs={"label": "from-xcom"},
        job_queue=gpu_batch["job_queue"],
        job_definition=gpu_batch["job_definition"],
        staging_prefix=STAGING,
        poll_interval=0.1,
        deferrable=True,
    )
    args.update(kwargs)
    return GpuBatchDecoratedOperator(**args)


@pytest.fixture
def staging_bucket(moto_aws):
    moto_aws.client("s3").create_bucket(Bucket="staging")


def run_task(moto_aws, gpu_batch, context, **kwargs):
    """execute -> deferred; the container runs; the trigger fires; a fresh operator resumes."""
    moto_aws.batch.hold("RUNNABLE")
    with pytest.raises(TaskDeferred) as deferred:
        make(gpu_batch, **kwargs).execute(context)
    job_id = deferred.value.trigger.job_id
    command = moto_aws.log.submitted[-1]["containerOverrides"]["command"]
    exit_codes = []
    player = threading.Thread(target=lambda: exit_codes.append(play_container(moto_aws, job_id, command)), daemon=True)
    player.start()
    event = fire(deferred.value.trigger, timeout=120)
    player.join(60)
    return command, event, exit_codes, lambda: make(gpu_batch, **kwargs).execute_complete(context, event)


def test_decorated_function_is_deferred_resumed_and_returns_its_value(moto_aws, gpu_batch, aws_conn, staging_bucket):
    context = make_context(FakeTaskInstance(task_id="scores"))
    command, event, exit_codes, resume = run_task(moto_aws, gpu_batch, context)
    assert command[:2] == ["run-function", "--payload"] and command[2].startswith(STAGING + "functions/")
    assert exit_codes == [0] and event["status"] == "SUCCEEDED"
    value = resume()
    assert value["label"] == "from-xcom" and value["squares"] == [0, 1, 4, 9]
    assert value["python"].rsplit(".", 1)[0] == __import__("platform").python_version().rsplit(".", 1)[0]


def test_multiple_outputs_return_the_dict_for_airflow_to_unroll(moto_aws, gpu_batch, aws_conn, staging_bucket):
    context = make_context(FakeTaskInstance(task_id="scores"))
    *_, resume = run_task(moto_aws, gpu_batch, context, multiple_outputs=True)
    assert resume()["squares"] == [0, 1, 4, 9]


def test_an_exception_in_the_function_fails_the_task_with_the_remote_traceback(
    moto_aws, gpu_batch, aws_conn, staging_bucket
):
    context = make_context(FakeTaskInstance(task_id="scores"))
    _, event, exit_codes, resume = run_task(moto_aws, gpu_batch, context, op_args=[-3])
    assert exit_codes == [1] and event["status"] == "FAILED"
    with pytest.raises(GpuFunctionFailed) as failed:
        resume()
    message = str(failed.value)
    assert "The GPU function raised: ValueError: n must be >= 0, got -3" in message
    assert "Remote traceback:" in message and 'raise ValueError(f"n must be >= 0, got {n}")' in message
    assert "exit code 1" in message


def test_an_argument_that_is_not_json_fails_before_anything_is_staged(moto_aws, gpu_batch, aws_conn, staging_bucket):
    with pytest.raises(
        JobSpecError, match=r"Argument 'label' of scores\(\) cannot be sent to the GPU job: set is not JSON"
    ):
        make(gpu_batch, op_kwargs={"label": {1, 2}}).execute(make_context(FakeTaskInstance(task_id="scores")))
    assert moto_aws.log.calls["submitjob"] == 0
    assert "Contents" not in moto_aws.client("s3").list_objects_v2(Bucket="staging")


def test_a_missing_staging_prefix_is_a_clear_error(moto_aws, gpu_batch, aws_conn, monkeypatch):
    monkeypatch.delenv("AIRFLOW_GPU_STAGING_PREFIX", raising=False)
    monkeypatch.delenv("AIRFLOW__AIRFLOW_GPU__STAGING_PREFIX", raising=False)
    with pytest.raises(
        JobSpecError,
        match=r"No staging prefix: .*pass staging_prefix= to the task, or set \[airflow_gpu\] staging_prefix",
    ):
        make(gpu_batch, staging_prefix=None).execute(make_context(FakeTaskInstance(task_id="scores")))
    assert moto_aws.log.calls["submitjob"] == 0


def test_the_staging_prefix_comes_from_the_airflow_config(moto_aws, gpu_batch, aws_conn, staging_bucket, monkeypatch):
    monkeypatch.setenv("AIRFLOW__AIRFLOW_GPU__STAGING_PREFIX", "s3://staging/from-config/")
    moto_aws.batch.hold("RUNNABLE")
    with pytest.raises(TaskDeferred):
        make(gpu_batch, staging_prefix=None).execute(make_context(FakeTaskInstance(task_id="scores")))
    assert moto_aws.log.submitted[-1]["containerOverrides"]["command"][2].startswith(
        "s3://staging/from-config/functions/"
    )


def test_a_command_cannot_be_given(gpu_batch):
    with pytest.raises(JobSpecError, match="builds the job's command itself"):
        make(gpu_batch, command=["echo"])


def test_a_retry_reattaches_to_the_running_job_with_the_same_payload(moto_aws, gpu_batch, aws_conn, staging_bucket):
    moto_aws.batch.hold("RUNNING")
    context = make_context(FakeTaskInstance(task_id="scores"))
    with pytest.raises(TaskDeferred) as first:
        make(gpu_batch).execute(context)
    with pytest.raises(TaskDeferred) as second:  # a worker crash and retry: a fresh operator object
        make(gpu_batch).execute(context)
    assert second.value.trigger.job_id == first.value.trigger.job_id
    assert second.value.kwargs == {"reattached": True}
    assert moto_aws.log.calls["submitjob"] == 1
    staged = moto_aws.client("s3").list_objects_v2(Bucket="staging", Prefix="airflow-gpu/functions/")["Contents"]
    assert len(staged) == 1  # the same call, the same bytes, the same key


def test_max_queued_terminates_a_decorated_job_waiting_for_gpus(moto_aws, gpu_batch, aws_conn, staging_bucket):
    moto_aws.batch.hold("RUNNABLE")
    context = make_context(FakeTaskInstance(task_id="scores"))
    with pytest.raises(TaskDeferred) as deferred:
        make(gpu_batch, max_queued=1).execute(context)
    event = fire(deferred.value.trigger)
    assert event["status"] == "FAILED" and event["stopped_for"] == "max_queued"
    assert [j for j, _ in moto_aws.log.terminated] == [deferred.value.trigger.job_id]
    with pytest.raises(GpuJobFailed, match="no GPU capacity") as failed:
        make(gpu_batch, max_queued=1).execute_complete(context, event)
    assert not isinstance(failed.value, GpuFunctionFailed)  # the function never ran: no remote error to show


def test_on_kill_terminates_the_decorated_job(moto_aws, gpu_batch, aws_conn, staging_bucket):
    moto_aws.batch.hold("RUNNING")
    op = make(gpu_batch)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(make_context(FakeTaskInstance(task_id="scores")))
    op.on_kill()
    assert [j for j, _ in moto_aws.log.terminated] == [deferred.value.trigger.job_id]


def test_a_literal_argument_that_is_not_json_fails_when_the_dag_is_parsed(gpu_batch):
    from datetime import datetime

    from airflow.sdk import DAG, task

    with DAG("parse_check", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.gpu_batch(
            job_queue=gpu_batch["job_queue"], job_definition=gpu_batch["job_definition"], staging_prefix=STAGING
        )
        def train(sizes, options):
            return sizes

        with pytest.raises(
            JobSpecError, match=r"Argument 'options' of train\(\) cannot be sent to the GPU job: set is not JSON"
        ):
            train([1, 2], options={"a", "b"})
        with pytest.raises(
            JobSpecError, match=r"Argument #1 of train\(\) cannot be sent to the GPU job: datetime is not JSON"
        ):
            train(datetime(2026, 1, 1), options=None)


def test_upstream_xcoms_pass_the_parse_time_check_and_are_checked_once_resolved(gpu_batch):
    from datetime import datetime

    from airflow.sdk import DAG, task

    with DAG("parse_check_xcom", schedule=None, start_date=datetime(2026, 1, 1)):

        @task
        def upstream() -> list[int]:
            return [1]

        @task.gpu_batch(
            job_queue=gpu_batch["job_queue"], job_definition=gpu_batch["job_definition"], staging_prefix=STAGING
        )
        def train(sizes, options):
            return sizes

        made = train(upstream(), options={"nested": [upstream()["x"], 2], "label": "{{ ds }}"})
    assert made.operator.task_id == "train"  # built: the references stood in as None for the check
