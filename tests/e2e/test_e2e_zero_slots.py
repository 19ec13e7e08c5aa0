"""End to end through a real Airflow: GPU tasks that never take a worker slot, and the output's Asset event.

* Two ordinary tasks hold both worker slots (parallelism 2) for the whole run. Meanwhile GPU tasks with
  ``start_from_trigger=True`` are submitted by the triggerer, with their templates rendered there, and
  end there, after the triggerer has read their manifest: every one succeeds with its XCom, and
  SubmitJob is called once per task. (Six separate tasks, not ``expand``: Airflow 3.3 does not start
  mapped tasks from the triggerer; see docs/operator.md.)
* A GPU task with ``output_uri`` and an Asset outlet emits the Asset event with the manifest summary
  as extra; a second DAG, scheduled on that Asset, runs and receives the extra.

The moto server belongs to this test process, which drives the Batch jobs; Airflow runs as
`airflow standalone` (tests/e2e/test_e2e_airflow.py's running_airflow), stopped whatever happens.
"""

from __future__ import annotations

import json

import pytest

from tests.support.airflow_e2e import Airflow, running_airflow, wait_for
from tests.support.moto_aws import MotoAws

pytestmark = [pytest.mark.timeout(900), pytest.mark.airflow_behaviour]

HOLD = "e2e_hold_slots"
GPU = "e2e_zero_slots"
PRODUCER = "e2e_asset_producer"
CONSUMER = "e2e_asset_consumer"
HOLDERS = ("hold_a", "hold_b")
GPU_TASKS = 6
POLL = 1.0
BUCKET = "lake"
OUTPUT = f"s3://{BUCKET}/e2e/recommendations/"

DAG_FILE = '''
from datetime import datetime

from airflow.sdk import DAG, Asset, task

from airflow_gpu.operators import GpuBatchOperator

COMMON = dict(job_queue={queue!r}, job_definition={definition!r}, poll_interval={poll}, aws_conn_id="aws_default",
              retries=0, vcpus=2, memory_mib=2048, start_from_trigger=True)
OUTPUT = Asset({output!r})

with DAG({hold!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    @task
    def hold(sentinel: str) -> None:
        """Takes a worker slot until the test creates the sentinel (bounded: fails after 600 s)."""
        import os
        import time

        deadline = time.monotonic() + 600
        while not os.path.exists(sentinel):
            if time.monotonic() > deadline:
                raise RuntimeError("never released")
            time.sleep(0.5)

    for name in {holders!r}:
        hold.override(task_id=name)({sentinel!r})

with DAG({gpu!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=64):
    for i in range({count}):
        GpuBatchOperator(task_id=f"gpu_{{i}}", command=["als", "--run", "{{{{ run_id }}}}", "--shard", str(i)],
                         output_uri=OUTPUT.uri, **COMMON)

with DAG({producer!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    GpuBatchOperator(task_id="train", command=["als", "--output", OUTPUT.uri], output_uri=OUTPUT.uri,
                     outlets=[OUTPUT], **COMMON)

with DAG({consumer!r}, schedule=[OUTPUT], start_date=datetime(2026, 1, 1), catchup=False):
    @task
    def consume(triggering_asset_events=None) -> list:
        return [event.extra for events in triggering_asset_events.values() for event in events]

    consume()
'''


def states(airflow: Airflow, dag_id: str, run_id: str) -> dict[str, str | None]:
    reply = airflow.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
    return {ti["task_id"]: ti["state"] for ti in reply["task_instances"]}


def xcom(airflow: Airflow, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}?deserialize=true"
    return airflow.call("GET", path)["value"]


def finished(airflow: Airflow, dag_id: str, run_id: str) -> str | None:
    state = airflow.run_state(dag_id, run_id)
    return state if state in ("success", "failed") else None


def put_manifest(moto_aws: MotoAws) -> None:
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    manifest = {
        "format": "airflow-gpu-als",
        "complete": True,
        "run_id": "w-e2e",
        "root": "",
        "finished_at": "2026-12-01T00:00:00Z",
        "summary": {
            "users": 30,
            "items": 20,
            "interactions": 500,
            "recommendations": 300,
            "precision_at_k": {"k": 10, "als": 0.31, "popularity": 0.12},
        },
        "datasets": {"recommendations": {"files": 1, "rows": 300, "bytes": 4096}},
        "files": [],
    }
    s3.put_object(Bucket=BUCKET, Key="e2e/recommendations/manifest.json", Body=json.dumps(manifest).encode())


@pytest.fixture
def airflow(tmp_path, moto_aws: MotoAws, gpu_batch):
    sentinel = tmp_path / "release-the-slots"
    dag_file = DAG_FILE.format(
        queue=gpu_batch["job_queue"],
        definition=gpu_batch["job_definition"],
        poll=POLL,
        output=OUTPUT,
        hold=HOLD,
        holders=HOLDERS,
        sentinel=str(sentinel),
        gpu=GPU,
        count=GPU_TASKS,
        producer=PRODUCER,
        consumer=CONSUMER,
    )
    with running_airflow(
        tmp_path, moto_aws, {"e2e_zero_slots.py": dag_file}, (HOLD, GPU, PRODUCER, CONSUMER)
    ) as instance:
        instance.sentinel = sentinel
        try:
            yield instance
        finally:
            sentinel.touch()  # the holders end, whatever happened


