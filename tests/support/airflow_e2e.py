"""Real Airflow processes for the e2e tier: `airflow standalone` (or single components) in a temporary
AIRFLOW_HOME, a small REST client, and a tree stop that leaves nothing running."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
from cryptography.fernet import Fernet

from airflow_gpu.demo.command import migration_stamp
from tests.support.moto_aws import CREDENTIALS, MotoAws
from tests.support.paths import SHARED_TMP_ENV

_migrated: Path | None = None


def migrate_airflow(home: Path, **settings: str) -> None:
    """`airflow db migrate` for an Airflow home (SQLite in it, unless ``settings`` name another database)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", **settings)
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def seed_airflow_home(home: Path) -> Path:
    """Give ``home`` an Airflow database already migrated to this Airflow's head (SQLite).

    `airflow db migrate` takes about 40 s of CPU on two cores; it runs once per test run, into a
    template home in the folder all xdist workers share (the first worker that needs it migrates
    while the others wait on a lock; pytest's own clean-up of old runs removes it), and each e2e
    test starts from a copy. The demo's stamp goes with it, so the drivers' ``migrate_if_needed``
    sees a migrated home; `airflow standalone` finds it at head.
    """
    global _migrated
    if _migrated is None:
        shared = os.environ.get(SHARED_TMP_ENV)
        if shared is None:  # outside the plugin: a template of this process's own
            template = Path(tempfile.mkdtemp(prefix="airflow-gpu-migrated-home-"))
            atexit.register(shutil.rmtree, template, ignore_errors=True)
        else:
            template = Path(shared) / "airflow-migrated-home"
            template.mkdir(exist_ok=True)
        with open(template.with_name(template.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not (template / "migrated").exists():
                migrate_airflow(template)
                (template / "migrated").touch()  # last, once the database is whole: what the other workers look for
        _migrated = template / "airflow.db"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(_migrated, home / "airflow.db")
    migration_stamp(home).touch()
    return home


def deferral_taken_in(log: str, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> bool:
    """Whether a scheduler's log says it took in the exit of the process that deferred this try: its
    "TaskInstance Finished" line for the task instance, in state deferred, for this try number."""
    line = re.escape(
        f"TaskInstance Finished: dag_id={dag_id}, task_id={task_id}, run_id={run_id}, map_index={map_index}, "
    )
    return re.search(line + rf"[^\n]*, state=deferred, [^\n]*, try_number={try_number},", log) is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5, alive: Callable[[], None] | None = None
) -> Any:
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

    def __init__(
        self,
        home: Path,
        port: int,
        process: subprocess.Popen,
        log: Path,
        env: dict[str, str],
        scheduler_log: Path | None = None,
    ) -> None:
        self.home = home
        self.base = f"http://127.0.0.1:{port}/api/v2"
        self.process = process
        self.log = log
        self.env = env
        self.scheduler_log = scheduler_log or log  # standalone writes every component's lines to one log
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
            self.extra.append(
                subprocess.Popen(
                    [str(Path(sys.executable).with_name("airflow")), "triggerer"],
                    env=self.env,
                    cwd=self.home,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )

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
            request = urllib.request.Request(
                self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
            )
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

    def deferrals_recorded(self, dag_id: str, run_id: str, skip: tuple[str, ...] = ()) -> bool:
        """Whether the scheduler has taken in the exit of every process that deferred a task of this run.

        Airflow 3.3's LocalExecutor reports a deferring process's exit as a "success" event. When the
        scheduler reads that event only after the trigger fired and the resumed run of the same try is
        queued or running, it takes the task for one killed externally and fails it (its exception for
        a resume covers a SCHEDULED task only). A GPU job does not end seconds after its deferral, but
        a test that ends jobs at once on a loaded machine does: it waits for this first. Task ids in
        ``skip`` deferred without a worker process (``start_from_trigger``): there is nothing to wait for.
        """
        reply = self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        deferred = [ti for ti in reply["task_instances"] if ti["state"] == "deferred" and ti["task_id"] not in skip]
        log = self.scheduler_log.read_text(errors="replace")
        return all(
            deferral_taken_in(log, dag_id, run_id, ti["task_id"], ti["map_index"], ti["try_number"]) for ti in deferred
        )

    def wait_deferrals_recorded(self, dag_id: str, run_id: str, skip: tuple[str, ...] = ()) -> None:
        """Wait until ``deferrals_recorded``: before a test ends the jobs of deferred tasks."""
        wait_for(
            f"the scheduler to take in every deferral of {dag_id}",
            lambda: self.deferrals_recorded(dag_id, run_id, skip),
            timeout=420,  # a hang guard: beside a CPU burner a resume took over 240 s
            interval=1,
        )

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def trigger(self, dag_id: str, tries: int = 5) -> str:
        """A new run under a run id of our own, so that a try after a 500 can tell by 409 (the id
        is taken) that the one before it was committed after all."""
        run_id = f"e2e__{secrets.token_hex(6)}"
        for attempt in range(1, tries + 1):
            try:
                return self.call("POST", f"/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None})[
                    "dag_run_id"
                ]
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
            if sig == signal.SIGTERM:  # a stopped process (a test's SIGSTOP) acts on SIGTERM once continued
                os.killpg(process.pid, signal.SIGCONT)
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
            # One key for every process of this home: the scheduler encrypts a start trigger's kwargs, a
            # triggerer decrypts them. (Processes started at once would each write an airflow.cfg of their
            # own, with a fresh random key, when the home has none.)
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # The DAG files never change during a test: parsed once, not again every 30 s (Airflow 3 reads
            # this under [dag_processor]; the [scheduler] name it had before is no longer read).
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        }
    )
    env.update(settings)
    return env


@contextlib.contextmanager
def running_airflow(
    tmp_path: Path, moto_aws: MotoAws, dag_files: dict[str, str], dag_ids: tuple[str, ...], parallelism: int = 2
) -> Iterator[Airflow]:
    """`airflow standalone` on SQLite in tmp_path, with these DAG files, once it is healthy and has parsed
    ``dag_ids``; every process it started is stopped on the way out, whatever happened."""
    home = seed_airflow_home(tmp_path / "airflow-home")
    dags = tmp_path / "dags"
    dags.mkdir()
    for name, text in dag_files.items():
        (dags / name).write_text(text)
    port = free_port()
    env = airflow_env(home, dags, moto_aws, port, AIRFLOW__CORE__PARALLELISM=str(parallelism))
    log = tmp_path / "standalone.log"
    airflow_bin = Path(sys.executable).with_name("airflow")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(airflow_bin), "standalone"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    instance = Airflow(home, port, process, log, env)
    try:

        def healthy() -> bool:
            health = instance.call("GET", "/monitor/health")
            return all(
                (health.get(part) or {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
            )

        wait_for("Airflow to be healthy", healthy, timeout=360, interval=1, alive=instance.check_alive)
        for dag_id in dag_ids:
            wait_for(
                f"{dag_id} to be parsed",
                lambda d=dag_id: not instance.call("GET", f"/dags/{d}")["is_paused"],
                timeout=120,
                interval=1,
                alive=instance.check_alive,
            )
        yield instance
    except BaseException:
        print(f"--- airflow standalone log (tail) ---\n{instance.log_tail()}", file=sys.stderr)
        raise
    finally:
        moto_aws.batch.release_hold()
        stop_process_tree(process, home)
        for extra in instance.extra:
            stop_process_tree(extra, home)


class Cluster:
    """Airflow's components as separate processes, each in its own process group."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.processes: dict[str, subprocess.Popen] = {}
        self.airflow_bin = str(Path(sys.executable).with_name("airflow"))

    def start(self, name: str, *argv: str, **extra_env: str) -> subprocess.Popen:
        with open(self.home / f"{name}.log", "wb") as out:
            process = subprocess.Popen(
                [self.airflow_bin, *argv],
                env={**self.env, **extra_env},
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def check_alive(self, *names: str) -> None:
        for name in names or self.processes:
            process = self.processes[name]
            if process.poll() is not None:
                raise AssertionError(f"airflow {name} exited with {process.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        return "\n".join((self.home / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        for process in self.processes.values():
            stop_process_tree(process, self.home)
