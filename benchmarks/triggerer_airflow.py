"""N deferred GPU tasks through a real `airflow triggerer` on PostgreSQL: GpuBatchOperator's trigger
against the amazon provider's BatchOperator(deferrable=True) trigger, at the same N; and ours again
without live logs (``ours_quiet``), for what relaying the container's lines costs.

benchmarks/triggerer_scale.py runs triggers in a bare event loop; this one runs them where they
live, in `airflow triggerer` (its supervisor and its trigger-runner subprocess) with
``[triggerer] capacity`` raised, on a PostgreSQL metadata database that it starts and removes
(tests/support/postgres.py). The Batch side is triggerer_scale's server process: a moto server whose
jobs stay RUNNING until a set time, spread over one poll interval, and then SUCCEED; it counts
DescribeJobs calls.

How the N tasks reach DEFERRED: a scheduler creates each side's DAG run and its N mapped task
instances in a pool with no slots (so none runs), and is then stopped; this process then defers
each task instance exactly as the execution API does when a task calls ``defer()`` (a trigger row
from the trigger object the operator builds, and the instance DEFERRED on it with
``next_method="execute_complete"``). Running N submit tasks through LocalExecutor instead costs
seconds of CPU per task on this 2-core machine (see benchmarks/README.md), which would measure the
task runner, not the triggerer.

Measured per side, on the triggerer's process tree: CPU seconds (whole run, and while watching:
from the jobs' clock start to the last event), peak RSS (sum over the tree, sampled every 0.5 s),
DescribeJobs calls per poll cycle, and the delay from each job's end to its task instance leaving
DEFERRED (its ``updated_at``, written by the triggerer when it records the trigger's event: the
task is then SCHEDULED to resume, which a GPU task ending on the triggerer would skip), split into
job end -> a DescribeJobs first answers it ended (the server's record), -> its trigger fires (the
runner's "Trigger fired event" record in the task's trigger log), -> the task leaves DEFERRED.

    .venv/bin/python benchmarks/triggerer_airflow.py --jobs 2000
    .venv/bin/python benchmarks/triggerer_airflow.py --jobs 20 --poll 2 --job-seconds 4   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the harnesses tests share

from triggerer_scale import FAKE_CREDENTIALS, ServerHandle, _calls_between, _cycles, _ratio  # noqa: E402

from tests.support.postgres import PostgresServer  # noqa: E402

#: ours_quiet is ours without live logs (stream_logs=False): what relaying container lines through the
#: triggerer's supervisor costs, in CPU and in delay.
SIDES = ("anchor", "ours", "ours_quiet")
DAG_IDS = {
    "ours": "bench_triggerer_ours",
    "ours_quiet": "bench_triggerer_ours_quiet",
    "anchor": "bench_triggerer_anchor",
}
POOL = "bench_gate"  # no slots: the scheduler creates the task instances and never runs one

DAG_FILE = """
from datetime import datetime

from airflow.providers.amazon.aws.operators.batch import BatchOperator
from airflow.sdk import DAG

from airflow_gpu.operators import GpuBatchOperator

N = {n}
POOL = {pool!r}
with DAG({ours!r}, schedule="@once", start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=N):
    GpuBatchOperator.partial(task_id="train", job_queue="q", job_definition="d", poll_interval={poll}, pool=POOL,
                             aws_conn_id="aws_default").expand(command=[["als", "--shard", str(i)] for i in range(N)])

with DAG({ours_quiet!r}, schedule="@once", start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=N):
    GpuBatchOperator.partial(task_id="train", job_queue="q", job_definition="d", poll_interval={poll}, pool=POOL,
                             aws_conn_id="aws_default", stream_logs=False).expand(command=[["als", "--shard", str(i)] for i in range(N)])

with DAG({anchor!r}, schedule="@once", start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=N):
    BatchOperator.partial(task_id="train", job_name="bench", job_queue="q", job_definition="d", deferrable=True,
                          poll_interval={poll}, pool=POOL, aws_conn_id="aws_default").expand(
        container_overrides=[{{"command": ["als", "--shard", str(i)]}} for i in range(N)])
