"""Run a DAG with a ``@task.gpu_batch`` task under dag.test(), in a fresh process (Airflow reads its
configuration at import). Used by tests/e2e/test_decorator_dag.py; prints one ``RESULT {json}`` line.

    python tests/support/decorated_dag_driver.py AIRFLOW_HOME BACKEND QUEUE DEFINITION STAGING_PREFIX

The DAG: an upstream task's list goes into the decorated function as an XCom; its dict comes
back with multiple_outputs and one key of it goes on, as an XCom, to a downstream task.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DAG_FILE = Path(__file__).resolve().parent / "dags" / "decorated_gpu.py"


def main(home: Path, backend: str, queue: str, definition: str, staging: str) -> dict:
    from airflow_gpu.demo import command as demo

    demo.configure_airflow(home, DAG_FILE.parent, verbose=False)
    demo.migrate_if_needed(home, print)

    from airflow_gpu.decorators import GpuBatchDecoratedOperator

    resumed: list[str] = []
    original = GpuBatchDecoratedOperator.execute_complete

    def counting(self, context, event=None, reattached=False):
        resumed.append((event or {}).get("status"))
        return original(self, context, event, reattached)

    GpuBatchDecoratedOperator.execute_complete = counting
    os.environ.update(
        DECORATED_BACKEND=backend, DECORATED_QUEUE=queue, DECORATED_DEFINITION=definition, DECORATED_STAGING=staging
    )
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))  # dag.test() runs only a DAG that was loaded from a file
    assert not bag.import_errors, bag.import_errors
    run = bag.dags["decorated_gpu"].test()

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == "decorated_gpu", XComModel.run_id == run.run_id)
        xcoms = {f"{r.task_id}.{r.key}": r.value for r in rows}
    return {
        "state": str(getattr(run.state, "value", run.state)),
        "tasks": {task: state for task, (state, _) in demo.task_timings(run).items()},
        "resumed": resumed,
        "xcoms": {
            k: (v if isinstance(v, (str, int, float, list, dict, type(None))) else str(v)) for k, v in xcoms.items()
        },
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]), *sys.argv[2:6]), default=str), flush=True)
