"""GpuBatchOperator over the in-memory backend, every loop it makes in virtual time: submit, reattach or
reuse, defer, resume, the error of a failed job, the blocking path, and the terminations."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferralTimeout, TaskDeferred

from airflow_gpu.exceptions import GpuJobFailed
from airflow_gpu.jobs.blocking import TAIL_LINES
from airflow_gpu.jobs.spec import TAG_IDEMPOTENCY_KEY, TaskIdentity
from airflow_gpu.operators import JOB_ID_XCOM_KEY, GpuBatchOperator
from airflow_gpu.triggers import GpuBatchJobTrigger
from tests.support.gpu_batch_testing import RUN_ID, FakeTaskInstance, make_context
from tests.support.virtual_clock import run, virtual_loops


@pytest.fixture
def jobs(memory_jobs):
    """The in-memory job system, with every event loop the operator makes in virtual time."""
    with virtual_loops():
        yield memory_jobs


def operator(**kwargs: Any) -> GpuBatchOperator:
    args = dict(
        task_id="train",
        job_queue="q",
        job_definition="d",
        command=["airflow-gpu-worker", "als"],
        backend="memory",
        poll_interval=30,
        max_queued=3600,
        deferrable=True,
    )
    return GpuBatchOperator(**{**args, **kwargs})


def defer(op: GpuBatchOperator, context: dict[str, Any]) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return deferred.value


def test_execute_submits_pushes_the_job_id_and_defers_to_a_trigger_on_it(jobs):
    ti = FakeTaskInstance(dag_id="recs", task_id="train")
    deferred = defer(operator(execution_timeout=timedelta(hours=2)), make_context(ti))
    [spec] = jobs.submitted
    [job_id] = jobs.jobs
    assert spec.tags[TAG_IDEMPOTENCY_KEY] == TaskIdentity("recs", "train", RUN_ID, -1).idempotency_key
    assert ti.xcoms[JOB_ID_XCOM_KEY] == job_id
    trigger = deferred.trigger
    assert isinstance(trigger, GpuBatchJobTrigger)
    assert (trigger.job_id, trigger.backend, trigger.poll_interval, trigger.max_queued) == (job_id, "memory", 30, 3600)
    assert (deferred.method_name, deferred.kwargs, deferred.timeout) == ("execute_complete", None, timedelta(hours=2))


def test_a_retry_reattaches_to_the_live_job_and_submits_nothing(jobs):
    first = defer(operator(), make_context())
    second = defer(operator(), make_context(FakeTaskInstance()))  # the same task instance, its next try
    assert second.trigger.job_id == first.trigger.job_id
    assert second.kwargs == {"reattached": True}
    assert len(jobs.submitted) == 1


def test_a_retry_reuses_a_succeeded_job_without_deferring(jobs):
    job_id = defer(operator(), make_context()).trigger.job_id
    jobs.finish(job_id)
    ti = FakeTaskInstance()
    result = operator().execute(make_context(ti))
    assert result["job_id"] == job_id and result["status"] == "SUCCEEDED"
    assert ti.xcoms[JOB_ID_XCOM_KEY] == job_id
    assert len(jobs.submitted) == 1


def test_a_retry_submits_anew_after_a_failed_job_and_other_task_instances_get_their_own(jobs):
    job_id = defer(operator(), make_context()).trigger.job_id
    jobs.fail(job_id, "boom", 1)
    again = defer(operator(), make_context()).trigger.job_id
    mapped = defer(operator(), make_context(FakeTaskInstance(map_index=3))).trigger.job_id
    assert len({job_id, again, mapped}) == 3 and len(jobs.submitted) == 3


def test_reattach_false_always_submits(jobs):
    defer(operator(reattach=False), make_context())
    defer(operator(reattach=False), make_context())
    assert len(jobs.submitted) == 2


def test_execute_complete_returns_the_job_facts_and_a_redelivered_event_the_same(jobs):
    job_id = defer(operator(), make_context()).trigger.job_id
    jobs.finish(job_id)
    event = jobs.jobs[job_id].as_event()
    resumed = operator()  # a fresh instance, as on a real resume
    result = resumed.execute_complete(make_context(), event)
    assert result == {
        "job_id": job_id,
        "job_name": jobs.jobs[job_id].name,
        "status": "SUCCEEDED",
        "attempts": 1,
        "exit_code": 0,
        "log_stream": job_id,
        "log_group": None,
        # a backend that reports no usage gets no made-up figure
        "cost": {"cost_usd": None, "cost_basis": "the memory backend does not report usage"},
    }
    assert resumed.execute_complete(make_context(), event) == result


def test_a_failed_job_raises_with_its_reason_exit_code_and_last_log_lines(jobs):
    job_id = defer(operator(), make_context()).trigger.job_id
    lines = [f"epoch {i}" for i in range(30)] + ["CUDA error: out of memory"]
    jobs.fail(job_id, "Essential container in task exited", 3, lines)
    with pytest.raises(GpuJobFailed) as failed:
        operator().execute_complete(make_context(), jobs.jobs[job_id].as_event())
    message = str(failed.value)
    assert f"GPU job {job_id}" in message and "ended FAILED: Essential container in task exited" in message
    assert "exit code 3" in message
    assert failed.value.log_lines == lines[-TAIL_LINES:]  # the last lines, not the first
    assert "CUDA error: out of memory" in message and "epoch 5" not in message


def test_a_reattached_try_whose_job_an_earlier_try_stopped_submits_a_fresh_one(jobs):
    """A clear: the new try reattached, then the earlier try's trigger (its on_kill) terminated the job."""
    earlier = defer(operator(), make_context())
    job_id = earlier.trigger.job_id
    retry = defer(operator(), make_context())
    assert retry.kwargs == {"reattached": True}
    run(earlier.trigger.on_kill)
    ti = FakeTaskInstance()
    with pytest.raises(TaskDeferred) as fresh:
        operator().execute_complete(make_context(ti), jobs.jobs[job_id].as_event(), **retry.kwargs)
    assert fresh.value.trigger.job_id != job_id and ti.xcoms[JOB_ID_XCOM_KEY] == fresh.value.trigger.job_id
    assert len(jobs.submitted) == 2


