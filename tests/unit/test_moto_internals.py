"""The moto harness checks, in one place, every moto internal it patches, and refuses a moto that differs in one line."""

from __future__ import annotations

import moto
import pytest
from moto.batch import models as batch_models

from tests.support.moto_aws import MOTO_INTERNALS, HarnessMismatch, check_moto_internals, locked_version


def test_the_locked_moto_has_every_internal_the_harness_patches():
    assert moto.__version__ == locked_version("moto")
    check_moto_internals()


def test_a_missing_internal_is_refused_in_one_line_naming_both_versions_and_the_fix(monkeypatch):
    monkeypatch.setattr(moto, "__version__", "9.9.9")
    monkeypatch.delattr(batch_models.Job, "terminate")
    with pytest.raises(HarnessMismatch) as refused:
        check_moto_internals()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("moto 9.9.9 has no moto.batch.models.Job.terminate")
    assert f"uv.lock pins moto {locked_version('moto')}" in message and "make test" in message


def test_a_changed_signature_is_refused_too():
    class Renamed:
        def describe(self, include_attempts):  # a parameter the harness does not pass
            return {}

    with pytest.raises(HarnessMismatch, match=r"changed the parameters of .*Renamed\.describe"):
        check_moto_internals(((Renamed, "describe", ("self",)),))


def test_every_patched_owner_is_listed():
    owners = {owner.__name__ for owner, _, _ in MOTO_INTERNALS}
    assert {"BaseResponse", "BatchSimpleBackend", "Job", "JobQueue", "BatchBackend", "LogsBackend"} <= owners
