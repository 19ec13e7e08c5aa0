"""gpu_recommendations_consumer: runs whenever gpu_recommendations commits new recommendations.

It is scheduled on the Asset ``gpu_recommendations.recommendations``, which the training task
emits when its job has committed ``manifest.json`` (see docs/operator.md, "Assets"). The event's
extra carries what a consumer needs without reading S3 first: the worker's run id, where the run's
outputs and manifest are, the counts and precision@k. This example reports them; a real consumer
would load the recommendations from ``output_uri`` (a serving index, a cache, an e-mail campaign).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Asset, task

#: The same Asset as dags/gpu_recommendations.py's RECOMMENDATIONS (an Asset is its name).
RECOMMENDATIONS = Asset(name="gpu_recommendations.recommendations")

with DAG(
    dag_id="gpu_recommendations_consumer",
    description="Picks up each committed run of gpu_recommendations, through its Asset event",
    schedule=[RECOMMENDATIONS],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["airflow-gpu", "recommendations"],
    doc_md=__doc__,
) as dag:

    @task
    def announce(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """One line per committed run that triggered this DAG run, and the extras as XCom."""
        import logging

        log = logging.getLogger("airflow.task")
        extras = [dict(event.extra) for events in (triggering_asset_events or {}).values() for event in events]
        if not extras:
            raise ValueError("No asset event triggered this run: trigger gpu_recommendations, not this DAG.")
        for extra in extras:
            quality = extra.get("precision_at_k") or {}
            log.info(
                "Run %s committed %s: %s; precision@%s ALS %s vs popularity %s",
                extra.get("run_id"),
                extra.get("output_uri"),
                extra.get("counts"),
                quality.get("k"),
                quality.get("als"),
                quality.get("popularity"),
            )
        return extras

    announce()
