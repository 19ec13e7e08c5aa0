"""Run a GpuBatchOperator DAG on AWS Batch (moto) with dag.test(), then read its extra links the
way Airflow's UI does: the serialized DAG's task, ``get_extra_links(ti, name)`` on the task
instance from the database (Airflow's XComOperatorLink reading the XCom the task runner saved).
A fresh process, since Airflow reads its configuration at import. Used by tests/e2e/test_links.py.

    python tests/support/links_driver.py AIRFLOW_HOME [--event-without-links]

``--event-without-links``: the trigger's event carries no console links, so the resumed task
must find the link saved when it deferred (as a task resumed with ``__fail__`` after a trigger
timeout has no event at all). Prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "links_dag"


def main(home: Path, event_without_links: bool) -> dict:
    sys.path.insert(0, str(ROOT))  # run as a script: tests.support is importable from the root
    from tests.support.moto_aws import CREDENTIALS, start_moto

    os.environ.update(CREDENTIALS)
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    (dags / "links_dag.py").write_text(
        textwrap.dedent(f"""
        import os
        from datetime import datetime
        from airflow.sdk import DAG
        from airflow_gpu.operators import GpuBatchOperator

        with DAG({DAG_ID!r}, schedule=None, start_date=datetime(2026, 1, 1)):
            GpuBatchOperator(task_id="train", job_queue=os.environ["LINKS_QUEUE"], job_definition=os.environ["LINKS_DEFINITION"],
                             command=["als", "--help"], poll_interval=0.2, stream_logs=False, retries=0)
    """)
    )
    from airflow_gpu.demo import command as demo

    demo.configure_airflow(home, dags, verbose=False)
    demo.migrate_if_needed(home, print)

    server, aws = start_moto()
    try:
        batch = aws.create_gpu_batch_environment()
        os.environ["LINKS_QUEUE"], os.environ["LINKS_DEFINITION"] = batch["job_queue"], batch["job_definition"]
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
            {
                "conn_type": "aws",
                "login": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "password": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": aws.endpoint_url, "region_name": aws.region},
            }
        )
        if event_without_links:
            from airflow_gpu.triggers import GpuBatchJobTrigger

            GpuBatchJobTrigger._add_links = staticmethod(lambda event, backend, state: None)

        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(dags / "links_dag.py"))
        assert not bag.import_errors, bag.import_errors
        run = bag.dags[DAG_ID].test()
        return {
            "state": str(getattr(run.state, "value", run.state)),
            "run_id": run.run_id,
            "region": aws.region,
            "job_ids": sorted(aws.batch.jobs()),
            "links": ui_links(run.run_id),
        }
    finally:
        server.stop()


def ui_links(run_id: str) -> dict[str, str | None]:
    """What the UI's extra-links endpoint computes: the serialized task, the TI from the database."""
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dag = SerializedDagModel.get_dag(DAG_ID, session=session)
        task = dag.get_task("train")
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id, TaskInstance.task_id == "train"
            )
        )
        return {name: task.get_extra_links(ti, name) for name in task.extra_links}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]), "--event-without-links" in sys.argv[2:])), flush=True)
