"""``airflow-gpu demo``: the gpu_recommendations DAG end to end on this machine, no AWS needed.

1. An Airflow home inside the project folder (``.airflow/``), its database migrated when needed.
2. An embedded S3 (moto, on a free loopback port), unless ``--s3-endpoint`` is given.
3. A synthetic interaction log (``--size``, 3M by default): power-law item popularity,
   users with latent tastes, string user ids, written as a Spark export of ORC parts.
4. The DAG, run with ``dag.test()``: prepare -> train (deferred; the worker runs as a local
   process, ``backend=local``) -> publish (validated, then the latest marker moves).
5. A summary: stage times, ALS against popularity, three users and their recommendations,
   and where the outputs are (copied to ``.demo/`` since the embedded S3 lives in memory).

Airflow is configured through environment variables, so they are set before Airflow is
imported; nothing outside the project folder is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

DAG_ID = "gpu_recommendations"
DAG_FILE = "gpu_recommendations.py"
ENVIRONMENT = "testing"
DEFAULT_SIZE = 3_000_000


def _count(text: str) -> int:
    value = int(float(text.replace("_", "")))
    if value < 1000:
        raise argparse.ArgumentTypeError(f"at least 1000 interactions, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        type=_count,
        default=DEFAULT_SIZE,
        metavar="N",
        help=f"interactions to generate (default {DEFAULT_SIZE:,}; one user per 30, one item per 150)",
    )
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        default=None,
        help="use this S3-compatible endpoint (with your AWS_* credentials) instead of an embedded one",
    )
    parser.add_argument(
        "--bucket", default="airflow-gpu-testing", help="bucket for the demo's data (default %(default)s)"
    )
    parser.add_argument("--objects", type=int, default=8, help="ORC parts in the export (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the data (default %(default)s)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a DAG param for the run, e.g. --param factors=32 (value parsed as JSON); repeatable",
    )
    parser.add_argument(
        "--home", type=Path, default=None, help="AIRFLOW_HOME (default: .airflow in the project folder)"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where to copy the run's outputs (default: .demo/ in the project folder)",
    )
    parser.add_argument("--verbose", action="store_true", help="show Airflow's own log lines too")


def project_root() -> Path:
    """The checkout holding dags/: the demo runs the project's own DAG file."""
    here = Path(__file__).resolve().parents[2]
    for candidate in (here, Path.cwd()):
        if (candidate / "dags" / DAG_FILE).is_file():
            return candidate
    raise SystemExit(
        f"airflow-gpu demo: cannot find dags/{DAG_FILE}; run the demo from a checkout of airflow-gpu (make demo)."
    )


def parse_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"airflow-gpu demo: --param wants NAME=VALUE, got {pair!r}")
        try:
            params[name] = json.loads(value)
        except ValueError:
            params[name] = value
    return params


def configure_airflow(home: Path, dags_folder: Path, verbose: bool) -> None:
    """Airflow reads these when it is first imported: set them before that."""
    home.mkdir(parents=True, exist_ok=True)
    from airflow_gpu.jobs.local.backend import STATE_DIR_ENV, default_state_dir

    # The demo's local jobs go where `airflow-gpu logs ID --backend local` looks (the default is
    # under the Airflow home, which the demo replaces with its own): one folder for demo and terminal.
    os.environ.setdefault(STATE_DIR_ENV, str(default_state_dir()))
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    if not verbose:
        # Not even a failed task's traceback: the demo ends with the failure's own message and the
        # worker's log paths (--verbose shows Airflow's lines, tracebacks included).
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "CRITICAL"
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*starlette.testclient.*")  # Airflow's in-process API, not ours


def migration_stamp(home: Path) -> Path:
    """The file that says ``home``'s database was migrated by this Airflow version."""
    from importlib.metadata import version

    return home / f".migrated-airflow-{version('apache-airflow')}"


def migrate_if_needed(home: Path, say) -> None:
    """``airflow db migrate`` on the first run and after an Airflow upgrade; a stamp remembers it."""
    stamp = migration_stamp(home)
    if stamp.exists() and (home / "airflow.db").exists():
        return
    say(f"migrating the Airflow database in {home} (first run only) ...")
    started = time.monotonic()
    log = home / "db-migrate.log"
    with open(log, "wb") as out:
        done = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        raise SystemExit("airflow-gpu demo: `airflow db migrate` failed:\n" + "\n".join(tail) + f"\n(full log: {log})")
    stamp.touch()
    say(f"database ready in {time.monotonic() - started:.1f} s")


def upload_export(s3, data_table, bucket: str, prefix: str, objects: int) -> tuple[int, int]:
    """Replace s3://bucket/prefix with a Spark-style ORC export of the table; (objects, bytes)."""
    from airflow_gpu.demo.synthetic import spark_export

    try:
        s3.create_bucket(Bucket=bucket)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    old = [
        {"Key": item["Key"]}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", ())
    ]
    for start in range(0, len(old), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": old[start : start + 1000]})
    count = size = 0
    for name, data in spark_export(data_table, objects):
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=data)
        count += 1
        size += len(data)
    return count, size


