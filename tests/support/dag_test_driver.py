"""Run gpu_recommendations with dag.test() in cases that must fail, in a fresh process (Airflow reads
its configuration at import). Used by tests/e2e/test_demo.py; prints one ``RESULT {json}`` line.

    python tests/support/dag_test_driver.py AIRFLOW_HOME
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(home: Path) -> dict:
    from airflow_gpu.demo import command as demo

    project = demo.project_root()
    demo.configure_airflow(home, project / "dags", verbose=False)
    demo.migrate_if_needed(home, print)

    from airflow_gpu.demo.s3 import DemoS3
    from airflow_gpu.demo.synthetic import synthetic_interactions

    s3 = DemoS3.start()
    try:
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = s3.connection_uri_json()
        os.environ["AIRFLOW_VAR_GPU_RECOMMENDATIONS_ENVIRONMENTS"] = json.dumps(
            {"testing": {"data_root": "s3://data/testing/"}, "staging": {"data_root": "s3://data/staging/"}}
        )
        client = s3.client()
        demo.upload_export(client, synthetic_interactions(20_000, seed=1), "data", "testing/interactions/", 2)
        client.put_object(Bucket="data", Key="staging/interactions/_SUCCESS", Body=b"")  # an export of nothing
        dag = demo.load_dag(project / "dags" / demo.DAG_FILE)
        # The demo's own failure callback keeps each failed task's message (the demo quiets Airflow's
        # task logs unless --verbose, so the messages are read from there, as the demo ends with them).
        reasons: dict[str, str] = {}
        for task in dag.tasks:
            task.retries = 0
            task.on_failure_callback = [*demo._callbacks(task.on_failure_callback), demo._remember_failure(reasons)]
        cases = {
            "empty_input": {"environment": "staging", "backend": "local"},
            "quality_gate": {"environment": "testing", "backend": "local", "poll_interval": 1, "min_lift": 1000},
        }
        results = {}
        for name, conf in cases.items():
            reasons.clear()
            run = dag.test(run_conf=conf)
            results[name] = {
                "state": str(getattr(run.state, "value", run.state)),
                "tasks": {task: state for task, (state, _) in demo.task_timings(run).items()},
                "reasons": dict(reasons),
            }
        listed = client.list_objects_v2(Bucket="data", Prefix="testing/recommendations/").get("Contents", [])
        results["testing_outputs"] = sorted(item["Key"] for item in listed)
        return results
    finally:
        s3.stop()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))), flush=True)
