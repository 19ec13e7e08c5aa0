"""Shared fixtures: one moto server per test session, reset before every test that uses it."""

from __future__ import annotations

import logging
import os
import random
import socket
import time

import pytest

from tests.support.moto_aws import CREDENTIALS, HarnessMismatch, MotoAws, start_moto

# Fixtures that several test modules use, registered here so that no test module imports a fixture.
pytest_plugins = ["tests.support.gpu_batch_testing", "tests.support.provision_testing"]

# One line per HTTP request from moto's server drowns every failure report.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under xdist (`make test`: -n 2 --dist loadgroup), the real-Airflow tests run one after another on
    one worker: each starts several Airflow processes, and two such sets at once would fight for 2 cores."""
    for item in items:
        if "tests/e2e/" in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("e2e"))