def run(args: argparse.Namespace) -> int:
    from airflow_gpu.demo.progress import elapsed_printer

    started = time.monotonic()
    say = elapsed_printer(started)
    project = project_root()
    home = (args.home or project / ".airflow").resolve()
    outputs_root = (args.output_dir or project / ".demo").resolve()
    configure_airflow(home, project / "dags", args.verbose)
    params = {"environment": ENVIRONMENT, "backend": "local", "poll_interval": 1, **parse_params(args.param)}
    say(f"airflow-gpu demo: DAG {DAG_ID}, {args.size:,} interactions, Airflow home {home}")
    migrate_if_needed(home, say)

    from airflow_gpu.demo.s3 import DemoS3

    s3 = DemoS3.start(args.s3_endpoint)
    progress = None
    try:
        say(("embedded S3 (moto) at " if s3.embedded else "S3 at ") + s3.endpoint_url)
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = s3.connection_uri_json()
        data_root = f"s3://{args.bucket}/recsys/"
        os.environ["AIRFLOW_VAR_GPU_RECOMMENDATIONS_ENVIRONMENTS"] = json.dumps({ENVIRONMENT: {"data_root": data_root}})
        client = s3.client()

        stages = []
        from airflow_gpu.demo.summary import Stage

        say(f"generating {args.size:,} interactions with latent tastes and power-law popularity ...")
        t0 = time.monotonic()
        from airflow_gpu.demo.synthetic import generate

        data = generate(args.size, seed=args.seed)
        users = len(data.user_home)
        items = len(data.item_genre)
        stages.append(
            Stage(
                "generate data",
                time.monotonic() - t0,
                f"{args.size:,} rows, {users:,} users, {items:,} items, {int(data.item_genre.max()) + 1} genres",
            )
        )
        say(f"generated in {stages[-1].seconds:.1f} s: {stages[-1].detail}")
        t0 = time.monotonic()
        input_uri = data_root + "interactions/"
        count, size = upload_export(client, data.table, args.bucket, "recsys/interactions/", args.objects)
        stages.append(
            Stage("upload to S3", time.monotonic() - t0, f"{count - 1} ORC parts + _SUCCESS, {size / 1e6:.1f} MB")
        )
        say(f"wrote {input_uri}: {stages[-1].detail} ({stages[-1].seconds:.1f} s)")

        dag = load_dag(project / "dags" / DAG_FILE)
        # Fail fast: in a demo a retry only repeats the same error a minute later. Each failure's
        # message is kept, so the demo can end with its reason rather than "the error is above".
        reasons: dict[str, str] = {}
        for task in dag.tasks:
            task.retries = 0
            task.on_failure_callback = [*_callbacks(task.on_failure_callback), _remember_failure(reasons)]
        from airflow_gpu.demo.progress import Progress
        from airflow_gpu.jobs.local.backend import default_state_dir

        say(f"running the DAG with dag.test(), params {json.dumps(params)}")
        progress = Progress(DAG_ID, time.time(), default_state_dir(), say)
        t0 = time.monotonic()
        with progress:
            dag_run = dag.test(run_conf=params)
        say(f"DAG run {dag_run.run_id} finished: {dag_run.state} ({time.monotonic() - t0:.1f} s)")
        tasks = task_timings(dag_run)
        if str(getattr(dag_run.state, "value", dag_run.state)) != "success":
            failed = [t for t, (state, _) in tasks.items() if state not in ("success", "skipped")]
            for job_id in progress.job_ids:
                print(f"The worker's log: {default_state_dir() / job_id / 'output.log'}", file=sys.stderr)
            if INTERRUPTED in reasons.values():  # dag.test turns Ctrl-C into a failed task
                stopped = stop_jobs(progress.job_ids)
                progress = None
                what = f"stopped local job(s) {', '.join(stopped)}" if stopped else "no job was left running"
                print(f"airflow-gpu demo: interrupted; {what}, and the embedded S3 is shut down", file=sys.stderr)
                return 130
            first = next((t for t in failed if t in reasons), None)
            why = f"{first}: {reasons[first]}" if first else f"{', '.join(failed) or '?'} (see the lines above)"
            print(f"airflow-gpu demo: the DAG run failed at {why}", file=sys.stderr)  # the last line: the reason
            return 1
        summarize(args, say, stages, tasks, data, client, s3.embedded, dag_run, outputs_root, started)
        return 0
    except KeyboardInterrupt:
        stopped = stop_jobs(progress.job_ids) if progress is not None else []
        progress = None
        s3.stop()
        what = f"stopped local job(s) {', '.join(stopped)}" if stopped else "no job was left running"
        print(f"airflow-gpu demo: interrupted; {what}, and the embedded S3 is shut down", file=sys.stderr)
        return 130
    finally:
        if progress is not None:
            stop_jobs(progress.job_ids)
        s3.stop()