"""


PROBE_DAG_ID = "bench_triggerer_probe"
PROBE_DAG = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_gpu.operators import GpuBatchOperator

with DAG({dag_id!r}, schedule="@once", start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks={k}):
    GpuBatchOperator.partial(task_id="train", job_queue={queue!r}, job_definition={definition!r}, poll_interval=30,
                             aws_conn_id="aws_default", vcpus=2, memory_mib=2048).expand(command=[["als", "--shard", str(i)] for i in range({k})])
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def airflow_env(home: Path, dags: Path, db_url: str, endpoint: str, n: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(FAKE_CREDENTIALS)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(n, 1024)),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(max(n, 16)),
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),  # trigger kwargs stored encrypted, as in a deployment
            "AIRFLOW__TRIGGERER__CAPACITY": str(max(2 * n, 1000)),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",  # the DAG file never changes: parsed once
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        }
    )
    return env


class Processes:
    """Airflow commands started in their own process groups, all stopped on exit."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.running: dict[str, subprocess.Popen] = {}
        self.airflow = str(Path(sys.executable).with_name("airflow"))

    def run(self, *argv: str) -> None:
        done = subprocess.run(
            [self.airflow, *argv], env=self.env, cwd=self.home, capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(argv)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def start(self, name: str, *argv: str) -> subprocess.Popen:
        with open(self.home / f"{name}.log", "ab") as out:
            process = subprocess.Popen(
                [self.airflow, *argv],
                env=self.env,
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.running[name] = process
        return process

    def stop(self, name: str, grace: float = 60.0) -> None:
        import signal

        process = self.running.pop(name)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left (a trigger runner)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name, grace=20.0)


class TreeSampler(threading.Thread):
    """CPU seconds and RSS of a process and its descendants, every 0.5 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.cpu: dict[int, float] = {}
        self.samples: list[tuple[float, float, int]] = []  # (time, CPU s so far, RSS bytes)
        self.stopped = threading.Event()

    def sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = 0
        for proc in procs:
            try:
                times = proc.cpu_times()
                self.cpu[proc.pid] = max(self.cpu.get(proc.pid, 0.0), times.user + times.system)
                rss += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        self.samples.append((time.time(), sum(self.cpu.values()), rss))

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.sample()

    def cpu_at(self, t: float) -> float:
        return min(self.samples, key=lambda s: abs(s[0] - t))[1]


def wait(what: str, check, timeout: float, interval: float = 1.0, alive=None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class SideResult:
    side: str
    n: int
    skipped: str | None = None
    startup_s: float = math.nan
    cpu_s: float = math.nan
    cpu_watch_pct: float = math.nan
    peak_rss_mb: float = math.nan
    calls_per_poll: float = math.nan
    max_calls_in_a_cycle: int = 0
    max_delay_s: float = math.nan
    p50_delay_s: float = math.nan
    events_ok: int = 0
    # The delay in three parts: job end -> a DescribeJobs first answers it ended (the server's record:
    # the poll); -> its trigger fires (each task's trigger log, the runner's "Trigger fired event" record
    # as the trigger yields: the trigger's own work); -> the task leaves DEFERRED (the supervisor
    # recording the event in the database).
    p50_to_seen_s: float = math.nan
    max_to_seen_s: float = math.nan
    p50_seen_to_fired_s: float = math.nan
    max_seen_to_fired_s: float = math.nan
    p50_to_fired_s: float = math.nan
    max_to_fired_s: float = math.nan
    p50_fired_to_recorded_s: float = math.nan
    max_fired_to_recorded_s: float = math.nan


def defer_all(side: str, job_ids: list[str], poll: float) -> None:
    """What the execution API writes when each task calls defer(): a trigger row, the instance DEFERRED on it."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select, update

    if side in ("ours", "ours_quiet"):
        from airflow_gpu.triggers import GpuBatchJobTrigger

        def make(job_id: str):  # as GpuBatchOperator._defer builds it
            return GpuBatchJobTrigger(
                job_id,
                aws_conn_id="aws_default",
                region_name=None,
                poll_interval=poll,
                max_queued=None,
                stream_logs=side == "ours",
                backend="aws_batch",
            )
    else:
        from airflow.providers.amazon.aws.triggers.batch import BatchJobTrigger

        def make(job_id: str):  # as BatchOperator.execute builds it (max_retries=4200 by default)
            return BatchJobTrigger(
                job_id=job_id,
                waiter_max_attempts=4200,
                aws_conn_id="aws_default",
                region_name=None,
                waiter_delay=int(poll),
                verify=None,
                botocore_config=None,
            )

    with create_session() as session:
        tis = session.execute(
            select(TaskInstance.id, TaskInstance.map_index)
            .where(TaskInstance.dag_id == DAG_IDS[side])
            .order_by(TaskInstance.map_index)
        ).all()
        assert len(tis) == len(job_ids), (len(tis), len(job_ids))
        for (ti_id, _), job_id in zip(tis, job_ids):
            row = Trigger.from_object(make(job_id))
            session.add(row)
            session.flush()
            session.execute(
                update(TaskInstance)
                .where(TaskInstance.id == ti_id)
                .values(
                    state=TaskInstanceState.DEFERRED,
                    trigger_id=row.id,
                    next_method="execute_complete",
                    next_kwargs=None,
                    trigger_timeout=None,
                )
            )


def left_deferred(side: str) -> dict[int, tuple[str, float, str]]:
    """map index -> (state, updated_at, next_kwargs) of the side's task instances no longer DEFERRED."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.map_index, TaskInstance.state, TaskInstance.updated_at, TaskInstance.next_kwargs).where(
                TaskInstance.dag_id == DAG_IDS[side], TaskInstance.state != "deferred"
            )
        ).all()
    return {
        index: (state, updated.timestamp(), json.dumps(kwargs, default=str)) for index, state, updated, kwargs in rows
    }


def fired_at(logs: Path, side: str) -> dict[int, float]:
    """map index -> when its trigger fired (the runner's "Trigger fired event" record, epoch seconds)."""
    from datetime import datetime

    fired: dict[int, float] = {}
    for path in (logs / f"dag_id={DAG_IDS[side]}").glob("run_id=*/task_id=*/map_index=*/attempt=*.log.trigger.*.log"):
        index = int(path.parent.name.split("=", 1)[1])
        with open(path, errors="replace") as lines:
            for line in lines:
                if '"Trigger fired event"' not in line:
                    continue
                with contextlib.suppress(ValueError, KeyError):
                    stamp = json.loads(line)["timestamp"].replace("Z", "+00:00")
                    fired[index] = datetime.fromisoformat(stamp).timestamp()
                break
    return fired


def _p50_max(part: str, seconds: list[float]) -> dict[str, float]:
    """SideResult's p50_<part>_s and max_<part>_s (nan when nothing was measured)."""
    if not seconds:
        return {f"p50_{part}_s": math.nan, f"max_{part}_s": math.nan}
    return {f"p50_{part}_s": statistics.median(seconds), f"max_{part}_s": max(seconds)}


def run_side(side: str, n: int, args: argparse.Namespace, server: ServerHandle, procs: Processes) -> SideResult:
    print(f"[{side} N={n}] creating {n} jobs in the server and deferring {n} task instances...", flush=True)
    job_ids = server.call("setup", n)
    defer_all(side, job_ids, args.poll)
    started = time.time()
    triggerer = procs.start(f"triggerer-{side}", "triggerer")
    sampler = TreeSampler(triggerer.pid)
    sampler.start()

    def alive() -> None:
        if triggerer.poll() is not None:
            raise RuntimeError(
                f"the triggerer exited with {triggerer.returncode}; see {procs.home}/triggerer-{side}.log"
            )

    try:
        try:
            wait(
                "every trigger to describe its job",
                lambda: server.call("described") >= n,
                args.start_timeout,
                0.5,
                alive,
            )
        except TimeoutError as exc:
            return SideResult(side, n, skipped=f"{exc} ({server.call('described')} of {n} jobs described)")
        up = time.time() - started
        clock = server.call("start", args.job_seconds, args.poll)
        end_at = clock["end_at"]
        t_clock = min(end_at.values()) - args.job_seconds
        print(
            f"[{side} N={n}] all {n} triggers up after {up:.1f} s; jobs end in {args.job_seconds:g}-{args.job_seconds + args.poll:g} s",
            flush=True,
        )
        try:
            done = wait(
                "every task instance to leave DEFERRED",
                lambda: (lambda d: d if len(d) >= n else None)(left_deferred(side)),
                args.job_seconds + args.poll + args.finish_timeout,
                0.5,
                alive,
            )
        except TimeoutError as exc:
            return SideResult(side, n, skipped=str(exc))
        sampler.sample()
        stats = server.call("stats")
    finally:
        sampler.stopped.set()
        procs.stop(f"triggerer-{side}")
    index_of = {job_id: i for i, job_id in enumerate(job_ids)}
    delays = [done[index_of[job]][1] - end for job, end in end_at.items()]
    fired = fired_at(procs.home / "logs", side)
    to_fired = [fired[index_of[job]] - end for job, end in end_at.items() if index_of[job] in fired]
    to_recorded = [done[i][1] - at for i, at in fired.items() if i in done]
    seen = stats.get("seen_ended", {})
    to_seen = [seen[job] - end for job, end in end_at.items() if job in seen]
    seen_to_fired = [fired[index_of[job]] - at for job, at in seen.items() if index_of.get(job) in fired]
    last_event = max(updated for _, updated, _ in done.values())
    calls = _calls_between(stats["describes"], t_clock, last_event)
    offset = time.time() - time.monotonic()
    watching = [at for at, _ in stats["describes"] if t_clock <= at + offset <= last_event]
    return SideResult(
        side=side,
        n=n,
        startup_s=up,
        cpu_s=sampler.samples[-1][1],
        cpu_watch_pct=100 * (sampler.cpu_at(last_event) - sampler.cpu_at(t_clock)) / max(last_event - t_clock, 1e-9),
        peak_rss_mb=max(rss for _, _, rss in sampler.samples) / 2**20,
        calls_per_poll=calls / ((last_event - t_clock) / args.poll),
        max_calls_in_a_cycle=max((len(c) for c in _cycles(watching, gap=args.poll / 2)), default=0),
        max_delay_s=max(delays),
        p50_delay_s=statistics.median(delays),
        **_p50_max("to_seen", to_seen),
        **_p50_max("seen_to_fired", seen_to_fired),
        **_p50_max("to_fired", to_fired),
        **_p50_max("fired_to_recorded", to_recorded),
        events_ok=sum(
            1
            for state, _, kwargs in done.values()
            if state == "scheduled" and ("SUCCEEDED" in kwargs or "success" in kwargs)
        ),
    )


def probe_executor(k: int, server: ServerHandle, procs: Processes, dags: Path) -> str:
    """Run k real GpuBatchOperator tasks through the scheduler and LocalExecutor (with an api-server
    for the task runners) until every one has submitted its job and DEFERRED: the CPU this costs
    per task says whether N tasks can reach DEFERRED that way on this machine."""
    import secrets

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    names = server.call("setup", 0)  # no jobs; the queue and definition; new jobs held RUNNING
    port = _free_port()
    procs.env.update(
        {
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        }
    )
    (dags / "bench_probe.py").write_text(
        PROBE_DAG.format(dag_id=PROBE_DAG_ID, k=k, queue="gpu-queue", definition="gpu-als")
    )
    api = procs.start("probe-api-server", "api-server")
    procs.start("probe-dag-processor", "dag-processor")
    time.sleep(20)  # the api-server up before the first task runner asks it
    scheduler = procs.start("probe-scheduler", "scheduler")
    samplers = [TreeSampler(p.pid) for p in (scheduler, api)]
    for sampler in samplers:
        sampler.start()
    t0 = time.time()

    def deferred() -> bool:
        with create_session() as session:
            count = session.scalar(
                select(func.count()).where(TaskInstance.dag_id == PROBE_DAG_ID, TaskInstance.state == "deferred")
            )
        return count == k

    try:
        wait(f"{k} probe tasks to defer", deferred, 900, 1.0)
        wall = time.time() - t0
        for sampler in samplers:
            sampler.sample()
    finally:
        for sampler in samplers:
            sampler.stopped.set()
        for name in ("probe-scheduler", "probe-dag-processor", "probe-api-server"):
            procs.stop(name)
        (dags / "bench_probe.py").unlink()
    cpu = sum(s.samples[-1][1] for s in samplers)
    del names
    return (
        f"probe: {k} GpuBatchOperator tasks through scheduler + LocalExecutor (parallelism 4) + api-server to DEFERRED: "
        f"{wall:.0f} s wall, {cpu:.0f} CPU s (scheduler and its task processes, api-server), {cpu / k:.1f} CPU s per task"
    )


def print_table(results: list[SideResult], args: argparse.Namespace) -> None:
    print()
    print(
        f"`airflow triggerer` on PostgreSQL; poll {args.poll:g} s; jobs RUNNING {args.job_seconds:g} s once all triggers are up, "
        f"ends spread over one poll; ours relays a log line per job every {args.log_every:g} s"
    )
    print()
    print(
        "| N | side | triggers up after s | triggerer CPU s | CPU % of a core while watching | peak RSS MB "
        "| DescribeJobs per poll (ours: most in one cycle) | job end -> task leaves DEFERRED p50 / max s "
        "| of which job end -> described ended p50 / max s | described -> trigger fired p50 / max s "
        "| fired -> recorded p50 / max s | events |"
    )
    print("|" + " --- |" * 12)
    for r in results:
        if r.skipped:
            print(f"| {r.n} | {r.side} | skipped: {r.skipped} | | | | | | | | | |")
            continue
        print(
            f"| {r.n} | {r.side} | {r.startup_s:.0f} | {r.cpu_s:.1f} | {r.cpu_watch_pct:.1f} | {r.peak_rss_mb:.0f} | "
            f"{r.calls_per_poll:.1f}{f' ({r.max_calls_in_a_cycle})' if r.side != 'anchor' else ''} | {r.p50_delay_s:.1f} / {r.max_delay_s:.1f} | "
            f"{r.p50_to_seen_s:.1f} / {r.max_to_seen_s:.1f} | {r.p50_seen_to_fired_s:.1f} / {r.max_seen_to_fired_s:.1f} | {r.p50_fired_to_recorded_s:.1f} / {r.max_fired_to_recorded_s:.1f} | {r.events_ok}/{r.n} |"
        )
    print()
    by_side = {r.side: r for r in results}
    if "anchor" in by_side and "ours" in by_side:
        anchor, ours = by_side["anchor"], by_side["ours"]
        print(
            f"triggerer N={ours.n}: calls_ratio={_ratio(anchor.calls_per_poll, ours.calls_per_poll)} "
            f"cpu_ratio={_ratio(anchor.cpu_s, ours.cpu_s)} rss_ratio={_ratio(anchor.peak_rss_mb, ours.peak_rss_mb)} "
            f"ours_max_calls_in_a_cycle={ours.max_calls_in_a_cycle} ours_max_delay_s={ours.max_delay_s:.2f} "
            f"anchor_max_delay_s={anchor.max_delay_s:.2f}"
        )
    if "ours" in by_side and "ours_quiet" in by_side:
        ours, quiet = by_side["ours"], by_side["ours_quiet"]
        print(
            f"live logs N={ours.n}: cpu_ratio_with_logs={_ratio(ours.cpu_s, quiet.cpu_s)} "
            f"max_delay_s_with_logs={ours.max_delay_s:.2f} max_delay_s_without={quiet.max_delay_s:.2f} "
            f"max_described_to_fired_s_with_logs={ours.max_seen_to_fired_s:.2f} without={quiet.max_seen_to_fired_s:.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="N deferred tasks per side (default 2000)")
    parser.add_argument("--poll", type=float, default=30.0, help="poll interval of both sides, seconds (default 30)")
    parser.add_argument(
        "--job-seconds", type=float, default=60.0, help="how long each job runs once all triggers are up"
    )
    parser.add_argument(
        "--log-every", type=float, default=10.0, help="each job writes a log line this often, seconds (0: none)"
    )
    parser.add_argument(
        "--start-timeout", type=float, default=900.0, help="give up on a side whose triggers are not all up by then"
    )
    parser.add_argument(
        "--finish-timeout", type=float, default=180.0, help="seconds past the last job end to wait for the events"
    )
    parser.add_argument(
        "--sides", default=",".join(SIDES), help="comma-separated sides to run (default anchor,ours,ours_quiet)"
    )
    parser.add_argument(
        "--probe",
        type=int,
        default=0,
        help="first run this many real tasks to DEFERRED through LocalExecutor and report their CPU cost",
    )
    parser.add_argument("--workdir", help="keep Airflow's home and logs here")
    parser.add_argument(
        "--database-url",
        help="an empty or migrated PostgreSQL database for Airflow (default: a PostgreSQL server of the run's own)",
    )
    args = parser.parse_args(argv)
    n = args.jobs
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="triggerer-airflow-"))
    home, dags = workdir / "airflow-home", workdir / "dags"
    home.mkdir(parents=True, exist_ok=True)
    dags.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; files in {workdir}",
        flush=True,
    )
    if n > 0:
        (dags / "bench_triggerer.py").write_text(
            DAG_FILE.format(
                n=n,
                pool=POOL,
                ours=DAG_IDS["ours"],
                ours_quiet=DAG_IDS["ours_quiet"],
                anchor=DAG_IDS["anchor"],
                poll=int(args.poll),
            )
        )
    server = ServerHandle(args.log_every)
    results: list[SideResult] = []
    with contextlib.ExitStack() as stack:
        if args.database_url:  # the test suite's: a copy of a database it migrated once for every test
            database_url = args.database_url
            print("PostgreSQL: the given database; migrating (nothing to do when it is at head)...", flush=True)
        else:
            postgres = stack.enter_context(PostgresServer())
            database_url = postgres.url
            print(f"PostgreSQL {postgres.bindir.parent.name} on 127.0.0.1:{postgres.port}; migrating...", flush=True)
        env = airflow_env(home, dags, database_url, server.endpoint, n)
        os.environ.update(env)  # this process reads and writes the same database through Airflow's ORM
        procs = Processes(home, env)
        try:
            procs.run("db", "migrate")
            procs.run("pools", "set", POOL, "0", "no slots: the benchmark's task instances are created, never run")
            if args.probe:
                print(probe_executor(args.probe, server, procs, dags), flush=True)
            if n == 0:
                return 0
            t0 = time.time()
            procs.start("dag-processor", "dag-processor")
            scheduler = procs.start("scheduler", "scheduler")

            def scheduled() -> bool:
                from airflow.models.taskinstance import TaskInstance
                from airflow.utils.session import create_session
                from sqlalchemy import func, select

                with create_session() as session:
                    counts = dict(
                        session.execute(
                            select(TaskInstance.dag_id, func.count())
                            .where(TaskInstance.state == "scheduled")
                            .group_by(TaskInstance.dag_id)
                        ).all()
                    )
                return all(counts.get(dag_id, 0) == n for dag_id in DAG_IDS.values())

            def scheduler_alive() -> None:
                if scheduler.poll() is not None:
                    raise RuntimeError(f"the scheduler exited; see {home}/scheduler.log")

            wait(f"the scheduler to create {n} scheduled task instances per side", scheduled, 900, 2.0, scheduler_alive)
            print(
                f"[setup] {len(DAG_IDS) * n} task instances SCHEDULED in pool {POOL!r} after {time.time() - t0:.0f} s; stopping the scheduler",
                flush=True,
            )
            procs.stop("scheduler")
            procs.stop("dag-processor")
            for side in [s for s in SIDES if s in args.sides.split(",")]:
                result = run_side(side, n, args, server, procs)
                print(f"[{side} N={n}] {result}", flush=True)
                results.append(result)
        finally:
            procs.stop_all()
            server.stop()
    print_table(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
