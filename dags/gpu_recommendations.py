"""gpu_recommendations: implicit-feedback recommendations trained on a GPU, published only once validated.

    prepare  ->  train (GpuBatchOperator, deferred while the GPU works)  ->  publish
                                                                        ->  gpu_check (@task.gpu_batch)

* **prepare** resolves the environment (data root, Batch queue, job definition,
  connection), describes the input prefix (objects, formats, bytes) and fails at once,
  saying what to do, when there is nothing to train on.
* **train** runs ``airflow-gpu-worker als`` on AWS Batch (or as a local process with
  ``backend=local``). The task defers, so no worker slot is held while the job runs; it
  resumes with the job's result and the summary of the manifest the job committed.
* **publish** validates that manifest (it is this run's, counts add up, every file is
  there, ALS beats popularity when evaluation is on) and only then points
  ``<data root>/recommendations/latest.json`` at this run's prefix. Readers who follow
  the marker never see a half-written or unvalidated output.
* **train** declares the Asset ``gpu_recommendations.recommendations`` as its outlet: each
  run whose job commits its outputs emits one event, whose extra names that run's prefix and
  manifest, with the run id, counts and precision@k (``gpu_recommendations_consumer`` is
  scheduled on it).
* **gpu_check** is a decorated Python function (``@task.gpu_batch``) run in the same image:
  it reports the Python and GPUs the container sees, next to the training job's id.

Every environment has its own data root, job queue and job definition (so its own image),
from the Airflow Variable ``gpu_recommendations_environments`` (JSON), merged over the
defaults below; environments never share data or code. Each run writes under
``<data root>/recommendations/<run id>/``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

from airflow_gpu.operators import GpuBatchOperator

ENVIRONMENTS_VARIABLE = "gpu_recommendations_environments"
#: The committed recommendations of train, whatever the environment: one event per committed run
#: prefix, whose extra says which (docs/operator.md, "Assets"). Named, not a URI: every run writes
#: its own prefix. dags/gpu_recommendations_consumer.py is scheduled on the same name.
RECOMMENDATIONS = Asset(name="gpu_recommendations.recommendations")
DEFAULT_ENVIRONMENTS: dict[str, dict[str, str]] = {
    name: {
        "data_root": f"s3://airflow-gpu-{name}/recsys/",
        "job_queue": f"airflow-gpu-{name}-queue",
        "job_definition": f"airflow-gpu-{name}-worker",
        "aws_conn_id": "aws_default",
    }
    for name in ("testing", "staging", "production")
}

PARAMS = {
    "environment": Param(
        "testing",
        enum=sorted(DEFAULT_ENVIRONMENTS),
        description=(
            "Which environment to run in. It picks the data root (input interactions/, outputs "
            "recommendations/), the Batch job queue and the job definition (the worker image), from the "
            f"Variable {ENVIRONMENTS_VARIABLE}. Runs in one environment never read or write another's data."
        ),
    ),
    "backend": Param(
        "aws_batch",
        enum=["aws_batch", "local"],
        description=(
            "Where the training job runs: aws_batch (a GPU container on AWS Batch), or local (a process on "
            "the Airflow worker's machine, no queueing, for demos and development)."
        ),
    ),
    "weight_column": Param(
        "plays",
        type=["string", "null"],
        description="Column with interaction strength (plays, views, counts); null counts each row once.",
    ),
    "factors": Param(
        64,
        type="integer",
        minimum=1,
        maximum=1024,
        description="ALS latent factors per user and item: more capture finer tastes, at more GPU memory and time.",
    ),
    "iterations": Param(
        15,
        type="integer",
        minimum=1,
        maximum=200,
        description=(
            "The most ALS iterations (each solves all users, then all items); the loss is logged per iteration "
            "and training stops sooner once it stops improving (the worker's --early-stop)."
        ),
    ),
    "regularization": Param(
        "auto",
        anyOf=[{"type": "string", "enum": ["auto"]}, {"type": "number", "minimum": 0}],
        description=(
            "ALS L2 regularization: auto scales it to the data (0.2 x the largest singular value of the "
            "confidence matrix, chosen on tuning data), or a number >= 0 to set it."
        ),
    ),
    "tune": Param(
        True,
        type="boolean",
        description=(
            "First search the confidence weighting, alpha and regularization share on a validation split of the "
            "training data, keeping the defaults unless clearly beaten (the worker's --tune, on by default, within "
            "a quarter of the training run's time). Needs regularization auto: to fix the regularization, set tune "
            "to false as well."
        ),
    ),
    "top_n": Param(
        10,
        type="integer",
        minimum=1,
        maximum=1000,
        description="Recommendations written per user; items the user already interacted with are left out.",
    ),
    "eval_holdout": Param(
        0.1,
        type="number",
        minimum=0,
        maximum=0.5,
        description=(
            "Share of each user's interactions held out to measure precision@10 of ALS against a popularity "
            "baseline. With evaluation on, publish refuses a model that does not beat popularity; 0 turns both off."
        ),
    ),
    "min_lift": Param(
        1.0,
        type="number",
        minimum=1.0,
        description="Publish only when ALS precision@10 exceeds min_lift x popularity's (with evaluation on).",
    ),
    "require_success_marker": Param(
        True,
        type="boolean",
        description="Refuse an input prefix without the _SUCCESS marker a finished Spark export writes.",
    ),
    "gpus": Param(1, type="integer", minimum=0, maximum=16, description="GPUs for the training job (Batch)."),
    "poll_interval": Param(
        30,
        type="number",
        minimum=0.5,
        description="Seconds between job status polls (one DescribeJobs call covers 100 jobs).",
    ),
}


def environment_config(name: str, override: Any = None) -> dict[str, str]:
    """The environment's settings: defaults, overridden by the Variable's entries; checked for mixing."""
    environments = {key: dict(value) for key, value in DEFAULT_ENVIRONMENTS.items()}
    if override:
        if not isinstance(override, dict) or not all(isinstance(v, dict) for v in override.values()):
            raise ValueError(
                f"Variable {ENVIRONMENTS_VARIABLE} must be a JSON object of objects, e.g. "
                '{"production": {"data_root": "s3://bucket/recsys/"}}'
            )
        for key, value in override.items():
            environments.setdefault(key, {}).update(value)
    if name not in environments:
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(sorted(environments))}")
    roots = {key: _root(env.get("data_root", ""), key) for key, env in environments.items()}
    for key, root in roots.items():
        for other, other_root in roots.items():
            if key != other and (root.startswith(other_root) or other_root.startswith(root)):
                raise ValueError(
                    f"environments {key!r} and {other!r} share data ({root} and {other_root}); give each its own "
                    f"data_root in Variable {ENVIRONMENTS_VARIABLE}, so that runs never mix data"
                )
    config = environments[name]
    for field in ("job_queue", "job_definition"):
        if not config.get(field):
            raise ValueError(f"environment {name!r} has no {field}; set it in Variable {ENVIRONMENTS_VARIABLE}")
    return {**config, "data_root": roots[name], "aws_conn_id": config.get("aws_conn_id") or "aws_default"}


def _root(uri: str, name: str) -> str:
    if not uri:
        raise ValueError(f"environment {name!r} has no data_root; set it in Variable {ENVIRONMENTS_VARIABLE}")
    return uri.rstrip("/") + "/"


def run_folder(run_id: str) -> str:
    """A prefix-safe folder name for a DAG run ("manual__2026-01-01T00:00:00+00:00" -> "manual__2026-01-01T00-00-00-00-00")."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", run_id).strip("-.") or "run"


