"""Airflow's components as separate processes on PostgreSQL, for the tests that run several triggerers
(two triggerers cannot share SQLite): one PostgreSQL server per test session, one Airflow database
migrated once in it, and a copy of that database for each test.

    def test_x(tmp_path, moto_aws, airflow_postgres_url):
        with postgres_airflow(tmp_path, moto_aws, airflow_postgres_url, "x.py", dag_text) as pg:
            rest = pg.start_core()             # api-server, scheduler, dag-processor
            pg.cluster.start("triggerer-a", "triggerer", ...)
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.airflow_e2e import Airflow, Cluster, airflow_env, free_port, migrate_airflow
from tests.support.moto_aws import MotoAws
from tests.support.postgres import DATABASE, PostgresServer, PostgresUnavailable

_copies = itertools.count(1)


@pytest.fixture(scope="session")
def _airflow_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, its ``airflow`` database migrated to this Airflow's head."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.skip(f"several triggerers need PostgreSQL: {exc}")
    with server:
        migrate_airflow(
            tmp_path_factory.mktemp("airflow-postgres-migrate"), AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=server.url
        )
        yield server


@pytest.fixture
def airflow_postgres_url(_airflow_postgres: PostgresServer) -> str:
    """The SQLAlchemy URL of a fresh migrated Airflow database of this test's own."""
    return _airflow_postgres.copy_database(DATABASE, f"airflow_test_{next(_copies)}")


@dataclass
class PostgresAirflow:
    """One test's Airflow on PostgreSQL: its home, environment, process cluster and a database engine."""

    home: Path
    port: int
    env: dict[str, str]
    cluster: Cluster
    engine: Any  # sqlalchemy.Engine, for the tests' own queries of trigger assignments

    def start_core(self) -> Airflow:
        """api-server, scheduler and dag-processor; the REST client of the api-server. Triggerers are the test's."""
        api = self.cluster.start("api-server", "api-server")
        self.cluster.start("scheduler", "scheduler")
        self.cluster.start("dag-processor", "dag-processor")
        return Airflow(
            self.home, self.port, api, self.home / "api-server.log", self.env, scheduler_log=self.home / "scheduler.log"
        )

    def start_triggerer(self, name: str, **settings: str) -> subprocess.Popen:
        """One more `airflow triggerer`, with a trigger log server port of its own."""
        return self.cluster.start(
            name, "triggerer", AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()), **settings
        )


@contextlib.contextmanager
def postgres_airflow(
    tmp_path: Path,
    moto_aws: MotoAws,
    database_url: str,
    dag_name: str,
    dag_text: str,
    health_threshold: int,
    **settings: str,
) -> Iterator[PostgresAirflow]:
    """A home with one DAG file, Airflow's environment on ``database_url`` (LocalExecutor with four slots,
    triggerer heartbeats every 2 s, a triggerer's triggers handed to another after ``health_threshold``
    seconds without one, ``settings`` on top). On the way out, whatever happened: the jobs are released,
    every Airflow process is stopped, and each one's log tail is printed if the test failed."""
    import sqlalchemy

    home = tmp_path / "airflow-home"
    dags = tmp_path / "dags"
    home.mkdir()
    dags.mkdir()
    (dags / dag_name).write_text(dag_text)
    # The processes below start at once; with no airflow.cfg each would write one (a race on one file).
    # The settings all come from the environment (airflow_env), so the file says only that.
    (home / "airflow.cfg").write_text("# every setting of this test's Airflow is in its environment (airflow_env)\n")
    port = free_port()
    env = airflow_env(
        home,
        dags,
        moto_aws,
        port,
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=database_url,
        AIRFLOW__CORE__PARALLELISM="4",  # four task slots for many GPU tasks: only deferral lets them all run
        AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="2",
        AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD=str(health_threshold),
        **settings,
    )
    cluster = Cluster(home, env)
    engine = sqlalchemy.create_engine(database_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        yield PostgresAirflow(home, port, env, cluster, engine)
    except BaseException:
        for name in list(cluster.processes):
            print(f"--- airflow {name} log (tail) ---\n{cluster.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        moto_aws.batch.release_hold()
        cluster.stop()
        engine.dispose()
