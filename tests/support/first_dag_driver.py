"""Run tests/support/dags/first_local_dag.py with dag.test() in a fresh process (Airflow reads its
configuration at import); prints one ``RESULT {json}`` line, after the tasks' own log lines.

    python -m tests.support.first_dag_driver AIRFLOW_HOME
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DAG_FILE = Path(__file__).resolve().parent / "dags" / "first_local_dag.py"


def main(home: Path) -> dict:
    from airflow_gpu.demo import command as demo

    demo.configure_airflow(home, DAG_FILE.parent, verbose=True)  # the tasks' INFO lines are what is checked
    demo.migrate_if_needed(home, print)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))  # dag.test() runs only a DAG that was loaded from a file
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["first_local_dag"]
    polls = {task.task_id: getattr(task, "poll_interval", None) for task in dag.tasks}
    run = dag.test()

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == "first_local_dag", XComModel.run_id == run.run_id)
        xcoms = {f"{r.task_id}.{r.key}": r.value for r in rows}
    return {
        "state": str(getattr(run.state, "value", run.state)),
        "tasks": {task: state for task, (state, _) in demo.task_timings(run).items()},
        "polls": polls,
        "add": xcoms.get("add.return_value"),
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1])), default=str), flush=True)
