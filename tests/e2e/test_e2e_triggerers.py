"""Two real `airflow triggerer` processes share deferred GPU tasks on one PostgreSQL database.

Airflow runs as separate processes (api-server, scheduler with LocalExecutor, dag-processor,
two triggerers) on a PostgreSQL cluster that this test starts and removes (tests/support/postgres.py):
two triggerers cannot share SQLite. The moto server belongs to this test process, which holds
every Batch job RUNNING until it releases it:

* triggerer A (capacity 6) takes 6 of the 12 deferred tasks' triggers, triggerer B the other 6;
* each triggerer describes exactly the jobs it watches, in one DescribeJobs call per poll cycle
  (at most ceil(watched / 100)), told apart by the metadata database's trigger assignments;
* some jobs end while both run, and their tasks succeed;
* A is SIGKILLed (its whole process group): once its heartbeat is stale, B takes its triggers,
  and describes every remaining job in one call per cycle;
* every task succeeds, SubmitJob was called exactly once per task, and no job was terminated.
"""

from __future__ import annotations

import math
import os
import signal
import time
from types import SimpleNamespace

import pytest

from tests.support.airflow_e2e import wait_for
from tests.support.airflow_postgres import postgres_airflow
from tests.support.moto_aws import MotoAws, iter_describe_cycles

pytestmark = [pytest.mark.timeout(900), pytest.mark.airflow_behaviour]

DAG_ID = "e2e_two_triggerers"
MAPPED = 12
CAPACITY_A = 6
POLL = 1.0
HEALTH_THRESHOLD = 10  # seconds without a heartbeat before a triggerer's triggers go to another

DAG_FILE = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_gpu.operators import GpuBatchOperator

