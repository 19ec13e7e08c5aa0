"""Shared fixtures: one moto server per test session, reset before every test that uses it."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from moto_aws import CREDENTIALS, MotoAws, start_moto  # noqa: E402

# One line per HTTP request from moto's server drowns every failure report.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def _moto_server():
    # Fake credentials for every client in the session, so nothing ever reaches real AWS.
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server, aws = start_moto()
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