def _callbacks(existing) -> list:
    if existing is None:
        return []
    return list(existing) if isinstance(existing, (list, tuple)) else [existing]


#: What a task that Ctrl-C stopped is remembered by.
INTERRUPTED = "interrupted (Ctrl-C)"


def _remember_failure(reasons: dict[str, str]):
    def remember(context) -> None:
        exc = context.get("exception")
        if isinstance(exc, KeyboardInterrupt):
            reasons[context["ti"].task_id] = INTERRUPTED
            return
        text = (str(exc) or type(exc).__name__) if exc is not None else "failed"
        if INTERRUPTED in text:  # Ctrl-C while the inline trigger waited: it stopped the job (jobs/interrupt.py)
            reasons[context["ti"].task_id] = INTERRUPTED
            return
        reasons.setdefault(context["ti"].task_id, text.strip().splitlines()[0] if text.strip() else text)

    return remember


def load_dag(path: Path):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(path))
    if bag.import_errors or DAG_ID not in bag.dags:
        raise SystemExit(f"airflow-gpu demo: cannot load {path}: {json.dumps(bag.import_errors, indent=2)}")
    return bag.dags[DAG_ID]


def task_timings(dag_run) -> dict[str, tuple[str, float | None]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        return {
            ti.task_id: (
                str(getattr(ti.state, "value", ti.state)),
                (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else None,
            )
            for ti in rows
        }


def stop_jobs(job_ids: list[str]) -> list[str]:
    """An interrupted demo leaves no worker running: the local jobs are detached by design. The ids stopped."""
    if not job_ids:
        return []
    import asyncio

    from airflow_gpu.jobs.local.backend import LocalBackend

    async def stop() -> list[str]:
        backend = LocalBackend()
        stopped = []
        for state in await backend.describe(job_ids):
            if not state.is_terminal:
                await backend.terminate(state.job_id, "airflow-gpu demo stopped")
                stopped.append(state.job_id)
        return stopped

    return asyncio.run(stop())


def summarize(
    args, say, stages, tasks, data, client, embedded: bool, dag_run, outputs_root: Path, started: float
) -> None:
    from airflow_gpu.demo.summary import (
        Stage,
        copy_outputs,
        pick_users,
        quality_lines,
        read_json,
        sample_lines,
        stage_lines,
        worker_stage_detail,
    )

    latest_uri = f"s3://{args.bucket}/recsys/recommendations/latest.json"
    latest = json.loads(client.get_object(Bucket=args.bucket, Key="recsys/recommendations/latest.json")["Body"].read())
    run_prefix = latest["run_prefix"]
    local = outputs_root / run_prefix.rstrip("/").rsplit("/", 1)[-1]
    say(f"copying the run's outputs to {local} ...")
    copy_outputs(client, run_prefix, latest_uri, local)
    manifest = read_json(local / "manifest.json")
    metrics = read_json(local / manifest["metrics"])

    prepare_state, prepare_s = tasks.get("prepare", ("?", None))
    train_state, train_s = tasks.get("train", ("?", None))
    publish_state, publish_s = tasks.get("publish", ("?", None))
    summary = manifest["summary"]
    stages = [
        *stages,
        Stage("prepare", prepare_s, "input described, environment resolved"),
        Stage("train (deferred)", train_s, f"job {latest['job_id']} {worker_stage_detail(metrics)}"),
        Stage("publish", publish_s, "manifest validated, latest.json moved to this run"),
        Stage("total", time.monotonic() - started, "(this command, from start to here)"),
    ]
    print()
    print("Stages")
    for line in stage_lines(stages):
        print("  " + line)
    print()
    training = metrics["training"]
    ran = training.get("iterations_run", training["iterations"])
    print(
        f"Model: {summary['users']:,} users x {summary['items']:,} items, {summary['interactions']:,} interactions "
        f"({summary.get('pairs', summary['interactions']):,} distinct pairs), {training['factors']} factors, "
        f"{ran} of at most {training['iterations']} iterations on {summary['device']}"
    )
    for line in quality_lines(metrics):
        print("  " + line)
    print()
    print("Three users (items tagged with their hidden genre [gN]):")
    users = pick_users(data, 3, seed=args.seed)
    for line in sample_lines(data, local / manifest["root"] / "recommendations", users):
        print("  " + line)
    print()
    print("Where things are")
    print(f"  latest marker   {latest_uri} -> {run_prefix}")
    print(f"  manifest        {run_prefix}manifest.json")
    print(f"  outputs         {run_prefix}{manifest['root']}{{{','.join(manifest['datasets'])}}}/")
    if embedded:
        print("                  (the embedded S3 lives in memory and stops with the demo; hence the copy below)")
    print(f"  local copy      {local}/")
    print(f"  report          {local / manifest['report']}")
    print(f"  Airflow home    {os.environ['AIRFLOW_HOME']} (run {dag_run.run_id})")
