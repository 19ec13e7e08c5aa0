"""End to end through a real Airflow: scheduler, dag-processor, api-server and triggerer (`airflow standalone`).

The moto server belongs to this test process, so the test drives the Batch jobs while
Airflow watches them through the ``aws_default`` connection's endpoint_url:

* 10 mapped GpuBatchOperator tasks with executor parallelism 2: every job is submitted
  and RUNNING at once, every task instance is DEFERRED, and the triggerer's shared watcher
  describes them with one DescribeJobs call per poll cycle;
* after the jobs are released, every task succeeds and its XCom holds its job id;
* the triggerer is stopped and a new one takes every trigger over: no job is terminated;
* in a second DAG run beside it, a FAILED job fails its task with the reason in the log,
  and clearing, marking failed and marking success a deferred task each terminate its Batch
  job (the trigger's on_kill, after it has checked the task left DEFERRED).

Airflow runs in its own process group in a temporary AIRFLOW_HOME on SQLite; every process
is stopped in the fixture's teardown, whatever happens in the test.
"""

from __future__ import annotations

import time

import pytest

from tests.support.airflow_e2e import Airflow, running_airflow, wait_for
from tests.support.moto_aws import MotoAws, iter_describe_cycles

pytestmark = [pytest.mark.timeout(600), pytest.mark.airflow_behaviour]

FANOUT = "e2e_gpu_fanout"
FAILURES = "e2e_gpu_failures"
MAPPED = 10  # with the second DAG's 5, 15 jobs at once on 2 slots; 300 triggers: tests/integration/test_watcher.py
POLL = 1.0
CASES = ("ok", "fails", "cleared", "marked_failed", "marked_success")
REASON = "CannotInspectContainerError: Could not transition to inspecting; timed out after waiting 30s"

DAG_FILE = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_gpu.operators import GpuBatchOperator

COMMON = dict(task_id="train", job_queue={queue!r}, job_definition={definition!r}, poll_interval={poll},
              aws_conn_id="aws_default", retries=0, vcpus=2, memory_mib=2048)

