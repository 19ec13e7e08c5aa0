"""LocalBackend: detached processes, file records shared across processes, terminate, reattach, logs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_gpu.exceptions import GpuJobFailed
from airflow_gpu.jobs.backend import BackendTarget, backend_class
from airflow_gpu.jobs.local import runner as records
from airflow_gpu.jobs.local.backend import ENTRYPOINT_ENV, STATE_DIR_ENV, LocalBackend, default_state_dir
from airflow_gpu.jobs.spec import TAG_DEFERRED_TRY, JobSpec, JobSpecError, TaskIdentity
from airflow_gpu.jobs.watcher import JobWatcher, follow_job
from airflow_gpu.operators import JOB_ID_XCOM_KEY, GpuBatchOperator
from tests.support.gpu_batch_testing import FakeTaskInstance, fire, make_context
from tests.support.local_jobs_testing import job_record, kill_leftover_local_jobs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Iterator[Path]:
    folder = tmp_path / "local-jobs"
    monkeypatch.setenv(STATE_DIR_ENV, str(folder))
    # The commands here are Python's arguments: Python plays the image's entrypoint.
    monkeypatch.setenv(ENTRYPOINT_ENV, json.dumps([sys.executable]))
    yield folder
    kill_leftover_local_jobs(folder)


@pytest.fixture
def backend(state_dir) -> LocalBackend:
    return LocalBackend()


def spec(command, run_id: str = "run-1", task_id: str = "train", job_definition: str = "local", **kwargs) -> JobSpec:
    return JobSpec.build(
        identity=TaskIdentity("dag", task_id, run_id),
        job_queue="local",
        job_definition=job_definition,
        command=command,
        **kwargs,
    )


def py(code: str) -> list[str]:
    """The arguments of the entrypoint, Python (see the state_dir fixture)."""
    return ["-c", textwrap.dedent(code)]


async def wait_terminal(backend: LocalBackend, job_id: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        [state] = await backend.describe([job_id])
        if state.is_terminal:
            return state
        assert time.monotonic() < deadline, f"job {job_id} still {state.status}"
        await asyncio.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", "rb") as handle:  # a zombie is not alive
        return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"


def test_registered_as_local_and_state_dir_defaults_under_airflow_home(monkeypatch, tmp_path):
    assert backend_class("local") is LocalBackend
    monkeypatch.delenv(STATE_DIR_ENV, raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / "airflow-gpu" / "local-jobs"


async def test_success_records_exit_times_and_log(backend, state_dir):
    job = await backend.submit(
        spec(
            py(
                "import os; print('hello', os.environ['EPOCHS'], os.environ['AIRFLOW_GPU_JOB_ID'], "
                "os.environ['AIRFLOW_GPU_SUBMITTED_AT'])"
            ),
            environment={"EPOCHS": "15-s3cr3t"},
        )
    )
    assert job.status in ("RUNNING", "SUCCEEDED")
    final = await wait_terminal(backend, job.job_id)
    assert (final.status, final.exit_code, final.attempts) == ("SUCCEEDED", 0, 1)
    record = job_record(state_dir, job.job_id)
    assert record["exit.json"]["exit_code"] == 0
    assert record["exit.json"]["ended_at"] >= record["run.json"]["started_at"] >= record["job.json"]["submitted_at"]
    # The environment reaches the process but is never written to disk (values may be secrets).
    assert "s3cr3t" not in json.dumps(record)
    # The submit time, for the worker's queue wait, is the one the job record keeps.
    assert (await backend.read_logs(final)).lines == [
        f"hello 15-s3cr3t {job.job_id} {record['job.json']['submitted_at']:.3f}"
    ]


async def test_failure_carries_exit_code_reason_and_log_tail(backend):
    job = await backend.submit(
        spec(
            py("""
        import sys
        for i in range(30): print("line", i)
        print("bad input: column plays missing", file=sys.stderr); sys.exit(2)
    """)
        )
    )
    final = await wait_terminal(backend, job.job_id)
    assert (final.status, final.exit_code) == ("FAILED", 2)
    assert "exited with code 2" in final.status_reason
    tail = await backend.read_logs(final, tail=3)
    assert tail.lines == ["line 28", "line 29", "bad input: column plays missing"]


async def test_command_that_cannot_start_fails_the_job_not_the_submit(state_dir):
    backend = LocalBackend(entrypoint=["airflow-gpu-no-such-program"])
    job = await backend.submit(spec(["als"]))
    final = await wait_terminal(backend, job.job_id)
    assert (final.status, final.exit_code) == ("FAILED", 127)
    assert "cannot start" in final.status_reason and "airflow-gpu-no-such-program" in final.status_reason


async def test_a_job_needs_a_command(backend):
    with pytest.raises(JobSpecError, match="command"):
        await backend.submit(spec(None))


async def test_job_outlives_its_submitter_and_is_watched_from_another_process(state_dir, tmp_path):
    # Submit from a separate process that exits at once, as an Airflow worker does after deferring.
    flag = tmp_path / "go"
    code = f"""
        import asyncio, sys
        from airflow_gpu.jobs.local.backend import LocalBackend
        from airflow_gpu.jobs.spec import JobSpec, TaskIdentity
        command = ["-c", "import os, time\\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)\\nprint('released')"]
        s = JobSpec.build(identity=TaskIdentity("dag", "train", "run-x"), job_queue="q", job_definition="d", command=command)
        print(asyncio.run(LocalBackend().submit(s)).job_id)
    """
    done = subprocess.run(
        [sys.executable, *py(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, STATE_DIR_ENV: str(state_dir)},
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().splitlines()[-1]
    backend = LocalBackend()
    [state] = await backend.describe([job_id])
    assert state.status == "RUNNING"
    flag.touch()
    final = await wait_terminal(backend, job_id)
    assert final.status == "SUCCEEDED"
    assert (await backend.read_logs(final)).lines == ["released"]


async def test_terminate_kills_the_whole_process_group_and_marks_it_cancelled(backend, state_dir, tmp_path):
    pids = tmp_path / "pids"
    # A parent with a child that ignores nothing: both must go.
    job = await backend.submit(
        spec(
            py(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(300)
    """)
        )
    )
    deadline = time.monotonic() + 20
    while not pids.exists() or len(pids.read_text().split()) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    parent, child = map(int, pids.read_text().split())
    assert [j.job_id for j in await backend.find(spec(["x"]))] == [job.job_id]  # same task instance: found

    await backend.terminate(job.job_id, "Airflow task dag.train run run-1 was cleared")

    final = await wait_terminal(backend, job.job_id)
    assert final.status == "FAILED"
    assert final.status_reason == "Airflow task dag.train run run-1 was cleared"
    assert final.exit_code == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while pid_alive(parent) or pid_alive(child):
        assert time.monotonic() < deadline, "the job's processes survived terminate"
        await asyncio.sleep(0.05)
    assert await backend.find(spec(["x"])) == []  # reattach never picks a cancelled job
    await backend.terminate(job.job_id, "again")  # a terminal job: no-op
    assert job_record(state_dir, job.job_id)["cancel.json"]["reason"].endswith("was cleared")


