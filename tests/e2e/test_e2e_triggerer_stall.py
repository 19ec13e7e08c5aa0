"""No GPU job dies for an Airflow hiccup: a stalled triggerer, then clears, with real Airflow 3.3 on
PostgreSQL and two `airflow triggerer` processes (tests/support/airflow_postgres.py).

Airflow 3.3.2's triggerer cancels, with the user-action message that makes it call ``on_kill``,
every trigger it runs that is no longer assigned to it (apache/airflow PR #73454). So a triggerer
whose heartbeat lapsed past ``[triggerer] triggerer_health_check_threshold`` loses its triggers to
another, and when it resumes it calls ``on_kill`` on each. The moto server belongs to this test
process and holds every Batch job RUNNING until the test ends it.

1. Triggerer A holds every deferred task's trigger (three mapped worker-submitted tasks and one
   ``start_from_trigger`` task). A is stopped (SIGSTOP) past the threshold; B takes the triggers;
   A resumes (SIGCONT) and calls on_kill on all four. No job is terminated.
2. One mapped task and the start_from_trigger task are cleared: each one's job is terminated
   exactly once, and its next try runs a new job (it never reattaches to the one being ended).
At the end every task succeeded on one job, no job is left running, and SubmitJob and TerminateJob
were called once per task (twice and once for a cleared task).
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter

import pytest

from tests.support.airflow_e2e import wait_for
from tests.support.airflow_postgres import postgres_airflow
from tests.support.moto_aws import MotoAws

pytestmark = [pytest.mark.timeout(900), pytest.mark.airflow_behaviour]

DAG_ID = "e2e_triggerer_stall"
MAPPED = 3
POLL = 1.0
HEALTH_THRESHOLD = 8  # seconds without a heartbeat before a triggerer's triggers go to another
KEPT_LINE = re.compile(r"Job (\S+) left running: the task is still deferred")

DAG_FILE = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_gpu.operators import GpuBatchOperator

common = dict(job_queue={queue!r}, job_definition={definition!r}, poll_interval={poll}, aws_conn_id="aws_default",
              retries=0, vcpus=2, memory_mib=2048, stream_logs=False)
with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=16):
    GpuBatchOperator.partial(task_id="train", **common).expand(command=[["als", "--shard", str(i)] for i in range({mapped})])
    GpuBatchOperator(task_id="start", command=["als", "--shard", "start"], start_from_trigger=True, **common)
"""


def task_of_job(moto_aws: MotoAws) -> dict[str, str]:
    """job id -> "train[i]" or "start", from the tags airflow-gpu puts on every job."""
    batch = moto_aws.client("batch")
    ids = list(moto_aws.batch.jobs())
    found = {}
    for start in range(0, len(ids), 100):
        for job in batch.describe_jobs(jobs=ids[start : start + 100])["jobs"]:
            tags = job.get("tags") or {}
            index = int(tags["airflow:map_index"])
            found[job["jobId"]] = tags["airflow:task_id"] + (f"[{index}]" if index >= 0 else "")
    return found


