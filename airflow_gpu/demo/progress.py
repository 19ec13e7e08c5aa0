"""Live progress while ``dag.test()`` runs: task state changes from the metadata DB, and the
local job's log lines as the worker writes them.

``dag.test()`` blocks the main thread until the run ends, so this runs beside it in a
thread with its own event loop. It reads the job's log through
``LocalBackend.read_logs(cursor=...)``, the same call a trigger uses to relay it.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Callable

# The worker's lines start "2026-01-01T00:00:00 INFO "; the demo prints its own clock instead.
_WORKER_PREFIX = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (INFO )?")
_SHOWN_STATES = {"running", "deferred", "success", "failed", "up_for_retry", "upstream_failed", "skipped"}


class Progress:
    def __init__(self, dag_id: str, since: float, state_dir, say: Callable[[str], None], interval: float = 0.5) -> None:
        self.dag_id = dag_id
        self.since = since
        self.state_dir = state_dir
        self.say = say
        self.interval = interval
        self.job_ids: list[str] = []
        self._db = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="demo-progress", daemon=True)

    def __enter__(self) -> Progress:
        self._engine()  # imports and configuration happen here, in the caller's thread
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    async def _run(self) -> None:
        from airflow_gpu.jobs.local.backend import LocalBackend

        backend = LocalBackend(self.state_dir)
        states: dict[str, str] = {}
        cursors: dict[str, str | None] = {}
        while True:
            stopping = self._stop.is_set()
            try:
                for task_id, state in await asyncio.to_thread(self._task_states):
                    if states.get(task_id) != state:
                        states[task_id] = state
                        if state in _SHOWN_STATES:
                            self.say(f"task {task_id}: {state}")
                for job_id in await asyncio.to_thread(self._new_jobs, set(cursors)):
                    cursors[job_id] = None
                    self.job_ids.append(job_id)
                    self.say(f"local job {job_id} started; its log: {self.state_dir / job_id / 'output.log'}")
                if cursors:
                    for job in await backend.describe(list(cursors)):
                        chunk = await backend.read_logs(job, cursor=cursors[job.job_id])
                        cursors[job.job_id] = chunk.cursor
                        for line in chunk.lines:
                            self.say("  worker | " + _WORKER_PREFIX.sub("", line))
            except Exception as exc:  # progress is a courtesy: never let it break the run
                self.say(f"(progress display: {exc})")
            if stopping:
                if self._db is not None:
                    self._db.dispose()
                return
            await asyncio.sleep(self.interval)

    def _task_states(self) -> list[tuple[str, str]]:
        # Plain SQL on an engine of our own: the ORM here would configure mappers in this
        # thread while dag.test() imports model modules in the main one, and deadlock.
        from sqlalchemy import text

        query = text(
            "SELECT task_id, state, next_method FROM task_instance WHERE dag_id = :dag AND run_id = "
            "(SELECT run_id FROM dag_run WHERE dag_id = :dag ORDER BY id DESC LIMIT 1)"
        )
        with self._engine().connect() as connection:
            rows = connection.execute(query, {"dag": self.dag_id}).all()
        # dag.test() runs the trigger inline and marks the task queued meanwhile; the task is
        # still deferred (it waits to resume in next_method), so show it as such.
        return [
            (task_id, "deferred" if next_method and state in ("queued", "scheduled") else state)
            for task_id, state, next_method in rows
            if state
        ]

    def _engine(self):
        if self._db is None:
            from airflow.configuration import conf
            from sqlalchemy import create_engine

            self._db = create_engine(conf.get("database", "sql_alchemy_conn"))
        return self._db

    def _new_jobs(self, known: set[str]) -> list[str]:
        if not self.state_dir.is_dir():
            return []
        fresh = []
        for folder in self.state_dir.iterdir():
            if folder.name in known or not (folder / "job.json").exists():
                continue
            if folder.stat().st_mtime >= self.since - 1:
                fresh.append(folder.name)
        return sorted(fresh)


def elapsed_printer(started: float) -> Callable[[str], None]:
    lock = threading.Lock()

    def say(message: str) -> None:
        with lock:
            print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    return say
