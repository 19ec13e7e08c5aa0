"""GpuBatchOperator against the moto server: submit, defer, resume, reattach, fail, cancel."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from airflow.sdk.exceptions import TaskDeferralTimeout, TaskDeferred

from airflow_gpu.exceptions import GpuJobFailed
from airflow_gpu.jobs.spec import TAG_CANCELLED, TAG_IDEMPOTENCY_KEY, JobSpecError, TaskIdentity
from airflow_gpu.links import BatchJobLink, CloudWatchLogsLink
from airflow_gpu.operators import JOB_ID_XCOM_KEY, GpuBatchOperator
from airflow_gpu.triggers import GpuBatchJobTrigger
from tests.support.gpu_batch_testing import (
    RUN_ID,
    FakeTaskInstance,
    fire,
    make_context,
    put_log_lines,
)

# Defer, resume, deferral timeout, on_kill: the operator's side of Airflow's task protocol.
pytestmark = pytest.mark.airflow_behaviour


def operator(gpu_batch, **kwargs) -> GpuBatchOperator:
    args = dict(
        task_id="train",
        job_queue=gpu_batch["job_queue"],
        job_definition=gpu_batch["job_definition"],
        command=["airflow-gpu-worker", "als", "--input", "s3://bucket/in put/", "; rm -rf /"],
        environment={"EPOCHS": "15"},
        gpus=1,
        vcpus=4,
        memory_mib=15000,
        tags={"team": "recsys"},
        poll_interval=0.1,
        deferrable=True,
    )
    args.update(kwargs)
    return GpuBatchOperator(**args)


def defer(op, context) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return deferred.value


def test_submit_defer_resume_success(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNABLE")
    ti = FakeTaskInstance(dag_id="recsys.daily", task_id="train als")
    context = make_context(ti)
    op = operator(gpu_batch, task_id="train_als", execution_timeout=timedelta(hours=3))

    deferred = defer(op, context)

    # What reached SubmitJob, as the server saw it.
    assert moto_aws.log.calls["submitjob"] == 1
    sent = moto_aws.log.submitted[0]
    assert sent["containerOverrides"]["resourceRequirements"] == [
        {"type": "GPU", "value": "1"},
        {"type": "VCPU", "value": "4"},
        {"type": "MEMORY", "value": "15000"},
    ]
    assert sent["containerOverrides"]["command"] == [
        "airflow-gpu-worker",
        "als",
        "--input",
        "s3://bucket/in put/",
        "; rm -rf /",
    ]  # argv as given, never a shell string
    environment = sent["containerOverrides"]["environment"]
    assert environment[0] == {"name": "EPOCHS", "value": "15"}
    assert [e["name"] for e in environment[1:]] == ["AIRFLOW_GPU_SUBMITTED_AT"]  # the run report's queue wait
    key = TaskIdentity("recsys.daily", "train als", RUN_ID, -1).idempotency_key
    assert sent["tags"] == {
        "team": "recsys",
        "airflow:dag_id": "recsys.daily",
        "airflow:task_id": "train als",
        "airflow:run_id": RUN_ID,
        "airflow:map_index": "-1",
        TAG_IDEMPOTENCY_KEY: key,
    }
    assert sent["propagateTags"] is True
    assert sent["retryStrategy"]["evaluateOnExit"][0] == {"onStatusReason": "Host EC2*", "action": "RETRY"}
    # Sanitised: dots and spaces are not allowed in Batch job names.
    assert sent["jobName"] == f"recsys_daily-train_als-{key[:12]}"

    trigger = deferred.trigger
    assert isinstance(trigger, GpuBatchJobTrigger)
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout == timedelta(hours=3)
    job_id = trigger.job_id
    assert ti.xcoms[JOB_ID_XCOM_KEY] == job_id
    assert BatchJobLink().get_link(op, ti_key=None) == (
        f"https://console.aws.amazon.com/batch/home?region=us-east-1#jobs/detail/{job_id}"
    )

    def finish():
        moto_aws.batch.wait_for_jobs(1)
        time.sleep(0.3)
        moto_aws.batch.set_status(job_id, "RUNNING")
        time.sleep(0.3)
        moto_aws.batch.set_status(job_id, "SUCCEEDED")

    threading.Thread(target=finish, daemon=True).start()
    event = fire(trigger)
    assert event["status"] == "SUCCEEDED" and event["job_id"] == job_id

    resumed = operator(gpu_batch, task_id="train_als")  # a fresh instance, as on a real resume
    result = resumed.execute_complete(context, event)
    assert result["job_id"] == job_id
    assert result["status"] == "SUCCEEDED"
    assert result["attempts"] == 1
    assert result["log_stream"].endswith(job_id)
    # Events are delivered at least once: a second delivery gives the same answer.
    assert resumed.execute_complete(context, event) == result
    assert (
        CloudWatchLogsLink()
        .get_link(resumed, ti_key=None)
        .startswith(
            "https://console.aws.amazon.com/cloudwatch/home?region=us-east-1#logsV2:log-groups/log-group/$252Faws$252Fbatch$252Fjob/log-events/"
        )
    )
    assert moto_aws.log.calls["submitjob"] == 1


def test_failed_job_raises_with_reason_exit_code_and_last_log_lines(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    context = make_context()
    deferred = defer(operator(gpu_batch), context)
    job_id = deferred.trigger.job_id
    stream = moto_aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]["container"]["logStreamName"]
    put_log_lines(moto_aws, "/aws/batch/job", stream, [f"epoch {i}" for i in range(30)] + ["CUDA error: out of memory"])
    moto_aws.batch.set_status(job_id, "FAILED", reason="Essential container in task exited", exit_code=3)

    event = fire(deferred.trigger)
    assert event["status"] == "FAILED" and event["exit_code"] == 3

    with pytest.raises(GpuJobFailed) as err:
        operator(gpu_batch).execute_complete(context, event)
    message = str(err.value)
    assert job_id in message
    assert "Essential container in task exited" in message
    assert "exit code 3" in message
    assert "CUDA error: out of memory" in message and "epoch 29" in message
    assert "epoch 5" not in message  # only the last lines


def test_reattach_to_running_job_submits_nothing(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    context = make_context()
    first = defer(operator(gpu_batch), context)  # the try whose worker then crashed
    assert moto_aws.log.calls["submitjob"] == 1

    retry_context = make_context(FakeTaskInstance())  # same task instance, next try
    second = defer(operator(gpu_batch), retry_context)
    assert second.trigger.job_id == first.trigger.job_id
    assert moto_aws.log.calls["submitjob"] == 1
    assert moto_aws.log.calls["listjobs"] >= 1


def test_reattach_reuses_a_succeeded_job(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    context = make_context()
    job_id = defer(operator(gpu_batch), context).trigger.job_id
    moto_aws.batch.set_status(job_id, "SUCCEEDED")

    result = operator(gpu_batch).execute(make_context())  # no TaskDeferred: reused at once
    assert result["job_id"] == job_id and result["status"] == "SUCCEEDED"
    assert moto_aws.log.calls["submitjob"] == 1


def test_reattach_submits_anew_after_a_failed_job(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    job_id = defer(operator(gpu_batch), make_context()).trigger.job_id
    moto_aws.batch.set_status(job_id, "FAILED", reason="boom", exit_code=1)

    again = defer(operator(gpu_batch), make_context()).trigger.job_id
    assert again != job_id
    assert moto_aws.log.calls["submitjob"] == 2


def test_reattach_ignores_other_task_instances_and_cancelled_jobs(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    # Another map index of the same task: a different job.
    mapped = defer(operator(gpu_batch), make_context(FakeTaskInstance(map_index=3))).trigger.job_id
    own = defer(operator(gpu_batch), make_context()).trigger.job_id
    assert own != mapped
    # A job we terminated (cleared task) is never reattached, even while it is still shutting down.
    batch = moto_aws.client("batch")
    arn = batch.describe_jobs(jobs=[own])["jobs"][0]["jobArn"]
    batch.tag_resource(resourceArn=arn, tags={TAG_CANCELLED: "true"})
    fresh = defer(operator(gpu_batch), make_context()).trigger.job_id
    assert fresh not in (own, mapped)
    assert moto_aws.log.calls["submitjob"] == 3


def test_reattach_false_always_submits(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    defer(operator(gpu_batch, reattach=False), make_context())
    defer(operator(gpu_batch, reattach=False), make_context())
    assert moto_aws.log.calls["submitjob"] == 2
    # It still looks, but only for a live job an earlier try deferred on (a clear's leftover): none here.
    assert moto_aws.log.terminated == []
    assert sorted(moto_aws.batch.status(job) for job in moto_aws.batch.jobs()) == ["RUNNING", "RUNNING"]


def test_deferral_timeout_terminates_the_job_before_failing(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    context = make_context()
    op = operator(gpu_batch, execution_timeout=timedelta(minutes=5))
    job_id = defer(op, context).trigger.job_id

    resumed = operator(gpu_batch, execution_timeout=timedelta(minutes=5))
    with pytest.raises(TaskDeferralTimeout):
        resumed.resume_execution("__fail__", {"error": "Trigger timeout"}, context)
    assert [j for j, _ in moto_aws.log.terminated] == [job_id]
    reason = moto_aws.log.terminated[0][1]
    assert "execution_timeout" in reason and "gpu_dag.train" in reason
    assert moto_aws.batch.status(job_id) == "FAILED"


def test_deferral_failure_finds_the_job_by_key_when_xcom_is_missing(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    job_id = defer(operator(gpu_batch), make_context()).trigger.job_id
    with pytest.raises(Exception, match="Trigger failure"):
        operator(gpu_batch).resume_execution("__fail__", {"error": "Trigger failure"}, make_context())
    assert [j for j, _ in moto_aws.log.terminated] == [job_id]


def test_blocking_path_success_and_failure(moto_aws, gpu_batch, aws_conn):
    # Without hold, moto finishes jobs at once: the blocking path waits through the same watcher.
    result = operator(gpu_batch, deferrable=False).execute(make_context())
    assert result["status"] == "SUCCEEDED"

    moto_aws.batch.hold("RUNNING")
    ti = FakeTaskInstance(task_id="other")

    def fail_it():
        job_id = moto_aws.batch.wait_for_jobs(1, status="RUNNING")[0]
        moto_aws.batch.set_status(job_id, "FAILED", reason="Essential container in task exited", exit_code=42)

    threading.Thread(target=fail_it, daemon=True).start()
    with pytest.raises(GpuJobFailed, match="exit code 42"):
        operator(gpu_batch, task_id="other", deferrable=False).execute(make_context(ti))


def test_on_kill_terminates_a_blocking_job(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    op = operator(gpu_batch, deferrable=False)
    outcome = {}

    def run():
        try:
            op.execute(make_context())
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    job_id = moto_aws.batch.wait_for_jobs(1, status="RUNNING")[0]
    deadline = time.monotonic() + 10
    while op._job_id is None and time.monotonic() < deadline:
        time.sleep(0.02)
    op.on_kill()
    worker.join(15)
    assert [j for j, _ in moto_aws.log.terminated] == [job_id]
    assert "was killed" in moto_aws.log.terminated[0][1]
    assert isinstance(outcome.get("error"), GpuJobFailed)  # the wait ends with the terminated job


def test_max_queued_terminates_a_job_stuck_waiting_for_gpus(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNABLE")
    context = make_context()
    deferred = defer(operator(gpu_batch, max_queued=1), context)
    assert deferred.trigger.max_queued == 1
    event = fire(deferred.trigger)
    assert event["status"] == "FAILED"
    assert event["status_reason"].startswith("no GPU capacity for ")
    assert event["stopped_for"] == "max_queued"
    assert [j for j, _ in moto_aws.log.terminated] == [deferred.trigger.job_id]
    with pytest.raises(GpuJobFailed, match="no GPU capacity"):
        operator(gpu_batch).execute_complete(context, event)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpus": -1}, "gpus"),
        ({"gpus": "{{ params.gpus }}"}, "gpus"),  # rendered below to "many"
        ({"vcpus": 0}, "vcpus"),
        ({"memory_mib": 1.5}, "memory_mib"),
        ({"command": "python train.py"}, "command"),
        ({"command": ["python", 3]}, "command"),
        ({"environment": {"EPOCHS": 15}}, "environment"),
        ({"tags": {"aws:x": "y"}}, "aws:"),
        ({"parameters": {"n": 1}}, "parameters"),
        ({"retry_attempts": 0}, "retry_attempts"),
        ({"timeout": 5}, "timeout"),
        ({"max_queued": -3}, "max_queued"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"backend": "slurm"}, "backend"),
        ({"job_queue": ""}, "job_queue"),
    ],
)
def test_bad_parameters_fail_before_any_call(moto_aws, gpu_batch, aws_conn, kwargs, message):
    moto_aws.log.reset()
    with pytest.raises(JobSpecError) as err:
        op = operator(gpu_batch, **kwargs)
        if "{{" in str(kwargs.get("gpus", "")):
            op.gpus = "many"  # what the template rendered to
        op.execute(make_context())
    assert message in str(err.value)
    assert sum(moto_aws.log.calls.values()) == 0


def test_templated_gpus_are_checked_after_rendering(gpu_batch):
    op = operator(gpu_batch, gpus="{{ params.gpus }}")  # fine at parse time
    op.render_template_fields({"params": {"gpus": 2}})
    assert op.gpus == "2"
    op._check_fields(skip_templates=False)  # a rendered "2" is two GPUs


def test_default_deferrable_is_true_unless_set(gpu_batch, monkeypatch):
    monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", raising=False)
    assert operator(gpu_batch, deferrable=None).deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "false")
    assert operator(gpu_batch, deferrable=None).deferrable is False
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    assert operator(gpu_batch, deferrable=None).deferrable is True
    assert operator(gpu_batch, deferrable=False).deferrable is False


def test_a_generated_airflow_cfg_does_not_turn_deferral_off(tmp_path):
    # `airflow db migrate` writes every default, "default_deferrable = false" included, into airflow.cfg.
    home = tmp_path / "airflow-home"
    home.mkdir()
    (home / "airflow.cfg").write_text("[operators]\ndefault_deferrable = false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(home)
    code = (
        "import os; from airflow_gpu.config import default_deferrable as d; a = d(); "
        "os.environ['AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE'] = 'false'; print(a, d())"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True False"


def test_resume_without_event_is_a_clear_error(gpu_batch):
    with pytest.raises(Exception, match="without a job event"):
        operator(gpu_batch).execute_complete(make_context(), None)
