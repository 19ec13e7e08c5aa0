"""batch-setup's pure parts: waiting with a deadline, and comparing what AWS reports with what we asked for."""

from __future__ import annotations

import pytest

from airflow_gpu.provision.aws import WaitPolicy, wait_for
from airflow_gpu.provision.compare import compute_environment_view, diff, job_definition_view
from airflow_gpu.provision.errors import ProvisionError, WaitTimeout


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy(clock: FakeClock, timeout: float = 30.0) -> WaitPolicy:
    return WaitPolicy(timeout=timeout, interval=5.0, sleep=clock.sleep, clock=clock)


def test_wait_polls_until_done():
    clock = FakeClock()
    states = iter([{"status": "CREATING"}, {"status": "CREATING"}, {"status": "VALID"}])
    result = wait_for(
        policy(clock), "ce x to be VALID", lambda: next(states), lambda s: s["status"] == "VALID", show=str
    )
    assert result == {"status": "VALID"}
    assert clock.sleeps == [5.0, 5.0]


def test_wait_gives_up_at_the_deadline_with_the_last_state():
    clock = FakeClock()
    with pytest.raises(WaitTimeout) as err:
        wait_for(
            policy(clock, timeout=12),
            "job queue q to be deleted",
            lambda: {"status": "DELETING"},
            lambda s: s is None,
            show=lambda s: f"status {s['status']}",
        )
    assert "timed out after 12 s waiting for job queue q to be deleted (last seen: status DELETING)" in str(err.value)
    assert "--wait-timeout" in str(err.value)
    assert clock.now == 15.0  # three polls of 5 s, then the deadline


def test_wait_stops_at_once_on_invalid():
    clock = FakeClock()
    with pytest.raises(ProvisionError, match="INVALID: CLIENT_ERROR - subnet-1 not found"):
        wait_for(
            policy(clock),
            "ce x to be VALID",
            lambda: {"status": "INVALID", "statusReason": "CLIENT_ERROR - subnet-1 not found"},
            lambda s: s["status"] == "VALID",
            show=str,
        )
    assert clock.sleeps == []


def test_job_definition_view_ignores_what_aws_adds_or_reorders():
    asked = {
        "type": "container",
        "containerProperties": {
            "image": "img:1",
            "resourceRequirements": [{"type": "GPU", "value": "1"}, {"type": "MEMORY", "value": "15000"}],
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "g"}},
        },
        "retryStrategy": {"attempts": 3, "evaluateOnExit": [{"onStatusReason": "Host EC2*", "action": "RETRY"}]},
        "propagateTags": True,
    }
    reported = {
        "jobDefinitionArn": "arn:...:1",
        "revision": 1,
        "status": "ACTIVE",
        "containerOrchestrationType": "ECS",
        "type": "container",
        "parameters": {},
        "containerProperties": {
            "image": "img:1",
            "command": [],
            "volumes": [],
            "environment": [],
            "mountPoints": [],
            "ulimits": [],
            "secrets": [],
            "resourceRequirements": [{"type": "MEMORY", "value": "15000"}, {"type": "GPU", "value": "1"}],
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "g"}, "secretOptions": []},
        },
        "retryStrategy": {"attempts": 3, "evaluateOnExit": [{"onStatusReason": "Host EC2*", "action": "retry"}]},
        "propagateTags": True,
    }
    assert diff(job_definition_view(reported), job_definition_view(asked)) == []
    # A field set by hand is drift, and shows as a change back to unset.
    reported["containerProperties"]["privileged"] = True
    changes = diff(job_definition_view(reported), job_definition_view(asked))
    assert [c.render() for c in changes] == ["containerProperties.privileged: True -> (unset)"]


def test_compute_environment_view_compares_sets_and_profile_names():
    asked = {
        "type": "MANAGED",
        "state": "ENABLED",
        "computeResources": {
            "type": "SPOT",
            "instanceTypes": ["g6.xlarge", "g5.xlarge"],
            "subnets": ["subnet-b", "subnet-a"],
            "instanceRole": "ecsInstanceRole",
            "minvCpus": 0,
            "maxvCpus": 64,
        },
    }
    reported = {
        "type": "MANAGED",
        "state": "ENABLED",
        "status": "VALID",
        "computeResources": {
            "type": "SPOT",
            "instanceTypes": ["g5.xlarge", "g6.xlarge"],
            "subnets": ["subnet-a", "subnet-b"],
            "instanceRole": "arn:aws:iam::123456789012:instance-profile/ecsInstanceRole",
            "minvCpus": 0,
            "maxvCpus": 64,
            "desiredvCpus": 8,
            "bidPercentage": 100,
        },
    }
    assert diff(compute_environment_view(reported), compute_environment_view(asked)) == []