with DAG({dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=64):
    GpuBatchOperator.partial(
        task_id="train", job_queue={queue!r}, job_definition={definition!r}, poll_interval={poll},
        aws_conn_id="aws_default", retries=0, vcpus=2, memory_mib=2048,
    ).expand(command=[["als", "--shard", str(i)] for i in range({mapped})])
"""


def test_two_triggerers_share_deferred_gpu_tasks_and_one_takes_over_after_sigkill(
    tmp_path, moto_aws: MotoAws, gpu_batch, airflow_postgres_url
):
    import sqlalchemy

    dag_text = DAG_FILE.format(
        dag_id=DAG_ID, queue=gpu_batch["job_queue"], definition=gpu_batch["job_definition"], poll=POLL, mapped=MAPPED
    )

    def assignments() -> dict[int, int | None]:
        """map index -> the triggerer job id its task's trigger is assigned to (None: unassigned or no trigger)."""
        query = sqlalchemy.text(
            'SELECT ti.map_index, tr.triggerer_id FROM task_instance ti LEFT JOIN "trigger" tr ON tr.id = ti.trigger_id '
            "WHERE ti.dag_id = :dag AND ti.state = 'deferred'"
        )
        with engine.connect() as db:
            return {index: owner for index, owner in db.execute(query, {"dag": DAG_ID})}

    def triggerer_job_ids() -> set[int]:
        """The job ids of every triggerer that ever started here (one row per triggerer process)."""
        with engine.connect() as db:
            return {
                job_id
                for (job_id,) in db.execute(sqlalchemy.text("SELECT id FROM job WHERE job_type = 'TriggererJob'"))
            }

    def only_new(before: set[int]) -> int | None:
        new = triggerer_job_ids() - before
        assert len(new) <= 1, new
        return new.pop() if new else None

    with postgres_airflow(
        tmp_path, moto_aws, airflow_postgres_url, "two_triggerers.py", dag_text, health_threshold=HEALTH_THRESHOLD
    ) as pg:
        cluster, engine = pg.cluster, pg.engine
        rest = pg.start_core()
        triggerer_a = pg.start_triggerer("triggerer-a", AIRFLOW__TRIGGERER__CAPACITY=str(CAPACITY_A))
        alive = cluster.check_alive
        wait_for(
            "the DAG to be parsed",
            lambda: not rest.call("GET", f"/dags/{DAG_ID}")["is_paused"],
            timeout=240,
            interval=1,
            alive=alive,
        )

        batch = moto_aws.batch
        batch.hold("RUNNING")
        run_id = rest.trigger(DAG_ID)

        # Triggerer A alone takes as many triggers as its capacity allows; the rest wait unassigned.
        a_id = wait_for("triggerer A's job row", lambda: only_new(set()), timeout=120, alive=alive)
        wait_for(
            f"triggerer A to take {CAPACITY_A} triggers",
            lambda: list(assignments().values()).count(a_id) == CAPACITY_A,
            timeout=300,
            interval=1,
            alive=alive,
        )
        wait_for(
            "every task to be deferred",
            lambda: (
                set(rest.states(DAG_ID, run_id).values()) == {"deferred"} and len(rest.states(DAG_ID, run_id)) == MAPPED
            ),
            timeout=300,
            interval=1,
            alive=alive,
        )
        assert list(assignments().values()).count(a_id) == CAPACITY_A  # capacity holds: A took no more

        before_b = triggerer_job_ids()
        pg.start_triggerer("triggerer-b", AIRFLOW__TRIGGERER__CAPACITY="100")
        b_id = wait_for("triggerer B's job row", lambda: only_new(before_b), timeout=120, alive=alive)
        owners = wait_for(
            "triggerer B to take the other triggers",
            lambda: (
                lambda a: (
                    # a trigger not yet assigned to any triggerer reads None: not there yet
                    a
                    if None not in a.values()
                    and sorted(a.values()) == sorted([a_id] * CAPACITY_A + [b_id] * (MAPPED - CAPACITY_A))
                    else None
                )
            )(assignments()),
            timeout=120,
            interval=1,
            alive=alive,
        )

        job_of = {index: rest.xcom(DAG_ID, run_id, index, key="gpu_batch_job_id") for index in range(MAPPED)}
        assert sorted(job_of.values()) == sorted(batch.jobs()) and len(set(job_of.values())) == MAPPED
        owner_of_job = {job_of[index]: owner for index, owner in owners.items()}

        def watched_in_one_call(owner: int, after: float) -> bool:
            mine = sorted(job for job, o in owner_of_job.items() if o == owner and batch.status(job) == "RUNNING")
            return any(at > after and sorted(ids) == mine for at, ids in list(moto_aws.log.describe_batches))

        started = time.monotonic()
        for owner in (a_id, b_id):
            wait_for(
                f"triggerer {owner} to describe all its jobs in one call",
                lambda o=owner: watched_in_one_call(o, started),
                timeout=120,
                interval=0.5,
                alive=alive,
            )

        def assert_calls_per_cycle(window_start: float, expected: dict[int, int]) -> None:
            """Each DescribeJobs since ``window_start`` names jobs of one triggerer only, exactly those it
            watches, and each triggerer makes at most ceil(watched / 100) calls per poll cycle."""
            batches = [(at, ids) for at, ids in list(moto_aws.log.describe_batches) if at >= window_start]
            per_owner: dict[int, list] = {owner: [] for owner in expected}
            for at, ids in batches:
                owners_seen = {owner_of_job[job] for job in ids}
                assert len(owners_seen) == 1, f"one DescribeJobs named jobs of several triggerers: {owners_seen}"
                per_owner[owners_seen.pop()].append((at, ids))
            for owner, watched in expected.items():
                calls = per_owner[owner]
                assert len(calls) >= 2, f"triggerer {owner} made {len(calls)} DescribeJobs calls in the window"
                assert all(len(ids) == watched for _, ids in calls), (owner, watched, [len(ids) for _, ids in calls])
                cycles = list(iter_describe_cycles(SimpleNamespace(describe_batches=calls), gap=POLL / 2))
                limit = math.ceil(watched / 100)
                assert all(len(cycle) <= limit for cycle in cycles), (owner, limit, [len(c) for c in cycles])

        window_start = time.monotonic()
        time.sleep(5 * POLL)
        assert_calls_per_cycle(window_start, {a_id: CAPACITY_A, b_id: MAPPED - CAPACITY_A})

        # Three jobs of each triggerer end while both run: their tasks resume and succeed.
        early = [job for owner in (a_id, b_id) for job in [j for j, o in owner_of_job.items() if o == owner][:3]]
        rest.wait_deferrals_recorded(DAG_ID, run_id)  # see Airflow.deferrals_recorded
        for job in early:
            batch.set_status(job, "SUCCEEDED")
        index_of = {job: index for index, job in job_of.items()}
        wait_for(
            "the early tasks to succeed",
            lambda: all(rest.states(DAG_ID, run_id)[index_of[job]] == "success" for job in early),
            timeout=300,
            interval=1,
            alive=alive,
        )

        # SIGKILL triggerer A and everything it started (its trigger runner): a crash, no clean-up.
        os.killpg(triggerer_a.pid, signal.SIGKILL)
        triggerer_a.wait(timeout=30)
        killed_at = time.monotonic()
        del cluster.processes["triggerer-a"]
        remaining = sorted(job for job in job_of.values() if batch.status(job) == "RUNNING")
        assert len(remaining) == MAPPED - len(early)

        # Once A's heartbeat is stale, B takes its triggers and watches every remaining job.
        wait_for(
            "triggerer B to own every remaining trigger",
            lambda: (lambda a: len(a) == len(remaining) and set(a.values()) == {b_id})(assignments()),
            timeout=120,
            interval=1,
            alive=alive,
        )
        for job in remaining:
            owner_of_job[job] = b_id
        wait_for(
            "triggerer B to describe every remaining job in one call",
            lambda: any(at > killed_at and sorted(ids) == remaining for at, ids in list(moto_aws.log.describe_batches)),
            timeout=120,
            interval=0.5,
            alive=alive,
        )
        window_start = time.monotonic()
        time.sleep(5 * POLL)
        assert_calls_per_cycle(window_start, {b_id: len(remaining)})

        for job in remaining:
            batch.set_status(job, "SUCCEEDED")
        batch.release_hold()

        def finished() -> str | None:
            state = rest.run_state(DAG_ID, run_id)
            return state if state in ("success", "failed") else None

        assert wait_for("the run to finish", finished, timeout=400, interval=1, alive=alive) == "success"
        assert set(rest.states(DAG_ID, run_id).values()) == {"success"}
        for index in range(MAPPED):
            result = rest.xcom(DAG_ID, run_id, index)
            assert result["job_id"] == job_of[index] and result["status"] == "SUCCEEDED"
        assert moto_aws.log.calls["submitjob"] == MAPPED  # no trigger move, no kill, ever submitted a job again
        assert moto_aws.log.terminated == []  # nor terminated one