def test_gpu_tasks_start_and_end_on_the_triggerer_while_every_worker_slot_is_held(airflow: Airflow, moto_aws: MotoAws):
    batch = moto_aws.batch
    put_manifest(moto_aws)  # what the jobs commit; the triggerer reads it before it ends each task
    hold_run = airflow.trigger(HOLD)
    wait_for(
        "both worker slots to be taken",
        lambda: set(states(airflow, HOLD, hold_run).values()) == {"running"},
        timeout=240,
        interval=1,
        alive=airflow.check_alive,
    )

    batch.hold("RUNNING")
    gpu_run = airflow.trigger(GPU)
    wait_for(
        f"{GPU_TASKS} jobs submitted by the triggerer",
        lambda: moto_aws.log.calls["submitjob"] >= GPU_TASKS,
        timeout=240,
        interval=1,
        alive=airflow.check_alive,
    )
    wait_for(
        "every GPU task deferred",
        lambda: set(states(airflow, GPU, gpu_run).values()) == {"deferred"},
        timeout=120,
        interval=1,
        alive=airflow.check_alive,
    )
    # Rendered on the triggerer: the run id, not its template, reached SubmitJob.
    commands = sorted(tuple(s["containerOverrides"]["command"]) for s in moto_aws.log.submitted)
    assert commands == sorted(("als", "--run", gpu_run, "--shard", str(i)) for i in range(GPU_TASKS))

    jobs = batch.wait_for_jobs(GPU_TASKS, status="RUNNING")
    for job_id in jobs:
        batch.set_status(job_id, "SUCCEEDED")
    assert (
        wait_for(
            "the GPU run to finish",
            lambda: finished(airflow, GPU, gpu_run),
            timeout=240,
            interval=1,
            alive=airflow.check_alive,
        )
        == "success"
    )
    # The holders kept both slots the whole time: no GPU task ever ran on a worker.
    assert set(states(airflow, HOLD, hold_run).values()) == {"running"}
    assert moto_aws.log.calls["submitjob"] == GPU_TASKS
    results = [xcom(airflow, GPU, gpu_run, f"gpu_{i}") for i in range(GPU_TASKS)]
    assert {result["job_id"] for result in results} == set(jobs)
    assert all(result["manifest"]["run_id"] == "w-e2e" for result in results)  # read on the triggerer
    assert {xcom(airflow, GPU, gpu_run, f"gpu_{i}", key="gpu_batch_job_id") for i in range(GPU_TASKS)} == set(jobs)

    # Free the slots: the producer resumes on a worker to emit its Asset event.
    airflow.sentinel.touch()
    assert (
        wait_for("the holders to end", lambda: finished(airflow, HOLD, hold_run), timeout=120, interval=1) == "success"
    )

    producer_run = airflow.trigger(PRODUCER)
    wait_for(
        "the producer's job",
        lambda: moto_aws.log.calls["submitjob"] == GPU_TASKS + 1,
        timeout=240,
        interval=1,
        alive=airflow.check_alive,
    )
    [produced] = [j for j in batch.wait_for_jobs(GPU_TASKS + 1) if j not in jobs]
    batch.set_status(produced, "SUCCEEDED")
    assert (
        wait_for(
            "the producer run to finish",
            lambda: finished(airflow, PRODUCER, producer_run),
            timeout=240,
            interval=1,
            alive=airflow.check_alive,
        )
        == "success"
    )
    assert xcom(airflow, PRODUCER, producer_run, "train")["manifest"]["run_id"] == "w-e2e"

    def consumer_run() -> dict | None:
        runs = airflow.call("GET", f"/dags/{CONSUMER}/dagRuns")["dag_runs"]
        return runs[0] if runs else None

    run = wait_for("the Asset-scheduled DAG run", consumer_run, timeout=180, interval=1, alive=airflow.check_alive)
    assert run["run_type"] == "asset_triggered"
    assert (
        wait_for(
            "the consumer run to finish",
            lambda: finished(airflow, CONSUMER, run["dag_run_id"]),
            timeout=180,
            interval=1,
            alive=airflow.check_alive,
        )
        == "success"
    )
    [extra] = xcom(airflow, CONSUMER, run["dag_run_id"], "consume")
    assert extra["run_id"] == "w-e2e" and extra["manifest_uri"] == OUTPUT + "manifest.json"
    assert extra["counts"] == {"users": 30, "items": 20, "interactions": 500, "recommendations": 300}
    assert extra["precision_at_k"] == {"k": 10, "als": 0.31, "popularity": 0.12}