def worker_command(params: dict, input_uri: str, output_uri: str, endpoint_url: str | None) -> list[str]:
    command = ["als", "--input", input_uri, "--output", output_uri]
    command += ["--factors", str(params["factors"]), "--iterations", str(params["iterations"])]
    command += ["--regularization", str(params["regularization"]), "--top-n", str(params["top_n"])]
    if params["weight_column"]:
        command += ["--weight-col", params["weight_column"]]
    if params["eval_holdout"]:
        command += ["--eval-holdout", str(params["eval_holdout"])]
    if params.get("tune"):
        if params["regularization"] != "auto":
            # The worker would skip the search without a word in the DAG; say so before anything runs.
            raise ValueError(
                f"tune searches the regularization itself, but regularization is {params['regularization']!r}: "
                "set regularization to auto, or tune to false"
            )
        command.append("--tune")
    else:
        command.append("--no-tune")  # the worker searches unless told not to
    # The command is the argv of the image's entrypoint on every backend (the local one prepends
    # airflow-gpu-worker). Only where S3 is differs: a local process reaches it where the connection says.
    if params["backend"] == "local" and endpoint_url:
        command += ["--endpoint-url", endpoint_url]
    return command


with DAG(
    dag_id="gpu_recommendations",
    description="Train implicit ALS on a GPU (AWS Batch) and publish validated recommendations",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["airflow-gpu", "recommendations"],
    doc_md=__doc__,
    default_args={"retries": 0},
) as dag:

    @task(multiple_outputs=True)
    def prepare(params: dict | None = None, run_id: str | None = None) -> dict[str, Any]:
        """Resolve the environment and describe the input; fail early when there is nothing to train on."""
        import logging

        from airflow.sdk import Variable

        from airflow_gpu.contract import format_from_name, is_marker
        from airflow_gpu.object_store import ObjectStore

        log = logging.getLogger("airflow.task")
        assert params is not None and run_id is not None
        override = Variable.get(ENVIRONMENTS_VARIABLE, default=None, deserialize_json=True)
        env = environment_config(params["environment"], override)
        root = env["data_root"]
        input_uri = root + "interactions/"
        output_uri = f"{root}recommendations/{run_folder(run_id)}/"

        store = ObjectStore(env["aws_conn_id"])
        objects, markers = [], []
        for info in store.list(input_uri):
            (markers if is_marker(info.name) else objects).append(info)
        if not objects:
            raise ValueError(
                f"No input under {input_uri} (environment {params['environment']!r}): export the interactions "
                f"there (Parquet, ORC or CSV, columns user_id, item_id[, {params['weight_column'] or 'weight'}]) "
                f"or choose another environment."
            )
        if params["require_success_marker"] and not any(m.name.rsplit("/", 1)[-1] == "_SUCCESS" for m in markers):
            raise ValueError(
                f"{input_uri} has {len(objects)} objects but no _SUCCESS marker, so the export may still be "
                f"running. Wait for it to finish, or set require_success_marker=false if your exports write none."
            )
        formats: dict[str, dict[str, int]] = {}
        for info in objects:
            kind = format_from_name(info.name) or "other"
            entry = formats.setdefault(kind, {"objects": 0, "bytes": 0})
            entry["objects"] += 1
            entry["bytes"] += info.size
        total = sum(info.size for info in objects)
        log.info("Input %s: %d objects, %.1f MB: %s", input_uri, len(objects), total / 1e6, json.dumps(formats))
        log.info("Outputs of this run go to %s", output_uri)

        endpoint_url = None
        if params["backend"] == "local":
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            endpoint_url = S3Hook(aws_conn_id=env["aws_conn_id"]).conn_config.get_service_endpoint_url("s3")
        return {
            "environment": params["environment"],
            "input_uri": input_uri,
            "output_uri": output_uri,
            "latest_uri": f"{root}recommendations/latest.json",
            "staging_prefix": f"{root}staging/",
            "objects": len(objects),
            "bytes": total,
            "formats": formats,
            "job_queue": env["job_queue"],
            "job_definition": env["job_definition"],
            "aws_conn_id": env["aws_conn_id"],
            "command": worker_command(params, input_uri, output_uri, endpoint_url),
        }

    prepared = prepare()

    train = GpuBatchOperator(
        task_id="train",
        job_queue=prepared["job_queue"],
        job_definition=prepared["job_definition"],
        aws_conn_id=prepared["aws_conn_id"],
        command=prepared["command"],
        output_uri=prepared["output_uri"],
        outlets=[RECOMMENDATIONS],
        backend="{{ params.backend }}",
        gpus="{{ params.gpus }}",
        poll_interval="{{ params.poll_interval }}",
        tags={"environment": "{{ params.environment }}", "pipeline": "gpu_recommendations"},
        retry_attempts=3,  # Spot reclaims only; the job's own errors fail at once
        timeout=timedelta(hours=4),
        max_queued=timedelta(hours=2),
        execution_timeout=timedelta(hours=8),
        retries=2,  # a retry reattaches to the running job, never starts a second one
        retry_delay=timedelta(minutes=1),
    )

    @task
    def publish(prepared: dict, trained: dict, params: dict | None = None, dag_run: Any = None) -> dict[str, Any]:
        """Validate the committed outputs, then (and only then) point the latest marker at this run."""
        import logging

        from airflow_gpu.committed_outputs import validate
        from airflow_gpu.contract import LATEST_FORMAT, LATEST_VERSION
        from airflow_gpu.object_store import ObjectStore

        log = logging.getLogger("airflow.task")
        assert params is not None
        store = ObjectStore(prepared["aws_conn_id"])
        output_uri = prepared["output_uri"]
        manifest = validate(
            store,
            output_uri,
            expected_run_id=(trained.get("manifest") or {}).get("run_id"),
            top_n=params["top_n"],
            require_evaluation=bool(params["eval_holdout"]),
            min_lift=params["min_lift"],
        )
        summary = manifest["summary"]
        log.info("Validated %s: %s", output_uri + "manifest.json", json.dumps(summary))

        run_after = getattr(dag_run, "run_after", None) or datetime.now(timezone.utc)
        marker = {
            "format": LATEST_FORMAT,
            "version": LATEST_VERSION,
            "environment": prepared["environment"],
            "run_prefix": output_uri,
            "manifest": output_uri + "manifest.json",
            "worker_run_id": manifest["run_id"],
            "dag_id": getattr(dag_run, "dag_id", None),
            "dag_run_id": getattr(dag_run, "run_id", None),
            "run_after": run_after.isoformat(),
            "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "job_id": trained["job_id"],
            "summary": summary,
        }
        current = store.read(prepared["latest_uri"])
        if current:
            previous = json.loads(current)
            if previous.get("run_after") and datetime.fromisoformat(previous["run_after"]) > run_after:
                log.warning(
                    "Not moving %s back to this run: it points at a newer run (%s)",
                    prepared["latest_uri"],
                    previous.get("dag_run_id"),
                )
                return {**marker, "latest_uri": prepared["latest_uri"], "latest_updated": False}
        store.write(prepared["latest_uri"], json.dumps(marker, indent=2).encode())
        log.info("%s now points at %s", prepared["latest_uri"], output_uri)
        return {**marker, "latest_uri": prepared["latest_uri"], "latest_updated": True}

    publish(prepared, train.output)

    @task.gpu_batch(
        job_queue=prepared["job_queue"],
        job_definition=prepared["job_definition"],
        aws_conn_id=prepared["aws_conn_id"],
        staging_prefix=prepared["staging_prefix"],
        backend="{{ params.backend }}",
        gpus="{{ params.gpus }}",
        poll_interval="{{ params.poll_interval }}",
        timeout=timedelta(minutes=10),
        max_queued=timedelta(hours=1),
        execution_timeout=timedelta(hours=2),
    )
    def gpu_check(trained: dict) -> dict:
        """Runs inside the GPU container (a decorated function, shipped by @task.gpu_batch): what the
        image sees of the GPUs the training job had, beside the job's own result. A few seconds."""
        import os
        import platform
        import shutil
        import subprocess

        smi = shutil.which("nvidia-smi")
        gpus = (
            subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout.splitlines() if smi else []
        )
        print(f"python {platform.python_version()} on {platform.node()}: {len(gpus)} GPU(s)", flush=True)
        return {
            "python": platform.python_version(),
            "gpus": gpus,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "trained_job_id": trained["job_id"],
            "precision_at_k": ((trained.get("manifest") or {}).get("summary") or {}).get("precision_at_k"),
        }

    gpu_check(train.output)