def test_a_stalled_triggerer_kills_nothing_and_a_clear_reruns_on_a_new_job(
    tmp_path, moto_aws: MotoAws, gpu_batch, airflow_postgres_url
):
    import sqlalchemy

    dag_text = DAG_FILE.format(
        dag_id=DAG_ID, queue=gpu_batch["job_queue"], definition=gpu_batch["job_definition"], poll=POLL, mapped=MAPPED
    )
    names = [f"train[{i}]" for i in range(MAPPED)] + ["start"]

    def owners() -> dict[str, int | None]:
        """task -> the triggerer job id its deferred task's trigger is assigned to."""
        query = sqlalchemy.text(
            'SELECT ti.task_id, ti.map_index, tr.triggerer_id FROM task_instance ti JOIN "trigger" tr ON tr.id = ti.trigger_id '
            "WHERE ti.dag_id = :dag AND ti.state = 'deferred'"
        )
        with engine.connect() as db:
            return {
                task + (f"[{index}]" if index >= 0 else ""): owner
                for task, index, owner in db.execute(query, {"dag": DAG_ID})
            }

    def triggerer_ids() -> set[int]:
        with engine.connect() as db:
            return {
                job_id
                for (job_id,) in db.execute(sqlalchemy.text("SELECT id FROM job WHERE job_type = 'TriggererJob'"))
            }

    def kept() -> set[str]:
        """The jobs a trigger's on_kill decided to leave running for a task still deferred (its log line
        reaches the task's trigger log; the triggerers' own logs are searched too)."""
        found: set[str] = set()
        for path in home.rglob("*.log*"):
            if path.is_file():
                found.update(KEPT_LINE.findall(path.read_text(errors="replace")))
        return found

    with postgres_airflow(
        tmp_path, moto_aws, airflow_postgres_url, "stall.py", dag_text, health_threshold=HEALTH_THRESHOLD
    ) as pg:  # on the way out a stopped triggerer is continued, then stopped with the rest
        cluster, engine, home = pg.cluster, pg.engine, pg.home
        rest = pg.start_core()
        triggerer_a = pg.start_triggerer("triggerer-a")
        alive = cluster.check_alive
        wait_for(
            "the DAG to be parsed",
            lambda: not rest.call("GET", f"/dags/{DAG_ID}")["is_paused"],
            timeout=240,
            interval=1,
            alive=alive,
        )
        a_id = wait_for("triggerer A's job row", lambda: next(iter(triggerer_ids()), None), timeout=120, alive=alive)

        batch = moto_aws.batch
        batch.hold("RUNNING")
        run_id = rest.trigger(DAG_ID)
        wait_for(
            "every task deferred on triggerer A",
            lambda: sorted(owners()) == sorted(names) and set(owners().values()) == {a_id},
            timeout=300,
            interval=1,
            alive=alive,
        )
        first_job = wait_for(
            "one job per task",
            lambda: (lambda t: t if sorted(t.values()) == sorted(names) else None)(task_of_job(moto_aws)),
            timeout=120,
            interval=1,
            alive=alive,
        )
        job_of = {task: job for job, task in first_job.items()}

        # 1. A stalls past the threshold; B takes every trigger; A resumes and calls on_kill on each.
        before_b = triggerer_ids()
        pg.start_triggerer("triggerer-b")
        b_id = wait_for(
            "triggerer B's job row", lambda: next(iter(triggerer_ids() - before_b), None), timeout=120, alive=alive
        )
        os.killpg(triggerer_a.pid, signal.SIGSTOP)
        try:
            wait_for(
                "triggerer B to take every trigger",
                lambda: set(owners().values()) == {b_id} and len(owners()) == len(names),
                timeout=180,
                interval=1,
                alive=lambda: cluster.check_alive("scheduler", "api-server", "triggerer-b"),
            )
        finally:
            os.killpg(triggerer_a.pid, signal.SIGCONT)
        # A resumes, finds the four triggers assigned to B, and calls on_kill on each: wait until each
        # job was either left running (the fix) or terminated (Airflow 3.3.2 with an unconditional on_kill).
        wait_for(
            "resumed triggerer A to act on each trigger it lost",
            lambda: kept() | {job for job, _ in moto_aws.log.terminated} >= set(job_of.values()),
            timeout=180,
            interval=1,
            alive=alive,
        )
        assert moto_aws.log.terminated == [], "a stalled triggerer's late cancel terminated a job"
        assert all(batch.status(job) == "RUNNING" for job in job_of.values())
        assert set(owners().values()) == {b_id}

        # 2. A clear of a deferred task ends its job once and runs a new one.
        cleared = ["train[1]", "start"]
        rest.call(
            "POST",
            f"/dags/{DAG_ID}/clearTaskInstances",
            {
                "dry_run": False,
                "only_failed": False,
                "dag_run_id": run_id,
                "task_ids": [["train", 1], "start"],
            },
        )
        wait_for(
            "the cleared tasks' jobs to be terminated",
            lambda: {job for job, _ in moto_aws.log.terminated} == {job_of[t] for t in cleared},
            timeout=180,
            interval=1,
            alive=alive,
        )
        wait_for(
            "each cleared task's next try to defer on a new job",
            lambda: (
                Counter(task_of_job(moto_aws).values()) == Counter(names + cleared)
                and sorted(owners()) == sorted(names)
            ),
            timeout=300,
            interval=1,
            alive=alive,
        )

        rest.wait_deferrals_recorded(DAG_ID, run_id, skip=("start",))  # see Airflow.deferrals_recorded
        for job in batch.jobs():
            if batch.status(job) == "RUNNING":
                batch.set_status(job, "SUCCEEDED")
        batch.release_hold()

        def finished() -> str | None:
            state = rest.run_state(DAG_ID, run_id)
            return state if state in ("success", "failed") else None

        assert wait_for("the run to finish", finished, timeout=400, interval=1, alive=alive) == "success"
        tasks = task_of_job(moto_aws)
        submits = Counter(tasks.values())
        terminates = Counter(tasks[job] for job, _ in moto_aws.log.terminated)
        print(
            f"\nSubmitJob per task: {dict(sorted(submits.items()))}; TerminateJob per task: {dict(sorted(terminates.items()))}"
        )
        assert submits == Counter({t: 2 if t in cleared else 1 for t in names})
        assert [job for job, _ in moto_aws.log.terminated].count(job_of["train[1]"]) == 1
        assert [job for job, _ in moto_aws.log.terminated].count(job_of["start"]) == 1
        assert terminates == Counter({t: 1 for t in cleared})
        assert moto_aws.log.calls["submitjob"] == len(names) + len(cleared)
        for task in names:
            [succeeded] = [job for job, t in tasks.items() if t == task and batch.status(job) == "SUCCEEDED"]
            assert succeeded != job_of[task] if task in cleared else succeeded == job_of[task]
        assert not [
            job
            for job in batch.jobs()
            if batch.status(job) in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
        ]
        train_results = {i: rest.xcom(DAG_ID, run_id, i) for i in range(MAPPED)}
        assert all(result["status"] == "SUCCEEDED" for result in train_results.values())
