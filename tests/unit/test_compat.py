"""airflow_gpu.compat: the Airflow floor, refused below it with the fix, accepted from it on."""

from __future__ import annotations

import importlib

import airflow
import pytest

import airflow_gpu.compat as compat


@pytest.fixture
def reload_compat(monkeypatch):
    def load(version: str):
        monkeypatch.setattr(airflow, "__version__", version)
        return importlib.reload(compat)

    yield load
    monkeypatch.undo()
    importlib.reload(compat)


@pytest.mark.parametrize("version", ["3.0.6", "3.1.8", "3.2.2", "2.11.0"])
def test_an_airflow_below_the_floor_is_refused_with_the_fix(reload_compat, version):
    with pytest.raises(ImportError) as refused:
        reload_compat(version)
    message = str(refused.value)
    assert f"this environment has {version}" in message and "pip install 'apache-airflow>=3.3,<4'" in message


@pytest.mark.parametrize("version", ["3.3.0", "3.3.2", "3.4.0.dev0"])
def test_every_version_from_the_floor_on_is_accepted(reload_compat, version):
    assert reload_compat(version).AIRFLOW_VERSION.release[:2] >= (3, 3)
