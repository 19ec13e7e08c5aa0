"""JobSpec: names, tags, idempotency keys and the checks that run before any call."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from airflow_gpu.jobs.spec import (
    TAG_IDEMPOTENCY_KEY,
    JobSpec,
    JobSpecError,
    TaskIdentity,
    job_name_for,
    sanitize_job_name,
)

IDENTITY = TaskIdentity("dag", "task", "manual__2026-01-01T00:00:00+00:00", -1)
BATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def build(**overrides):
    args = dict(identity=IDENTITY, job_queue="gpu-queue", job_definition="gpu-als")
    args.update(overrides)
    return JobSpec.build(**args)


@pytest.mark.parametrize(
    "raw",
    ["my.dag-train gpu", "__private", "-dash", "ünïcödé/ταυ", "a" * 300, "", "...", "x:y@z", "9lives"],
)
def test_sanitised_names_follow_batch_rules(raw):
    name = sanitize_job_name(raw)
    assert BATCH_NAME.fullmatch(name), name


def test_job_name_keeps_readable_base_and_ends_with_key_hash():
    name = job_name_for("recsys.daily/train als", IDENTITY)
    assert name.startswith("recsys_daily_train_als-")
    assert name.endswith("-" + IDENTITY.idempotency_key[:12])
    long = job_name_for("x" * 500, IDENTITY)
    assert len(long) == 128 and BATCH_NAME.fullmatch(long)


def test_idempotency_key_is_stable_and_distinguishes_every_part():
    same = TaskIdentity("dag", "task", "manual__2026-01-01T00:00:00+00:00", -1)
    assert same.idempotency_key == IDENTITY.idempotency_key
    others = [
        TaskIdentity("dag2", "task", IDENTITY.run_id, -1),
        TaskIdentity("dag", "task2", IDENTITY.run_id, -1),
        TaskIdentity("dag", "task", "other_run", -1),
        TaskIdentity("dag", "task", IDENTITY.run_id, 0),
        # no separator trick makes two identities collide
        TaskIdentity("dag-task", "", IDENTITY.run_id, -1),
    ]
    keys = {o.idempotency_key for o in others} | {IDENTITY.idempotency_key}
    assert len(keys) == len(others) + 1


def test_spec_carries_task_tags_and_user_tags():
    spec = build(tags={"team": "recsys"})
    assert spec.tags["team"] == "recsys"
    assert spec.tags[TAG_IDEMPOTENCY_KEY] == IDENTITY.idempotency_key
    assert spec.tags["airflow:dag_id"] == "dag"
    assert spec.tags["airflow:map_index"] == "-1"
    assert spec.tags["airflow:run_id"] == "manual__2026-01-01T00:00:00+00:00"


def test_resource_requirements_and_retry_strategy():
    spec = build(gpus=2, vcpus="8", memory_mib=30000, retry_attempts=4, timeout=timedelta(hours=2))
    assert spec.resource_requirements() == [
        {"type": "GPU", "value": "2"},
        {"type": "VCPU", "value": "8"},
        {"type": "MEMORY", "value": "30000"},
    ]
    strategy = spec.retry_strategy()
    assert strategy["attempts"] == 4
    assert strategy["evaluateOnExit"][0] == {"onStatusReason": "Host EC2*", "action": "RETRY"}
    assert all(rule["action"] == "EXIT" for rule in strategy["evaluateOnExit"][1:])
    assert spec.timeout_s == 7200
    assert build(gpus=0).resource_requirements() == []


@pytest.mark.parametrize(
    "overrides, param",
    [
        ({"gpus": -1}, "gpus"),
        ({"gpus": 17}, "gpus"),
        ({"gpus": 1.5}, "gpus"),
        ({"gpus": True}, "gpus"),
        ({"gpus": "two"}, "gpus"),
        ({"vcpus": 0}, "vcpus"),
        ({"memory_mib": 2}, "memory_mib"),
        ({"memory_mib": "lots"}, "memory_mib"),
        ({"command": "python train.py"}, "command"),
        ({"command": ["python", 3]}, "command"),
        ({"command": []}, "command"),
        ({"environment": {"EPOCHS": 15}}, "environment"),
        ({"environment": {"BAD-NAME": "1"}}, "environment variable name"),
        ({"environment": {"AWS_BATCH_JOB_ID": "x"}}, "reserved"),
        ({"environment": {"AIRFLOW_GPU_SUBMITTED_AT": "0"}}, "set by airflow-gpu when it submits"),
        ({"environment": ["A=1"]}, "environment"),
        ({"tags": {"aws:owner": "me"}}, "aws:"),
        ({"tags": {"team": 1}}, "tags"),
        ({"tags": {f"k{i}": "v" for i in range(46)}}, "tags"),
        ({"tags": {TAG_IDEMPOTENCY_KEY: "forged"}}, "set by airflow-gpu"),
        ({"parameters": {"n": 1}}, "parameters"),
        ({"retry_attempts": 0}, "retry_attempts"),
        ({"retry_attempts": 11}, "retry_attempts"),
        ({"timeout": 30}, "timeout"),
        ({"timeout": "1h"}, "timeout"),
        ({"job_queue": ""}, "job_queue"),
        ({"job_definition": "  "}, "job_definition"),
        ({"job_name": "  "}, "job_name"),
    ],
)
def test_each_bad_parameter_is_named(overrides, param):
    with pytest.raises(JobSpecError) as err:
        build(**overrides)
    assert param in str(err.value)


def test_queue_and_definition_may_be_left_to_a_backend_without_queues():
    # The local backend needs neither; AWS Batch refuses the spec before any call.
    from airflow_gpu.jobs.aws.backend import AwsBatchBackend

    spec = build(job_queue=None, job_definition=None)
    assert (spec.queue, spec.definition) == (None, None)
    with pytest.raises(JobSpecError, match="job_queue is required on AWS Batch"):
        AwsBatchBackend.submit_params(object.__new__(AwsBatchBackend), spec)


def test_string_command_error_suggests_the_argv_list():
    with pytest.raises(JobSpecError, match=r"\['python', 'train.py'\]"):
        build(command="python train.py")
