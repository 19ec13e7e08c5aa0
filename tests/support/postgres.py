"""A throwaway PostgreSQL server for Airflow's metadata database: initdb, start, stop, remove.

Two triggerers cannot share SQLite, and deployments run PostgreSQL, so the several-triggerers
test (tests/e2e/test_e2e_triggerers.py) and the triggerer benchmark (benchmarks/triggerer_airflow.py)
both start one here. It uses Debian's packages (`apt-get install postgresql`), found under
/usr/lib/postgresql/<version>/bin or on PATH. It listens on 127.0.0.1 and a free port only,
with trust authentication: nothing but this machine's loopback reaches it, and it lives in a
temporary folder that ``stop`` removes.

PostgreSQL refuses to run as root; as root, the server runs as the ``postgres`` user that the
Debian package creates (through runuser).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

DATABASE = "airflow"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries here, or no user to run them as."""


def find_bindir() -> Path:
    """The newest PostgreSQL's bin folder: Debian's /usr/lib/postgresql/<version>/bin, else pg_ctl's on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb") or shutil.which("pg_ctl")
    if found and (Path(found).resolve().parent / "initdb").exists():
        return Path(found).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL is not installed: no /usr/lib/postgresql/<version>/bin/initdb and no initdb on PATH; "
        "install it with `apt-get install postgresql` (what .ci/run does)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; ``url`` is the SQLAlchemy URL of its ``airflow`` database."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="airflow-gpu-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                raise PostgresUnavailable(
                    "running as root and no `postgres` user to run PostgreSQL as (the Debian package creates one)"
                ) from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]
        self.url = self.url_of(DATABASE)
        self.started = False

    def url_of(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def copy_database(self, template: str, name: str) -> str:
        """A new database ``name`` that starts as a copy of ``template`` (which nobody may be connected to);
        its SQLAlchemy URL. Copying a migrated Airflow database takes a fraction of a second; migrating, 40 s."""
        self._run(
            str(self.bindir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-T",
            template,
            name,
        )
        return self.url_of(name)

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._prefix, *argv], capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )

    def start(self) -> PostgresServer:
        bin_ = self.bindir
        self._run(
            str(bin_ / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        # fsync off: a throwaway cluster; Airflow's pools of several processes need more than the default 100 connections.
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off -c max_connections=400"
        )
        self._run(
            str(bin_ / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        self.started = True
        self._run(str(bin_ / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", DATABASE)
        return self

    def stop(self) -> None:
        try:
            if self.started:
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop"
                )
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
