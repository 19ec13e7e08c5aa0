"""LocalBackend: runs a job's command as a detached process on this machine.

The embedded default for demos, tests and development (``backend="local"``). There is
no queue and no scheduling: a job starts the moment it is submitted, whatever else is
running, and sees every CPU and GPU of the host (``gpus``, ``vcpus`` and ``memory_mib``
are not enforced; ``retry_attempts`` is not used: nothing reclaims a local host).
``timeout`` is enforced. Production runs on AWS Batch.

The command follows AWS Batch's rule: it is the argv handed to the image's entrypoint
(``["als", "--input", ...]``). There is no image here, so the backend prepends the program
that plays the entrypoint's part: the ``entrypoint`` of a local job definition file when
``job_definition`` names one (``my-job.json``: ``{"entrypoint": ["python3", "-m", "my_job"]}``),
else ``AIRFLOW_GPU_LOCAL_ENTRYPOINT`` (a program, or a JSON argv list), else
``airflow-gpu-worker``, the entrypoint of the image this project builds. A Batch job
definition name or ARN means nothing here and is ignored, so one task runs unchanged on
both backends.

Each job is a folder under the state directory (``AIRFLOW_GPU_LOCAL_JOBS_DIR``, else
``$AIRFLOW_HOME/airflow-gpu/local-jobs``)::

    <job_id>/job.json     what was asked: command, name, idempotency key, tags, submit time
    <job_id>/run.json     written by the supervisor once the command started: pids, boot id
    <job_id>/output.log   the command's stdout and stderr
    <job_id>/exit.json    written by the supervisor when the command ended: exit code, end time
    <job_id>/cancel.json  written by terminate: the reason; reattach skips the job

Files are the whole protocol, so the process that submits (an Airflow worker) and the one
that watches (the triggerer) may differ, and either may restart. The job's command runs
under a small supervisor (``runner.py``) in a session of its own, so it outlives the
task that submitted it; ``terminate`` signals the command's process group.

A supervisor that vanished without writing ``exit.json`` (host reboot, ``kill -9``) is
noticed by ``describe`` -- its pid is gone, belongs to another process, or was recorded
in an earlier boot -- and the job is reported FAILED, so no watcher waits for ever. The
state directory must be on the host that runs the jobs: pids mean nothing elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from airflow_gpu.contract import SUBMITTED_AT_ENV, submitted_at_value
from airflow_gpu.jobs.backend import (
    FAILED,
    SUCCEEDED,
    BackendTarget,
    JobBackend,
    JobState,
    LogChunk,
    register_backend,
)
from airflow_gpu.jobs.cost import LOCAL, JobUsage
from airflow_gpu.jobs.local import runner as records
from airflow_gpu.jobs.spec import TAG_CANCELLED, JobSpec, JobSpecError

STATE_DIR_ENV = "AIRFLOW_GPU_LOCAL_JOBS_DIR"
ENTRYPOINT_ENV = "AIRFLOW_GPU_LOCAL_ENTRYPOINT"
#: The worker image's ENTRYPOINT (container/Dockerfile), a console script of this installation.
DEFAULT_ENTRYPOINT = ("airflow-gpu-worker",)
RUNNER = Path(records.__file__).resolve()
#: Seconds a job may stay without run.json before it counts as never started (a submitter
#: that died between writing job.json and starting the supervisor).
START_GRACE = 60.0
#: Seconds ``terminate`` waits for a job still starting to record its process group.
START_WAIT = 10.0
#: Seconds ``terminate`` waits after SIGTERM before it sends SIGKILL to the process group.
TERMINATE_GRACE = 10.0
#: Finished jobs older than this are removed at the next submit.
KEEP_FINISHED_S = 7 * 24 * 3600
#: Most bytes one cursor read returns, so a chatty job cannot blow up a reader's memory.
MAX_READ = 1 << 20
KEY_PREFIX_LEN = 12
_last_prune = -1e9


def default_state_dir() -> Path:
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("AIRFLOW_HOME") or os.path.join("~", "airflow")
    return Path(home).expanduser() / "airflow-gpu" / "local-jobs"


def _argv(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise JobSpecError(
            f"{where} must be a non-empty list of strings (the program and its first arguments), "
            f'e.g. ["python3", "-m", "my_job"]; got {value!r}.'
        )
    return tuple(value)


def default_entrypoint() -> tuple[str, ...]:
    """``AIRFLOW_GPU_LOCAL_ENTRYPOINT`` (one program, or a JSON list), else ``airflow-gpu-worker``."""
    raw = (os.environ.get(ENTRYPOINT_ENV) or "").strip()
    if not raw:
        return DEFAULT_ENTRYPOINT
    if not raw.startswith("["):
        return (raw,)  # one program; never split, as no shell ever parses a command here
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return _argv(value, ENTRYPOINT_ENV)


def definition_entrypoint(definition: str | None) -> tuple[str, ...] | None:
    """The entrypoint of a local job definition file (``*.json``); None for anything else."""
    if not definition or not definition.endswith(".json"):
        return None
    path = Path(definition).expanduser()
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise JobSpecError(
            f"job_definition {definition!r} names a local job definition file, and there is none at {path}. "
            f'Create it ({{"entrypoint": ["python3", "-m", "my_job"]}}) or pass a Batch job definition name.'
        ) from None
    except (OSError, ValueError) as exc:
        raise JobSpecError(f"job_definition {definition!r}: cannot read it as JSON ({exc}).") from None
    if not isinstance(document, dict) or "entrypoint" not in document:
        raise JobSpecError(
            f'local job definition {path} has no "entrypoint": add one, e.g. {{"entrypoint": ["python3", "my_job.py"]}}.'
        )
    return _argv(document["entrypoint"], f'"entrypoint" in {path}')


@dataclass(frozen=True)
class _Record:
    """One job folder, read at one moment."""

    job: dict[str, Any]
    run: dict[str, Any] | None
    exit: dict[str, Any] | None
    cancel: dict[str, Any] | None


@register_backend
class LocalBackend(JobBackend):
    """Jobs as detached local processes; see the module docstring for what that implies."""

    name = "local"
    describe_batch_size = 1000  # reading small files: no API limit to respect
    needs_queue = False  # no queue, and a job definition only when it is a local file

    def __init__(self, state_dir: Path | str | None = None, entrypoint: Sequence[str] | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.entrypoint = _argv(list(entrypoint), "entrypoint") if entrypoint is not None else None

    @classmethod
    async def open(cls, target: BackendTarget) -> LocalBackend:
        return cls()

    @property
    def location(self) -> str:
        return f"local processes on {socket.gethostname()} (records in {self.state_dir})"

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise JobSpecError(f"{job_id!r} is not a local job id")
        return self.state_dir / job_id

    # -- submit and reattach ----------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> JobState:
        if not spec.command:
            raise JobSpecError(
                "The local backend runs the job's command on this machine and has no image to take a default "
                "from: pass command=[...], the arguments of the entrypoint (e.g. ['als', '--input', ...])."
            )
        entrypoint = definition_entrypoint(spec.definition) or self.entrypoint or default_entrypoint()
        return await asyncio.to_thread(self._submit, spec, entrypoint)

    def _submit(self, spec: JobSpec, entrypoint: tuple[str, ...]) -> JobState:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._prune()
        submitted_at = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(submitted_at))
        job_id = f"{spec.idempotency_key[:KEY_PREFIX_LEN]}-{stamp}-{secrets.token_hex(3)}"
        folder = self.state_dir / job_id
        folder.mkdir(mode=0o700)
        records.write_json(
            str(folder / records.JOB_FILE),
            {
                "job_id": job_id,
                "name": spec.name,
                "idempotency_key": spec.idempotency_key,
                "tags": dict(spec.tags),
                "entrypoint": list(entrypoint),
                # What runs: the entrypoint, then the task's command, as a container would.
                "command": [*entrypoint, *(spec.command or ())],
                # Where it runs: the submitter's folder, so `python train.py` means what a shell means.
                "workdir": os.getcwd(),
                "timeout_s": spec.timeout_s,
                "submitted_at": submitted_at,
                "boot_id": records.boot_id(),
            },
        )
        # The environment goes to the process, never to disk: values may be secrets.
        env = {
            **os.environ,
            **spec.environment,
            "AIRFLOW_GPU_JOB_ID": job_id,
            SUBMITTED_AT_ENV: submitted_at_value(submitted_at),
            "PYTHONUNBUFFERED": "1",
        }
        # Console scripts of this installation (airflow-gpu-worker) first, even when the
        # Airflow process was started as .venv/bin/airflow without activating the venv.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
        runner = subprocess.Popen(
            [sys.executable, str(RUNNER), str(folder)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            cwd=folder,
        )
        try:
            _, err = runner.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            runner.kill()
            _, err = runner.communicate()
        if runner.returncode != 0 or not (folder / records.RUN_FILE).exists():
            message = (err or b"").decode(errors="replace").strip() or f"exit code {runner.returncode}"
            records.write_json(
                str(folder / records.EXIT_FILE),
                {
                    "exit_code": None,
                    "ended_at": time.time(),
                    "reason": f"the local supervisor failed to start: {message}",
                },
            )
            raise RuntimeError(f"could not start local job {job_id}: {message}")
        record = self._read(folder)
        assert record is not None  # job.json was written above, atomically
        return self._state(job_id, record)

    async def find(self, spec: JobSpec) -> list[JobState]:
        return await asyncio.to_thread(self._find, spec)

    def _find(self, spec: JobSpec) -> list[JobState]:
        prefix = spec.idempotency_key[:KEY_PREFIX_LEN] + "-"
        try:
            names = [n for n in os.listdir(self.state_dir) if n.startswith(prefix)]
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            record = self._read(self.state_dir / name)
            if record is None or record.cancel is not None:
                continue
            if record.job.get("idempotency_key") != spec.idempotency_key:
                continue
            found.append((record.job.get("submitted_at") or 0.0, self._state(name, record)))
        found.sort(key=lambda pair: pair[0], reverse=True)
        return [state for _, state in found]

    # -- watch ------------------------------------------------------------------------------------

    async def describe(self, job_ids: Sequence[str]) -> list[JobState]:
        return await asyncio.to_thread(self._describe, list(job_ids))

    def _describe(self, job_ids: list[str]) -> list[JobState]:
        states = []
        for job_id in job_ids:
            try:
                record = self._read(self.job_dir(job_id))
            except JobSpecError:
                continue
            if record is not None:
                states.append(self._state(job_id, record))
        return states

    async def list_jobs(self, queue: str | None, statuses: Sequence[str]) -> list[JobState]:
        # There are no queues here: every job folder is listed, newest first (the ids sort by time).
        def scan() -> list[JobState]:
            if not self.state_dir.is_dir():
                return []
            ids = sorted(
                (p.name for p in self.state_dir.iterdir() if p.is_dir()),
                key=lambda i: i.split("-", 1)[-1],
                reverse=True,
            )
            return [s for s in self._describe(ids) if s.status in statuses]

        return await asyncio.to_thread(scan)

    async def usage(self, job_ids: Sequence[str]) -> list[JobUsage]:
        """Wall and run time from the job's records; a local job has no instance to price ("cost: local")."""

        def read() -> list[JobUsage]:
            usages = []
            for state in self._describe(list(job_ids)):
                record = self._read(self.job_dir(state.job_id))
                if record is None:
                    continue
                started = (record.run or {}).get("started_at")
                ended = (record.exit or {}).get("ended_at")
                usages.append(
                    JobUsage(
                        job_id=state.job_id,
                        status=state.status,
                        created_at=record.job.get("submitted_at"),
                        stopped_at=ended,
                        run_s=max(0.0, ended - started) if started and ended else None,
                        market=LOCAL,
                        tags=state.tags,
                    )
                )
            return usages

        return await asyncio.to_thread(read)

    def _read(self, folder: Path) -> _Record | None:
        job = records.read_json(str(folder / records.JOB_FILE))
        if job is None:
            return None
        return _Record(
            job=job,
            run=records.read_json(str(folder / records.RUN_FILE)),
            exit=records.read_json(str(folder / records.EXIT_FILE)),
            cancel=records.read_json(str(folder / records.CANCEL_FILE)),
        )

    def _state(self, job_id: str, record: _Record) -> JobState:
        job, run, done, cancel = record.job, record.run, record.exit, record.cancel
        common: dict[str, Any] = {
            "job_id": job_id,
            "name": job.get("name"),
            # Marked like a Batch job that airflow-gpu terminated, so callers can tell who stopped it.
            "tags": {**(job.get("tags") or {}), **({TAG_CANCELLED: "true"} if cancel is not None else {})},
            "log_group": str(self.state_dir / job_id),
            "log_stream": records.LOG_FILE,
        }
        if done is not None:
            code = done.get("exit_code")
            if cancel is not None:
                status, reason = FAILED, cancel.get("reason") or "terminated"
            elif code == 0:
                status, reason = SUCCEEDED, done.get("reason")
            else:
                status = FAILED
                reason = done.get("reason") or f"the command exited with code {code}"
            return JobState(status=status, status_reason=reason, exit_code=code, attempts=1, **common)
        if run is None:
            submitted = job.get("submitted_at") or 0.0
            if time.time() - submitted > START_GRACE or _from_earlier_boot(job):
                return JobState(
                    status=FAILED,
                    attempts=0,
                    status_reason="the job never started: its submitter stopped before starting the local supervisor",
                    **common,
                )
            return JobState(status="SUBMITTED", queued_since=submitted, **common)
        if _runner_alive(run):
            return JobState(status="RUNNING", attempts=1, **common)
        # The supervisor writes exit.json and then ends: it may have done both since exit.json was read
        # above. Only a supervisor gone with no exit.json after it ended was lost.
        done = records.read_json(str(self.job_dir(job_id) / records.EXIT_FILE))
        if done is not None:
            return self._state(job_id, _Record(job=job, run=run, exit=done, cancel=cancel))
        why = cancel.get("reason") if cancel else None
        return JobState(
            status=FAILED,
            attempts=1,
            status_reason=why
            or (
                f"the job's supervisor (pid {run.get('runner_pid')}) is gone without recording an exit status: "
                f"the host restarted or the process was killed"
            ),
            **common,
        )

    async def add_tags(self, job_id: str, tags: Mapping[str, str]) -> None:
        def write() -> None:
            path = str(self.job_dir(job_id) / records.JOB_FILE)
            job = records.read_json(path)
            if job is None:
                raise JobSpecError(f"{self.location} has no job {job_id} to tag")
            records.write_json(path, {**job, "tags": {**(job.get("tags") or {}), **tags}})

        await asyncio.to_thread(write)

    async def terminate(self, job_id: str, reason: str) -> None:
        folder = self.job_dir(job_id)
        pgid = await asyncio.to_thread(self._mark_cancelled, folder, reason)
        if pgid is None:
            return
        await asyncio.to_thread(_kill_group, pgid, signal.SIGTERM)
        # Give the command the grace period to stop, then make sure.
        deadline = time.monotonic() + TERMINATE_GRACE
        while time.monotonic() < deadline:
            if await asyncio.to_thread(_stopped, folder, pgid):
                return
            await asyncio.sleep(0.1)
        await asyncio.to_thread(_kill_group, pgid, signal.SIGKILL)

    def _mark_cancelled(self, folder: Path, reason: str) -> int | None:
        """Record the cancellation; the process group to signal, or None when nothing runs."""
        record = self._read(folder)
        if record is None or record.exit is not None:
            return None  # unknown, or already over
        records.write_json(str(folder / records.CANCEL_FILE), {"reason": reason, "at": time.time()})
        run = record.run
        # A job still starting: its supervisor checks the cancel record before starting the
        # command, but may have passed that check already, so wait for it to record the pids.
        deadline = time.monotonic() + START_WAIT
        while run is None and time.monotonic() < deadline and not (folder / records.EXIT_FILE).exists():
            time.sleep(0.05)
            run = records.read_json(str(folder / records.RUN_FILE))
        if run is None or not run.get("pgid") or not _runner_alive(run):
            return None  # nothing running: the cancel record alone makes the job FAILED
        return int(run["pgid"])

    # -- logs -------------------------------------------------------------------------------------

    async def read_logs(self, job: JobState, *, cursor: str | None = None, tail: int | None = None) -> LogChunk:
        """Lines of the job's output.log. The cursor is a byte offset: reads resume exactly where the
        last one stopped, and a line still being written is held back until it is complete (or the
        job has ended)."""
        try:
            path = self.job_dir(job.job_id) / records.LOG_FILE
        except JobSpecError:
            return LogChunk([], cursor)
        if tail is not None:
            return await asyncio.to_thread(_tail, path, max(1, int(tail)))
        return await asyncio.to_thread(_read_from, path, int(cursor or 0), job.is_terminal)

    async def aclose(self) -> None:
        return None

    # -- housekeeping -----------------------------------------------------------------------------

    def _prune(self) -> None:
        """Remove folders of jobs that ended more than KEEP_FINISHED_S ago (at most hourly per process)."""
        global _last_prune
        if time.monotonic() - _last_prune < 3600:
            return
        _last_prune = time.monotonic()
        cutoff = time.time() - KEEP_FINISHED_S
        for entry in os.scandir(self.state_dir):
            if not entry.is_dir(follow_symlinks=False):
                continue
            done = records.read_json(os.path.join(entry.path, records.EXIT_FILE))
            if done is not None and (done.get("ended_at") or time.time()) < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)


