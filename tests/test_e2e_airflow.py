"""End to end through a real Airflow: scheduler, dag-processor, api-server and triggerer (`airflow standalone`).

The moto server belongs to this test process, so the test drives the Batch jobs while
Airflow watches them through the ``aws_default`` connection's endpoint_url:

* 20 mapped GpuBatchOperator tasks with executor parallelism 2: every job is submitted
  and RUNNING at once, every task instance is DEFERRED, and the triggerer's shared watcher
  describes them with one DescribeJobs call per poll cycle;
* after the jobs are released, every task succeeds and its XCom holds its job id;
* the triggerer is stopped and a new one takes every trigger over: no job is terminated;
* in a second DAG run beside it, a FAILED job fails its task with the reason in the log,
  and clearing, marking failed and marking success a deferred task each terminate its Batch
  job (the trigger's on_kill, after it has checked the task left DEFERRED).

Airflow runs in its own process group in a temporary AIRFLOW_HOME on SQLite; every process
is stopped in the fixture's teardown, whatever happens in the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from moto_aws import CREDENTIALS, MotoAws, iter_describe_cycles

pytestmark = [pytest.mark.timeout(600), pytest.mark.airflow_behaviour]

FANOUT = "e2e_gpu_fanout"
FAILURES = "e2e_gpu_failures"
MAPPED = 20
POLL = 1.0
CASES = ("ok", "fails", "cleared", "marked_failed", "marked_success")
REASON = "CannotInspectContainerError: Could not transition to inspecting; timed out after waiting 30s"

DAG_FILE = '''
from datetime import datetime

from airflow.sdk import DAG

from airflow_gpu.operators import GpuBatchOperator

COMMON = dict(task_id="train", job_queue={queue!r}, job_definition={definition!r}, poll_interval={poll},
              aws_conn_id="aws_default", retries=0, vcpus=2, memory_mib=2048)

# Deferred tasks count towards max_active_tasks (16 by default): a fan-out DAG raises it.
with DAG({fanout!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_tasks=64):
    GpuBatchOperator.partial(**COMMON).expand(command=[["als", "--shard", str(i)] for i in range({mapped})])

with DAG({failures!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    GpuBatchOperator.partial(**COMMON).expand(command=[["als", "--case", case] for case in {cases!r}])
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5, alive: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        try:
            last = check()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}")


class Airflow:
    """A running `airflow standalone` and a small REST client for it."""

    def __init__(self, home: Path, port: int, process: subprocess.Popen, log: Path, env: dict[str, str]) -> None:
        self.home = home
        self.base = f"http://127.0.0.1:{port}/api/v2"
        self.process = process
        self.log = log
        self.env = env
        self.extra: list[subprocess.Popen] = []  # started beside standalone; stopped with it

    def restart_triggerer(self) -> None:
        """SIGTERM standalone's triggerer, wait for it to stop, and start a new one: a restart that
        is also a move, since the new triggerer is another triggerer job taking the triggers over."""
        [old] = [p for p in psutil.Process(self.process.pid).children() if "triggerer" in " ".join(p.cmdline())]
        runners = old.children(recursive=True)  # the trigger runner, whose shutdown cancels and cleans up every trigger
        old.terminate()
        _, alive = psutil.wait_procs(runners, timeout=90)
        assert not alive, f"the trigger runner did not stop on SIGTERM: {alive}"
        try:
            old.wait(timeout=20)
        except psutil.TimeoutExpired:  # seen on 3.3.2: its trigger loop and log server ended, the process lingers
            old.kill()
        with open(self.log.with_name("triggerer-2.log"), "wb") as out:
            self.extra.append(subprocess.Popen(
                [str(Path(sys.executable).with_name("airflow")), "triggerer"], env=self.env, cwd=self.home,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            ))

    def set_state(self, dag_id: str, run_id: str, map_index: int, state: str) -> None:
        self.call("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/train/{map_index}", {"new_state": state})

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"airflow standalone exited with {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def call(self, method: str, path: str, body: Any = None, *, tries: int = 5) -> Any:
        """One REST call. On 2 loaded cores the api-server answers 500 when SQLite stays locked past
        its busy timeout (task heartbeats were seen taking 5 s): that try changed nothing, so a
        GET, PUT or PATCH is sent again; a POST is the caller's to retry (see trigger)."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(1, tries + 1):
            request = urllib.request.Request(self.base + path, data=data, method=method, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or method == "POST" or attempt == tries:
                    raise
            time.sleep(2)

    def task_instances(self, dag_id: str, run_id: str) -> dict[int, dict]:
        reply = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return {ti["map_index"]: ti for ti in reply["task_instances"]}

    def states(self, dag_id: str, run_id: str) -> dict[int, str | None]:
        return {index: ti["state"] for index, ti in self.task_instances(dag_id, run_id).items()}

    def xcom(self, dag_id: str, run_id: str, map_index: int, key: str = "return_value") -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/train/xcomEntries/{key}?map_index={map_index}&deserialize=true"
        return self.call("GET", path)["value"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def trigger(self, dag_id: str, tries: int = 5) -> str:
        """A new run under a run id of our own, so that a try after a 500 can tell by 409 (the id
        is taken) that the one before it was committed after all."""
        run_id = f"e2e__{secrets.token_hex(6)}"
        for attempt in range(1, tries + 1):
            try:
                return self.call("POST", f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None})["dag_run_id"]
            except urllib.error.HTTPError as exc:
                if exc.code == 409 and attempt > 1:
                    return run_id
                if exc.code < 500 or attempt == tries:
                    raise
            time.sleep(2)
        raise AssertionError("unreachable")


def stop_process_tree(process: subprocess.Popen, home: Path) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it, and of anything else
    this Airflow home started outside the group (task supervisors may start their own)."""
    def ours() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.pid != os.getpid() and proc.environ().get("AIRFLOW_HOME") == str(home):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        for proc in ours():
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        psutil.wait_procs(ours(), timeout=grace)
        if not ours():
            break


@pytest.fixture
def airflow(tmp_path, moto_aws: MotoAws, gpu_batch) -> Airflow:
    dag_file = DAG_FILE.format(queue=gpu_batch["job_queue"], definition=gpu_batch["job_definition"], poll=POLL,
                               fanout=FANOUT, failures=FAILURES, mapped=MAPPED, cases=CASES)
    with running_airflow(tmp_path, moto_aws, {"e2e_gpu.py": dag_file}, (FANOUT, FAILURES)) as instance:
        yield instance


def airflow_env(home: Path, dags: Path, moto_aws: MotoAws, port: int, **settings: str) -> dict[str, str]:
    """The environment of Airflow processes in ``home``: this process's, less any AIRFLOW* setting, with
    moto's credentials, this venv first on PATH, the api-server (and execution API) on 127.0.0.1:port,
    free log server ports, ``aws_default`` pointing at moto, and ``settings`` on top."""
    connection = {
        "conn_type": "aws",
        "login": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "password": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "extra": {"endpoint_url": moto_aws.endpoint_url, "region_name": moto_aws.region},
    }
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(CREDENTIALS)
    # Airflow starts its components as `airflow ...` from PATH: this venv's, even when it is not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        }
    )
    env.update(settings)
    return env


@contextlib.contextmanager
def running_airflow(tmp_path: Path, moto_aws: MotoAws, dag_files: dict[str, str], dag_ids: tuple[str, ...],
                    parallelism: int = 2) -> Iterator[Airflow]:
    """`airflow standalone` on SQLite in tmp_path, with these DAG files, once it is healthy and has parsed
    ``dag_ids``; every process it started is stopped on the way out, whatever happened."""
    home = tmp_path / "airflow-home"
    dags = tmp_path / "dags"
    home.mkdir()
    dags.mkdir()
    for name, text in dag_files.items():
        (dags / name).write_text(text)
    port = free_port()
    env = airflow_env(home, dags, moto_aws, port, AIRFLOW__CORE__PARALLELISM=str(parallelism))
    log = tmp_path / "standalone.log"
    airflow_bin = Path(sys.executable).with_name("airflow")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(airflow_bin), "standalone"], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    instance = Airflow(home, port, process, log, env)
    try:
        def healthy() -> bool:
            health = instance.call("GET", "/monitor/health")
            return all((health.get(part) or {}).get("status") == "healthy" for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

        wait_for("Airflow to be healthy", healthy, timeout=180, interval=1, alive=instance.check_alive)
        for dag_id in dag_ids:
            wait_for(f"{dag_id} to be parsed", lambda d=dag_id: not instance.call("GET", f"/dags/{d}")["is_paused"],
                     timeout=120, interval=1, alive=instance.check_alive)
        yield instance
    except BaseException:
        print(f"--- airflow standalone log (tail) ---\n{instance.log_tail()}", file=sys.stderr)
        raise
    finally:
        moto_aws.batch.release_hold()
        stop_process_tree(process, home)
        for extra in instance.extra:
            stop_process_tree(extra, home)


def test_deferred_gpu_tasks_through_a_real_scheduler_and_triggerer(airflow: Airflow, moto_aws: MotoAws):
    batch = moto_aws.batch
    batch.hold("RUNNING")
    fanout_run = airflow.trigger(FANOUT)
    failures_run = airflow.trigger(FAILURES)
    runs = {FANOUT: (fanout_run, MAPPED), FAILURES: (failures_run, len(CASES))}
    total = MAPPED + len(CASES)

    # Every task submits its job and defers; with two slots, only deferral lets all 25 jobs run at once.
    def all_deferred() -> bool:
        for dag_id, (run_id, count) in runs.items():
            states = airflow.states(dag_id, run_id)
            if len(states) != count or set(states.values()) != {"deferred"}:
                return False
        return True

    wait_for("every task instance to be deferred", all_deferred, timeout=240, interval=1, alive=airflow.check_alive)
    running = [job_id for job_id, job in batch.jobs().items() if job.status == "RUNNING"]
    assert len(running) == total and moto_aws.log.calls["submitjob"] == total
    job_of = {
        (dag_id, index): airflow.xcom(dag_id, run_id, index, key="gpu_batch_job_id")
        for dag_id, (run_id, count) in runs.items()
        for index in range(count)
    }
    assert sorted(job_of.values()) == sorted(running)

    # The triggerer's shared watcher: one DescribeJobs call per poll cycle, covering every job.
    # (A task is DEFERRED as soon as it hands over its trigger; the triggerer picks it up a moment later.)
    wait_for("the triggerer to watch every job",
             lambda: any(sorted(ids) == sorted(running) for _, ids in list(moto_aws.log.describe_batches)),
             timeout=60, alive=airflow.check_alive)
    window_start = time.monotonic()
    time.sleep(4 * POLL)
    cycles = list(iter_describe_cycles(moto_aws.log, gap=POLL / 2))
    assert cycles, "the triggerer never described the jobs"
    assert all(len(cycle) == 1 for cycle in cycles), [len(c) for c in cycles]
    steady = [ids for at, ids in moto_aws.log.describe_batches if at >= window_start]
    assert 2 <= len(steady) <= 4 / POLL + 2, len(steady)
    assert all(sorted(ids) == sorted(running) for ids in steady), [len(ids) for ids in steady]

    # A triggerer restart, and the triggers' move to the new triggerer, terminate nothing.
    airflow.restart_triggerer()
    restarted_at = time.monotonic()  # the old triggerer has stopped: every DescribeJobs from now on is the new one's
    wait_for("the new triggerer to watch every job",
             lambda: any(at > restarted_at and sorted(ids) == sorted(running) for at, ids in list(moto_aws.log.describe_batches)),
             timeout=120, interval=1, alive=airflow.check_alive)
    assert moto_aws.log.terminated == []
    assert all(batch.status(job_id) == "RUNNING" for job_id in running)
    assert set(airflow.states(FAILURES, failures_run).values()) == {"deferred"}

    # Marking a deferred task failed or success terminates its Batch job.
    for index, state in ((3, "failed"), (4, "success")):
        airflow.set_state(FAILURES, failures_run, index, state)
        marked = job_of[(FAILURES, index)]
        wait_for(f"the job of the task marked {state} to be terminated", lambda: marked in dict(moto_aws.log.terminated), timeout=120)
        reason = dict(moto_aws.log.terminated)[marked]
        assert f"{FAILURES}.train" in reason and f"map index {index}" in reason and "marked" in reason
        assert batch.status(marked) == "FAILED"

    # Clearing a deferred task terminates its Batch job.
    cleared = job_of[(FAILURES, 2)]
    airflow.call("POST", f"/dags/{FAILURES}/clearTaskInstances",
                 {"dry_run": False, "dag_run_id": failures_run, "task_ids": [["train", 2]], "only_failed": False})
    wait_for("the cleared task's job to be terminated", lambda: cleared in dict(moto_aws.log.terminated), timeout=120)
    reason = dict(moto_aws.log.terminated)[cleared]
    assert f"{FAILURES}.train" in reason and "map index 2" in reason and "cleared" in reason
    assert batch.status(cleared) == "FAILED"
    # The cleared task runs again and submits a new job (the terminated one is never reattached).
    retried = wait_for("the cleared task's new job", lambda: [j for j in batch.wait_for_jobs(total + 1, timeout=1) if j not in job_of.values()],
                       timeout=120, interval=1, alive=airflow.check_alive)
    wait_for("the new job to be watched", lambda: airflow.states(FAILURES, failures_run)[2] == "deferred", timeout=120, interval=1)

    # Release: one job fails with a reason, every other one succeeds. The re-run's job goes last:
    # a job that ends within a second of its deferral can race Airflow's own bookkeeping of that
    # deferral (the executor's event for it arrives after the trigger fired), which no GPU job does.
    failing = job_of[(FAILURES, 1)]
    batch.set_status(failing, "FAILED", reason=REASON, exit_code=137)
    for job_id in running:
        if job_id not in (failing, cleared) and batch.status(job_id) == "RUNNING":  # the marked ones are FAILED
            batch.set_status(job_id, "SUCCEEDED")
    batch.release_hold()

    def finished(dag_id: str, run_id: str) -> str | None:
        state = airflow.run_state(dag_id, run_id)
        return state if state in ("success", "failed") else None

    assert wait_for("the fan-out run to finish", lambda: finished(FANOUT, fanout_run), timeout=240, interval=1, alive=airflow.check_alive) == "success"
    batch.set_status(retried[0], "SUCCEEDED")
    assert wait_for("the failures run to finish", lambda: finished(FAILURES, failures_run), timeout=120, interval=1, alive=airflow.check_alive) == "failed"

    # Every fan-out task succeeded and returned its job's facts as XCom.
    assert set(airflow.states(FANOUT, fanout_run).values()) == {"success"}
    for index in range(MAPPED):
        result = airflow.xcom(FANOUT, fanout_run, index)
        assert result["job_id"] == job_of[(FANOUT, index)] and result["status"] == "SUCCEEDED"

    # The failed job failed its task, and the task's log says why.
    instances = airflow.task_instances(FAILURES, failures_run)
    assert [instances[i]["state"] for i in range(len(CASES))] == ["success", "failed", "success", "failed", "success"]
    assert instances[2]["try_number"] == 2  # the cleared task ran again
    assert airflow.xcom(FAILURES, failures_run, 2)["job_id"] == retried[0]
    logs = list(airflow.home.glob(f"logs/dag_id={FAILURES}/**/task_id=train/map_index=1/attempt=*.log"))
    assert logs, "no log for the failed task"
    text = "\n".join(path.read_text(errors="replace") for path in logs)
    assert REASON in text and failing in text and "exit code 137" in text