# Deferred tasks count towards max_active_tasks (16 by default): a fan-out DAG raises it.
with DAG({fanout!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=64):
    GpuBatchOperator.partial(**COMMON).expand(command=[["als", "--shard", str(i)] for i in range({mapped})])

with DAG({failures!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    GpuBatchOperator.partial(**COMMON).expand(command=[["als", "--case", case] for case in {cases!r}])
"""


@pytest.fixture
def airflow(tmp_path, moto_aws: MotoAws, gpu_batch) -> Airflow:
    dag_file = DAG_FILE.format(
        queue=gpu_batch["job_queue"],
        definition=gpu_batch["job_definition"],
        poll=POLL,
        fanout=FANOUT,
        failures=FAILURES,
        mapped=MAPPED,
        cases=CASES,
    )
    with running_airflow(tmp_path, moto_aws, {"e2e_gpu.py": dag_file}, (FANOUT, FAILURES)) as instance:
        yield instance


def test_deferred_gpu_tasks_through_a_real_scheduler_and_triggerer(airflow: Airflow, moto_aws: MotoAws):
    batch = moto_aws.batch
    batch.hold("RUNNING")
    fanout_run = airflow.trigger(FANOUT)
    failures_run = airflow.trigger(FAILURES)
    runs = {FANOUT: (fanout_run, MAPPED), FAILURES: (failures_run, len(CASES))}
    total = MAPPED + len(CASES)

    # Every task submits its job and defers; with two slots, only deferral lets all 15 jobs run at once.
    def all_deferred() -> bool:
        for dag_id, (run_id, count) in runs.items():
            states = airflow.states(dag_id, run_id)
            if len(states) != count or set(states.values()) != {"deferred"}:
                return False
        return True

    wait_for("every task instance to be deferred", all_deferred, timeout=240, interval=1, alive=airflow.check_alive)
    running = [job_id for job_id, job in batch.jobs().items() if job.status == "RUNNING"]
    assert len(running) == total and moto_aws.log.calls["submitjob"] == total
    job_of = {
        (dag_id, index): airflow.xcom(dag_id, run_id, index, key="gpu_batch_job_id")
        for dag_id, (run_id, count) in runs.items()
        for index in range(count)
    }
    assert sorted(job_of.values()) == sorted(running)

    # The triggerer's shared watcher: one DescribeJobs call per poll cycle, covering every job.
    # (A task is DEFERRED as soon as it hands over its trigger; the triggerer picks it up a moment later.)
    wait_for(
        "the triggerer to watch every job",
        lambda: any(sorted(ids) == sorted(running) for _, ids in list(moto_aws.log.describe_batches)),
        timeout=60,
        alive=airflow.check_alive,
    )
    window_start = time.monotonic()
    time.sleep(4 * POLL)
    cycles = list(iter_describe_cycles(moto_aws.log, gap=POLL / 2))
    assert cycles, "the triggerer never described the jobs"
    assert all(len(cycle) == 1 for cycle in cycles), [len(c) for c in cycles]
    steady = [ids for at, ids in moto_aws.log.describe_batches if at >= window_start]
    assert 2 <= len(steady) <= 4 / POLL + 2, len(steady)
    assert all(sorted(ids) == sorted(running) for ids in steady), [len(ids) for ids in steady]

    # A triggerer restart, and the triggers' move to the new triggerer, terminate nothing.
    airflow.restart_triggerer()
    restarted_at = time.monotonic()  # the old triggerer has stopped: every DescribeJobs from now on is the new one's
    wait_for(
        "the new triggerer to watch every job",
        lambda: any(
            at > restarted_at and sorted(ids) == sorted(running) for at, ids in list(moto_aws.log.describe_batches)
        ),
        timeout=120,
        interval=1,
        alive=airflow.check_alive,
    )
    assert moto_aws.log.terminated == []
    assert all(batch.status(job_id) == "RUNNING" for job_id in running)
    assert set(airflow.states(FAILURES, failures_run).values()) == {"deferred"}

    # Marking a deferred task failed or success terminates its Batch job.
    for index, state in ((3, "failed"), (4, "success")):
        airflow.set_state(FAILURES, failures_run, index, state)
        marked = job_of[(FAILURES, index)]
        wait_for(
            f"the job of the task marked {state} to be terminated",
            lambda: marked in dict(moto_aws.log.terminated),
            timeout=120,
        )
        reason = dict(moto_aws.log.terminated)[marked]
        assert f"{FAILURES}.train" in reason and f"map index {index}" in reason and "marked" in reason
        assert batch.status(marked) == "FAILED"

    # Clearing a deferred task terminates its Batch job.
    cleared = job_of[(FAILURES, 2)]
    airflow.call(
        "POST",
        f"/dags/{FAILURES}/clearTaskInstances",
        {"dry_run": False, "dag_run_id": failures_run, "task_ids": [["train", 2]], "only_failed": False},
    )
    wait_for("the cleared task's job to be terminated", lambda: cleared in dict(moto_aws.log.terminated), timeout=120)
    reason = dict(moto_aws.log.terminated)[cleared]
    assert f"{FAILURES}.train" in reason and "map index 2" in reason and "cleared" in reason
    assert batch.status(cleared) == "FAILED"
    # The cleared task runs again and submits a new job (the terminated one is never reattached).
    retried = wait_for(
        "the cleared task's new job",
        lambda: [j for j in batch.wait_for_jobs(total + 1, timeout=1) if j not in job_of.values()],
        timeout=120,
        interval=1,
        alive=airflow.check_alive,
    )
    wait_for(
        "the new job to be watched",
        lambda: airflow.states(FAILURES, failures_run)[2] == "deferred",
        timeout=120,
        interval=1,
    )

    # Release: one job fails with a reason, every other one succeeds, once the scheduler has taken in
    # every deferral (see Airflow.deferrals_recorded). The re-run's job goes last.
    for dag_id, (run_id, _) in runs.items():
        airflow.wait_deferrals_recorded(dag_id, run_id)
    failing = job_of[(FAILURES, 1)]
    batch.set_status(failing, "FAILED", reason=REASON, exit_code=137)
    for job_id in running:
        if job_id not in (failing, cleared) and batch.status(job_id) == "RUNNING":  # the marked ones are FAILED
            batch.set_status(job_id, "SUCCEEDED")
    batch.release_hold()

    def finished(dag_id: str, run_id: str) -> str | None:
        state = airflow.run_state(dag_id, run_id)
        return state if state in ("success", "failed") else None

    assert (
        wait_for(
            "the fan-out run to finish",
            lambda: finished(FANOUT, fanout_run),
            timeout=240,
            interval=1,
            alive=airflow.check_alive,
        )
        == "success"
    )
    batch.set_status(retried[0], "SUCCEEDED")
    assert (
        wait_for(
            "the failures run to finish",
            lambda: finished(FAILURES, failures_run),
            timeout=120,
            interval=1,
            alive=airflow.check_alive,
        )
        == "failed"
    )

    # Every fan-out task succeeded and returned its job's facts as XCom.
    assert set(airflow.states(FANOUT, fanout_run).values()) == {"success"}
    for index in range(MAPPED):
        result = airflow.xcom(FANOUT, fanout_run, index)
        assert result["job_id"] == job_of[(FANOUT, index)] and result["status"] == "SUCCEEDED"

    # The failed job failed its task, and the task's log says why.
    instances = airflow.task_instances(FAILURES, failures_run)
    assert [instances[i]["state"] for i in range(len(CASES))] == ["success", "failed", "success", "failed", "success"]
    assert instances[2]["try_number"] == 2  # the cleared task ran again
    assert airflow.xcom(FAILURES, failures_run, 2)["job_id"] == retried[0]
    logs = list(airflow.home.glob(f"logs/dag_id={FAILURES}/**/task_id=train/map_index=1/attempt=*.log"))
    assert logs, "no log for the failed task"
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert REASON in text and failing in text and "exit code 137" in text