# -- processes ------------------------------------------------------------------------------------


def _from_earlier_boot(record: dict[str, Any]) -> bool:
    recorded, current = record.get("boot_id"), records.boot_id()
    return bool(recorded and current and recorded != current)


def _runner_alive(run: dict[str, Any]) -> bool:
    """Is the supervisor that wrote ``run`` still running (not a zombie, not a reused pid)?"""
    if _from_earlier_boot(run):
        return False
    if run.get("host") and run["host"] != socket.gethostname():
        return True  # another host's process: we cannot tell, so trust the record
    pid = run.get("runner_pid")
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    started = run.get("runner_start")
    if started is not None:
        now = records.process_start_ticks(int(pid))
        if now is None or now != started:
            return False  # the pid now belongs to another process
        if _is_zombie(int(pid)):
            return False
    return True


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _stopped(folder: Path, pgid: int) -> bool:
    return (folder / records.EXIT_FILE).exists() or not _group_exists(pgid)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# -- log files --------------------------------------------------------------------------------------


def _decode(data: bytes) -> list[str]:
    return data.decode("utf-8", errors="replace").splitlines()


def _read_from(path: Path, offset: int, finished: bool) -> LogChunk:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if offset > size:  # the file was replaced: start again
                offset = 0
            handle.seek(offset)
            data = handle.read(min(MAX_READ, size - offset))
    except FileNotFoundError:
        return LogChunk([], str(offset))
    if not (finished and len(data) < MAX_READ):
        # More may follow: hold back a partial last line until it is complete (unless one
        # line fills a whole read, which is returned as it is rather than never).
        complete = data.rfind(b"\n") + 1
        if complete or len(data) < MAX_READ:
            data = data[:complete]
    return LogChunk(_decode(data), str(offset + len(data)))


def _tail(path: Path, lines: int) -> LogChunk:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            block, data, position = 64 * 1024, b"", size
            while position > 0 and data.count(b"\n") <= lines:
                step = min(block, position)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
    except FileNotFoundError:
        return LogChunk([], None)
    return LogChunk(_decode(data)[-lines:], str(size))


__all__ = [
    "LocalBackend",
    "STATE_DIR_ENV",
    "ENTRYPOINT_ENV",
    "DEFAULT_ENTRYPOINT",
    "default_state_dir",
    "default_entrypoint",
]