async def test_terminate_escalates_to_sigkill(backend, monkeypatch):
    import airflow_gpu.jobs.local.backend as local

    monkeypatch.setattr(local, "TERMINATE_GRACE", 0.5)
    job = await backend.submit(
        spec(
            py("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(300)
    """)
        )
    )
    while (await backend.read_logs(job)).lines != ["ready"]:
        await asyncio.sleep(0.05)
    await backend.terminate(job.job_id, "stop")
    final = await wait_terminal(backend, job.job_id)
    assert (final.status, final.exit_code) == ("FAILED", 128 + signal.SIGKILL)


async def test_timeout_stops_the_job(backend, monkeypatch):
    monkeypatch.setattr(records, "KILL_GRACE", 1.0)
    # JobSpec allows 60 s at least, as Batch does; shorten it here.
    s = dataclasses.replace(spec(py("import time; time.sleep(300)"), timeout=60), timeout_s=1)
    job = await backend.submit(s)
    final = await wait_terminal(backend, job.job_id, timeout=30)
    assert final.status == "FAILED" and "timeout" in final.status_reason


async def test_find_reattaches_newest_first_and_only_to_the_same_task_instance(backend):
    first = await backend.submit(spec(py("pass")))
    await wait_terminal(backend, first.job_id)
    second = await backend.submit(spec(py("import time; time.sleep(30)")))
    other = await backend.submit(spec(py("pass"), run_id="run-2"))
    found = await backend.find(spec(["anything"]))
    assert [s.job_id for s in found] == [second.job_id, first.job_id]
    assert found[0].is_live and found[1].status == "SUCCEEDED"
    assert other.job_id not in {s.job_id for s in found}
    await backend.terminate(second.job_id, "cleanup")


async def test_a_supervisor_that_died_without_a_record_fails_the_job(backend, state_dir):
    job = await backend.submit(spec(py("import time; time.sleep(300)")))
    run = job_record(state_dir, job.job_id)["run.json"]
    # What a host reboot or kill -9 looks like: the supervisor and the job vanish, no exit.json.
    os.killpg(run["pgid"], signal.SIGKILL)
    os.kill(run["runner_pid"], signal.SIGKILL)
    final = await wait_terminal(backend, job.job_id)
    assert final.status == "FAILED" and "without recording an exit status" in final.status_reason
    assert final.exit_code is None


async def test_a_supervisor_that_ends_while_its_job_is_read_is_not_taken_for_lost(backend, state_dir, monkeypatch):
    """The supervisor writes exit.json and then ends. A read that missed exit.json and then finds the
    supervisor gone reads exit.json again: the job failed with its exit code, it was not lost (seen
    under load as FAILED with no exit code)."""
    from airflow_gpu.jobs.local import backend as local

    job = await backend.submit(spec(py("import time; time.sleep(300)")))
    folder = state_dir / job.job_id
    run = job_record(state_dir, job.job_id)["run.json"]
    alive = local._runner_alive

    def ends_as_it_is_checked(record: dict) -> bool:  # the supervisor finishes between the two reads
        os.killpg(run["pgid"], signal.SIGKILL)
        os.kill(run["runner_pid"], signal.SIGKILL)
        records.write_json(str(folder / "exit.json"), {"exit_code": 2, "ended_at": time.time(), "reason": None})
        deadline = time.monotonic() + 20
        while alive(record):
            assert time.monotonic() < deadline, "the killed supervisor never went"
            time.sleep(0.05)
        return False

    monkeypatch.setattr(local, "_runner_alive", ends_as_it_is_checked)
    [state] = await backend.describe([job.job_id])
    assert (state.status, state.exit_code) == ("FAILED", 2)
    assert state.status_reason == "the command exited with code 2"


async def test_a_record_from_an_earlier_boot_is_not_running(backend, state_dir):
    job = await backend.submit(spec(py("import time; time.sleep(300)")))
    folder = state_dir / job.job_id
    run = json.loads((folder / "run.json").read_text())
    records.write_json(str(folder / "run.json"), {**run, "boot_id": "an-earlier-boot"})
    [state] = await backend.describe([job.job_id])
    assert state.status == "FAILED"
    os.killpg(run["pgid"], signal.SIGKILL)


async def test_a_job_that_never_started_is_failed_after_the_grace(backend, state_dir, monkeypatch):
    import airflow_gpu.jobs.local.backend as local

    folder = state_dir / "0123456789ab-20260101T000000-abcdef"
    folder.mkdir(parents=True)
    records.write_json(str(folder / "job.json"), {"job_id": folder.name, "submitted_at": time.time(), "command": ["x"]})
    [state] = await LocalBackend().describe([folder.name])
    assert state.status == "SUBMITTED" and state.queued_since is not None
    monkeypatch.setattr(local, "START_GRACE", 0.0)
    [state] = await LocalBackend().describe([folder.name])
    assert state.status == "FAILED" and "never started" in state.status_reason


async def test_unknown_and_malformed_ids_are_left_out(backend):
    assert await backend.describe(["nope", "../etc", ""]) == []


async def test_incremental_log_reads_hold_back_partial_lines(backend, tmp_path):
    go = tmp_path / "go"
    job = await backend.submit(
        spec(
            py(f"""
        import os, sys, time
        sys.stdout.write("one\\ntw"); sys.stdout.flush()
        while not os.path.exists({str(go)!r}): time.sleep(0.02)
        sys.stdout.write("o\\nthree")
    """)
        )
    )
    deadline = time.monotonic() + 20
    chunk = await backend.read_logs(job)
    while chunk.lines != ["one"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
        chunk = await backend.read_logs(job)
    again = await backend.read_logs(job, cursor=chunk.cursor)
    assert again.lines == [] and again.cursor == chunk.cursor  # "tw" is not a line yet
    go.touch()
    final = await wait_terminal(backend, job.job_id)
    rest = await backend.read_logs(final, cursor=chunk.cursor)
    assert rest.lines == ["two", "three"]  # the job ended: its last, unterminated line too
    assert (await backend.read_logs(final, cursor=rest.cursor)).lines == []


async def test_logs_of_an_unknown_job_are_empty(backend):
    from airflow_gpu.jobs.backend import JobState

    assert (await backend.read_logs(JobState(job_id="nope", status="RUNNING"))).lines == []
    assert (await backend.read_logs(JobState(job_id="nope", status="FAILED"), tail=5)).lines == []


async def test_the_shared_watcher_follows_local_jobs(state_dir):
    target = BackendTarget(backend="local", conn_id=None)
    async with JobWatcher.shared(target).backend() as backend:
        jobs = [await backend.submit(spec(py(f"import sys; sys.exit({i % 2})"), run_id=f"r{i}")) for i in range(4)]
    watcher = JobWatcher.shared(target)
    watches = [watcher.watch(j.job_id, poll_interval=0.05) for j in jobs]
    finals = await asyncio.wait_for(asyncio.gather(*(follow_job(w) for w in watches)), 30)
    for w in watches:
        w.close()
    assert [f.status for f in finals] == ["SUCCEEDED", "FAILED", "SUCCEEDED", "FAILED"]
    await JobWatcher.close_all()


# -- the operator on the local backend --------------------------------------------------------------


def local_operator(command, **kwargs) -> GpuBatchOperator:
    return GpuBatchOperator(
        task_id="train",
        job_queue="local",
        job_definition="local",
        command=command,
        backend="local",
        poll_interval=0.05,
        **kwargs,
    )


@pytest.mark.airflow_behaviour
def test_operator_submits_defers_and_resumes_on_the_local_backend(state_dir, tmp_path):
    context = make_context(FakeTaskInstance(dag_id="dag", task_id="train"))
    go = tmp_path / "go"
    command = py(f"""
        import os, time
        while not os.path.exists({str(go)!r}): time.sleep(0.02)
        print('trained')
    """)
    with pytest.raises(TaskDeferred) as deferred:
        local_operator(command).execute(context)
    assert deferred.value.kwargs is None  # a fresh job, not a reattached one
    go.touch()
    event = fire(deferred.value.trigger)
    result = local_operator(command).execute_complete(context, event)
    assert result["status"] == "SUCCEEDED" and result["job_id"] == context["ti"].xcoms[JOB_ID_XCOM_KEY]


async def _kill_like_an_earlier_try(job_id: str) -> None:
    await LocalBackend().terminate(job_id, "Airflow task dag.train run r was cleared or marked failed/succeeded")


@pytest.mark.airflow_behaviour
def test_a_clear_racing_the_earlier_trys_on_kill_ends_in_a_fresh_job(state_dir):
    # Try 1 deferred on a job; the task is cleared; try 2 starts before the triggerer has run try 1's
    # on_kill, so it finds the job still RUNNING and reattaches. Then on_kill terminates that job.
    ti = FakeTaskInstance(dag_id="dag", task_id="train")
    context = make_context(ti)
    command = py("import time; time.sleep(300)")
    with pytest.raises(TaskDeferred) as first:
        local_operator(command).execute(context)
    with pytest.raises(TaskDeferred) as second:
        local_operator(command).execute(context)
    old = second.value.trigger.job_id
    assert old == first.value.trigger.job_id and second.value.kwargs == {"reattached": True}
    asyncio.run(_kill_like_an_earlier_try(old))
    event = fire(second.value.trigger)
    assert event["status"] == "FAILED"

    with pytest.raises(TaskDeferred) as resubmitted:  # not a failure: the clear asked for a fresh run
        local_operator(command).execute_complete(context, event, **second.value.kwargs)
    fresh = resubmitted.value.trigger.job_id
    assert fresh != old and ti.xcoms[JOB_ID_XCOM_KEY] == fresh
    assert resubmitted.value.kwargs is None
    asyncio.run(LocalBackend().terminate(fresh, "test over"))


@pytest.mark.airflow_behaviour
def test_a_clears_next_try_ends_the_job_its_earlier_try_deferred_on_and_runs_a_new_one(state_dir):
    # Try 1 deferred on a job (tagging it with its try number); the task is cleared, and try 2
    # starts before try 1's trigger has ended the job: try 2 ends it and never reattaches.
    ti = FakeTaskInstance(dag_id="dag", task_id="train")
    command = py("import time; time.sleep(300)")
    with pytest.raises(TaskDeferred) as first:
        local_operator(command).execute(make_context(ti))
    old = first.value.trigger.job_id
    ti.try_number = 2
    with pytest.raises(TaskDeferred) as second:
        local_operator(command).execute(make_context(ti))
    fresh = second.value.trigger.job_id
    assert fresh != old and second.value.kwargs is None
    backend = LocalBackend()
    [old_state, fresh_state] = asyncio.run(backend.describe([old, fresh]))
    assert old_state.status == "FAILED" and "was cleared or marked while try 1 waited" in old_state.status_reason
    assert fresh_state.tags[TAG_DEFERRED_TRY] == "2" and fresh_state.is_live
    asyncio.run(backend.terminate(fresh, "test over"))


@pytest.mark.airflow_behaviour
def test_a_reattached_job_that_fails_on_its_own_still_fails_the_task(state_dir, tmp_path):
    context = make_context(FakeTaskInstance(dag_id="dag", task_id="train"))
    go = tmp_path / "go"
    command = py(f"""
        import os, sys, time
        while not os.path.exists({str(go)!r}): time.sleep(0.02)
        print('boom'); sys.exit(3)
    """)
    with pytest.raises(TaskDeferred):
        local_operator(command).execute(context)
    with pytest.raises(TaskDeferred) as second:
        local_operator(command).execute(context)
    assert second.value.kwargs == {"reattached": True}
    go.touch()
    event = fire(second.value.trigger)
    with pytest.raises(GpuJobFailed, match="exited with code 3") as failed:
        local_operator(command).execute_complete(context, event, **second.value.kwargs)
    assert "boom" in str(failed.value)  # the last log lines, read through the backend


def test_a_max_queued_stop_is_recognised_as_the_trys_own_by_its_event_field(monkeypatch):
    """The event says the try's own follow_job stopped the job (a field, whatever the reason's words),
    so a reattached try fails with it instead of asking the backend whose stop it was."""
    from airflow_gpu.jobs.backend import STOPPED_FOR_MAX_QUEUED, JobState
    from airflow_gpu.jobs.blocking import BlockingJobs

    event = JobState("job-1", "FAILED", status_reason="reworded", stopped_for=STOPPED_FOR_MAX_QUEUED).as_event()
    state = JobState.from_event(event)
    assert state.stopped_for == STOPPED_FOR_MAX_QUEUED

    def must_not_describe(*args, **kwargs):
        raise AssertionError("a max_queued stop is told from the event, not from the backend")

    monkeypatch.setattr(BlockingJobs, "describe", must_not_describe)
    assert local_operator(["true"])._stopped_for_an_earlier_try(state) is False


# -- the command is the entrypoint's argv, as on AWS Batch ------------------------------------------


async def test_the_command_goes_to_airflow_gpu_worker_by_default(state_dir, monkeypatch):
    monkeypatch.delenv(ENTRYPOINT_ENV)
    backend = LocalBackend()
    final = await wait_terminal(backend, (await backend.submit(spec(["als", "--help"]))).job_id)
    record = job_record(state_dir, final.job_id)["job.json"]
    assert record["command"] == ["airflow-gpu-worker", "als", "--help"]
    assert final.status == "SUCCEEDED", (await backend.read_logs(final)).lines
    assert any(line.startswith("usage: airflow-gpu-worker als") for line in (await backend.read_logs(final)).lines)


async def test_a_local_job_definition_file_names_the_entrypoint(state_dir, tmp_path):
    definition = tmp_path / "my-job.json"
    definition.write_text(json.dumps({"entrypoint": [sys.executable, "-c", "import sys; print(sys.argv[1:])"]}))
    backend = LocalBackend()
    job = await backend.submit(spec(["als", "--input", "x"], job_definition=str(definition)))
    final = await wait_terminal(backend, job.job_id)
    assert final.status == "SUCCEEDED"
    assert (await backend.read_logs(final)).lines == ["['als', '--input', 'x']"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "there is none at"),
        ("{not json", "cannot read it as JSON"),
        ("{}", 'has no "entrypoint"'),
        ('{"entrypoint": "python3 -m job"}', "must be a non-empty list of strings"),
    ],
)
async def test_a_bad_local_job_definition_is_refused_before_anything_runs(state_dir, tmp_path, content, message):
    definition = tmp_path / "job.json"
    if content is not None:
        definition.write_text(content)
    with pytest.raises(JobSpecError, match=message):
        await LocalBackend().submit(spec(["als"], job_definition=str(definition)))
    assert not state_dir.exists() or not any(state_dir.iterdir())  # nothing half-written


def test_a_batch_job_definition_name_means_nothing_locally_and_the_env_entrypoint_runs(state_dir, monkeypatch):
    monkeypatch.setenv(ENTRYPOINT_ENV, json.dumps([sys.executable, "-c", "print('entry')"]))
    job = asyncio.run(LocalBackend().submit(spec(["als"], job_definition="airflow-gpu-production-worker")))
    assert job_record(state_dir, job.job_id)["job.json"]["command"] == [sys.executable, "-c", "print('entry')", "als"]


def test_the_local_backend_needs_no_queue_nor_definition_but_batch_does(state_dir):
    context = make_context(FakeTaskInstance(dag_id="dag", task_id="train"))
    operator = GpuBatchOperator(task_id="train", backend="local", command=py("print('ran')"), poll_interval=0.05)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    result = operator.execute_complete(context, fire(deferred.value.trigger))
    assert result["status"] == "SUCCEEDED"
    with pytest.raises(JobSpecError, match="job_queue is required with backend='aws_batch'"):
        GpuBatchOperator(task_id="train", command=["als"], job_definition="d")
    with pytest.raises(JobSpecError, match="job_definition is required"):
        GpuBatchOperator(task_id="train", command=["als"], job_queue="q")
    templated = GpuBatchOperator(task_id="train", command=["als"], backend="{{ params.backend }}")
    templated.backend = "aws_batch"  # as rendered
    with pytest.raises(JobSpecError, match="job_queue is required"):
        templated._check_fields(skip_templates=False)