def test_a_reattached_try_stopped_by_its_own_max_queued_fails_instead(jobs):
    job_id = defer(operator(), make_context()).trigger.job_id
    jobs.terminated.clear()
    event = {
        **jobs.jobs[job_id].as_event(),
        "status": "FAILED",
        "status_reason": "no GPU capacity for 3600 s",
        "stopped_for": "max_queued",
    }
    with pytest.raises(GpuJobFailed, match="no GPU capacity"):
        operator().execute_complete(make_context(), event, reattached=True)
    assert len(jobs.submitted) == 1


def test_the_blocking_path_waits_in_the_same_watcher_for_success_and_failure(jobs):
    def end_on_the_third_poll(end) -> None:
        def step() -> None:
            if len(jobs.describes) == 3:
                for job_id, state in list(jobs.jobs.items()):
                    if state.is_live:
                        end(job_id)

        jobs.before_describe.append(step)

    end_on_the_third_poll(jobs.finish)
    result = operator(deferrable=False).execute(make_context())
    assert result["status"] == "SUCCEEDED" and len(jobs.describes) == 3

    jobs.reset()
    end_on_the_third_poll(
        lambda job_id: jobs.fail(job_id, "Essential container in task exited", 42, ["Traceback", "boom"])
    )
    with pytest.raises(GpuJobFailed, match="exit code 42") as failed:
        operator(deferrable=False).execute(make_context())
    assert failed.value.log_lines == ["Traceback", "boom"]


def test_a_deferral_timeout_terminates_the_job_before_the_task_fails(jobs):
    context = make_context()
    job_id = defer(operator(execution_timeout=timedelta(minutes=5)), context).trigger.job_id
    with pytest.raises(TaskDeferralTimeout):
        operator(execution_timeout=timedelta(minutes=5)).resume_execution(
            "__fail__", {"error": "Trigger timeout"}, context
        )
    [(terminated, reason)] = jobs.terminated
    assert terminated == job_id and "execution_timeout" in reason and "gpu_dag.train" in reason
    assert jobs.jobs[job_id].status == "FAILED"


def test_a_failed_deferral_finds_the_job_by_its_key_when_the_xcom_is_missing(jobs):
    job_id = defer(operator(), make_context()).trigger.job_id
    with pytest.raises(Exception, match="Trigger failure"):
        operator().resume_execution("__fail__", {"error": "Trigger failure"}, make_context())  # a fresh ti: no XCom
    assert [j for j, _ in jobs.terminated] == [job_id]


def test_on_kill_terminates_the_job_it_submitted(jobs):
    op = operator()
    job_id = defer(op, make_context()).trigger.job_id
    op.on_kill()  # from another thread's loop, as in a signal handler
    [(terminated, reason)] = jobs.terminated
    assert terminated == job_id and reason.startswith("Airflow task ") and reason.endswith(".train was killed")


def test_a_resume_whose_start_trigger_reused_a_succeeded_job_bills_it_marked_reused(jobs):
    job_id = defer(operator(), make_context()).trigger.job_id
    jobs.finish(job_id)
    event = {**jobs.jobs[job_id].as_event(), "reused": True}  # as GpuBatchStartTrigger sends it to a worker
    cost = operator().execute_complete(make_context(), event)["cost"]
    assert cost == {"cost_usd": None, "cost_basis": "the memory backend does not report usage", "reused": True}
