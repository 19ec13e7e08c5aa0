"""Shared fixtures: one moto server per test session, reset before every test that uses it."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import time
from typing import Any, Iterator

import pytest

from tests.support.moto_aws import CREDENTIALS, HarnessMismatch, MotoAws, start_moto
from tests.support.paths import SHARED_TMP_ENV

# Fixtures that several test modules use, registered here so that no test module imports a fixture.
pytest_plugins = [
    "tests.support.gpu_batch_testing",
    "tests.support.provision_testing",
    "tests.support.airflow_postgres",
]

# One line per HTTP request from moto's server drowns every failure report.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background of a non-interactive shell (`make test &`) inherits SIGINT ignored,
    # and so would every process it starts: the Ctrl-C tests' subprocesses would never see their Ctrl-C.
    # Each pytest process (xdist's workers too) takes Python's own handler back; its children then start
    # with SIGINT at its default, as from a terminal.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A folder all xdist workers of this run share (the parent of each worker's base folder; the base
    folder itself without xdist), for what is made once per run, e.g. the migrated Airflow database."""
    base = tmp_path_factory.getbasetemp()
    os.environ[SHARED_TMP_ENV] = str(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


@pytest.fixture(scope="session")
def _moto_server():
    # Fake credentials for every client in the session, so nothing ever reaches real AWS.
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        server, aws = start_moto()
    except HarnessMismatch as exc:  # one line for the whole session, not an error per test
        pytest.exit(str(exc), returncode=2)
    yield aws
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def moto_aws(_moto_server: MotoAws) -> MotoAws:
    """A moto server (S3, Batch, CloudWatch Logs, ...) on 127.0.0.1 with Batch running without Docker."""
    _moto_server.reset()
    yield _moto_server
    _moto_server.batch.release_hold()


@pytest.fixture
def gpu_batch(moto_aws: MotoAws) -> dict[str, str]:
    """A GPU compute environment, job queue and job definition on the moto server."""
    return moto_aws.create_gpu_batch_environment()


@pytest.fixture
def fault_proxy(moto_aws):
    """A fault-injecting proxy on 127.0.0.1 in front of the moto server (see tests/support/fault_proxy.py)."""
    from tests.support.fault_proxy import FaultProxy

    with FaultProxy(moto_aws.endpoint_url, seed=11) as proxy:
        yield proxy
        FAULT_TALLY["faults injected"] += proxy.injected


#: Counts for the fault tests' closing line: faults injected, runs that survived them, outputs
#: byte-identical to a fault-free run. Tests add to it; the summary prints it when any ran.
FAULT_TALLY = {"faults injected": 0, "runs survived": 0, "outputs identical": 0}


def pytest_terminal_summary(terminalreporter):
    if any(FAULT_TALLY.values()):
        terminalreporter.write_line("fault tally: " + ", ".join(f"{n} {what}" for what, n in FAULT_TALLY.items()))


def _no_real_sleep(seconds: float) -> None:
    raise AssertionError(f"time.sleep({seconds}) in the unit tier: wait on the loop's (virtual) clock instead")


def _no_network(self: socket.socket, address: object) -> None:
    raise AssertionError(f"a connection to {address} in the unit tier: use the in-memory backend")


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test reaches for real AWS: a name lookup of an AWS endpoint fails at once, and the test that made
    it fails at teardown naming the host (a client without moto's endpoint_url, e.g. a job billed against
    the default connection). Airflow processes of the e2e tier are outside this hook; their connection
    points at moto (airflow_env)."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and name.endswith("amazonaws.com"):
            asked.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: real AWS is out of bounds in the tests")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    yield
    if asked:
        pytest.fail(f"the test reached for real AWS ({sorted(set(asked))}): point its client at the moto server")


@pytest.fixture
def memory_jobs(monkeypatch):
    """The in-memory job system, empty, for the unit tier (tests/support/memory_backend.py).

    Nothing in the tested path may wait in real time: a real sleep or a network connection fails
    the test. Jitter draws from a seeded generator, so a run repeats exactly.
    """
    from tests.support.memory_backend import InMemoryBackend

    InMemoryBackend.reset()
    monkeypatch.setattr(time, "sleep", _no_real_sleep)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    saved = random.getstate()
    random.seed(21)
    yield InMemoryBackend
    random.setstate(saved)
    InMemoryBackend.reset()
