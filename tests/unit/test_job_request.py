"""JobRequest: each field of a job request declared once, and everything that lists the fields held to it.

The operator's keyword signature repeats the fields by hand (it is the public API and the docs); the
template fields, the start trigger's kwargs and serialize(), the checks and the terminal's flags are
derived. A field missed in any of them fails here, rather than taking a default on one path only.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from datetime import timedelta

import pytest

from airflow_gpu.decorators import GpuBatchDecoratedOperator
from airflow_gpu.job_request import JobRequest
from airflow_gpu.jobs.spec import FIELD_CHECKS, JobSpec, JobSpecError, TaskIdentity
from airflow_gpu.operators import GpuBatchOperator
from airflow_gpu.terminal.submit import add_arguments
from airflow_gpu.triggers import GpuBatchJobTrigger, GpuBatchStartTrigger

IDENTITY = TaskIdentity("dag", "train", "manual__1", -1)
#: The operator's own parameters, which say how to run the task rather than what to ask of the job system.
OPERATOR_ONLY = {"deferrable", "reattach", "start_from_trigger"}
#: What the start trigger adds to the request: how the task ends, and the job once known.
TRIGGER_ONLY = {"end_on_trigger", "job_id"}

#: A value per field that differs from its default, as a DAG would pass it.
GIVEN = {
    "job_queue": "gpu-queue",
    "job_definition": "gpu-def:3",
    "command": ("als", "--output", "s3://lake/out/"),
    "environment": {"EPOCHS": "15"},
    "gpus": 2,
    "vcpus": 8,
    "memory_mib": 30000,
    "job_name": "nightly",
    "tags": {"team": "recsys"},
    "parameters": {"inputs": "s3://lake/in/"},
    "share_identifier": "recsys",
    "scheduling_priority": 70,
    "retry_attempts": 2,
    "timeout": timedelta(hours=2),
    "max_queued": timedelta(minutes=30),
    "aws_conn_id": "aws_gpu",
    "region_name": "eu-west-1",
    "poll_interval": 7,
    "stream_logs": False,
    "backend": "aws_batch",
    "output_uri": "s3://lake/out/",
}


def operator_parameters() -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(GpuBatchOperator.__init__).parameters
    return {name: p for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_every_field_is_given_a_value_here():
    assert list(GIVEN) == list(JobRequest.names())
    assert all(GIVEN[name] != default for name, default in JobRequest.defaults().items() if name != "backend")


def test_the_operator_signature_takes_the_declared_fields_in_order_with_their_defaults():
    parameters = operator_parameters()
    assert [name for name in parameters if name not in OPERATOR_ONLY] == list(JobRequest.names())
    assert {name: parameters[name].default for name in JobRequest.names()} == JobRequest.defaults()


def test_template_fields_are_the_declared_templated_fields():
    assert tuple(GpuBatchOperator.template_fields) == JobRequest.template_fields()
    assert {"share_identifier", "scheduling_priority", "command", "backend"} <= set(JobRequest.template_fields())
    assert not {"retry_attempts", "timeout", "max_queued", "stream_logs"} & set(JobRequest.template_fields())
    # The decorator adds its own to the operator's, never fewer.
    assert set(JobRequest.template_fields()) <= set(GpuBatchDecoratedOperator.template_fields)


def test_the_start_trigger_kwargs_and_serialize_carry_every_field_through_the_trigger_row():
    op = GpuBatchOperator(task_id="train", start_from_trigger=True, **GIVEN)
    kwargs = op.start_trigger_args.trigger_kwargs
    assert set(kwargs) - TRIGGER_ONLY == set(JobRequest.names())
    stored = json.loads(json.dumps(kwargs))  # what the Trigger row keeps
    trigger = GpuBatchStartTrigger(**stored)
    classpath, serialized = trigger.serialize()
    assert classpath == "airflow_gpu.triggers.GpuBatchStartTrigger"
    assert set(serialized) - TRIGGER_ONLY == set(JobRequest.names())
    # Every value survives the round trip, as the operator normalised it (durations in seconds).
    assert {name: serialized[name] for name in JobRequest.names()} == {
        name: JobRequest.of(op).trigger_kwargs()[name] for name in JobRequest.names()
    }
    assert serialized["timeout"] == 7200 and serialized["max_queued"] == 1800.0
    # On a worker or on the triggerer, the same request becomes the same job.
    assert JobRequest.of(trigger).spec(IDENTITY) == JobRequest.of(op).spec(IDENTITY)


def test_a_trigger_row_from_an_earlier_release_takes_the_declared_defaults_and_an_unknown_field_is_refused():
    op = GpuBatchOperator(task_id="train", job_queue="q", job_definition="d", start_from_trigger=True)
    older = {k: v for k, v in op.start_trigger_args.trigger_kwargs.items() if k != "share_identifier"}
    assert GpuBatchStartTrigger(**older).share_identifier is None
    with pytest.raises(TypeError, match="shareIdentifier"):
        GpuBatchStartTrigger(**older, shareIdentifier="recsys")


def test_the_spec_fields_are_what_jobspec_build_checks():
    assert set(FIELD_CHECKS) <= set(JobRequest.names())
    spec = JobRequest(**GIVEN).spec(IDENTITY)
    assert (spec.share_identifier, spec.scheduling_priority) == ("recsys", 70)
    assert (spec.queue, spec.definition, spec.gpus, spec.memory_mib, spec.timeout_s) == (
        "gpu-queue",
        "gpu-def:3",
        2,
        30000,
        7200,
    )
    with pytest.raises(TypeError, match="backend"):
        JobSpec.build(identity=IDENTITY, backend="local")


def test_the_terminal_flags_are_the_declared_ones():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    dests = {action.dest: action for action in parser._actions}
    for name in JobRequest.flags():
        assert dests[name].option_strings == ["--" + name.replace("_", "-")]
        assert dests[name].default == JobRequest.defaults()[name]
    args = parser.parse_args(["--share-identifier", "recsys", "--scheduling-priority", "70", "--", "true"])
    assert (args.share_identifier, args.scheduling_priority) == ("recsys", 70)


# -- the fair-share checks ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["recsys", "A1", "a" * 255, "teamA*", None])
def test_a_share_identifier_batch_takes_is_kept(value):
    assert JobSpec.build(identity=IDENTITY, share_identifier=value).share_identifier == value


@pytest.mark.parametrize("value", ["", "a" * 256, "rec-sys", "rec sys", "*", "a*b", 7])
def test_a_share_identifier_batch_refuses_is_named_with_the_fix(value):
    with pytest.raises(JobSpecError, match=r"share_identifier must be 1 to 255 letters and digits.*e\.g\."):
        JobSpec.build(identity=IDENTITY, share_identifier=value)


@pytest.mark.parametrize(("value", "kept"), [(0, 0), (9999, 9999), ("70", 70), (None, None)])
def test_a_scheduling_priority_from_0_to_9999_is_kept(value, kept):
    assert JobSpec.build(identity=IDENTITY, scheduling_priority=value).scheduling_priority == kept


@pytest.mark.parametrize("value", [-1, 10000, 1.5, "high", True])
def test_a_scheduling_priority_out_of_range_is_named(value):
    with pytest.raises(JobSpecError, match="scheduling_priority must be"):
        JobSpec.build(identity=IDENTITY, scheduling_priority=value)


def test_the_operator_refuses_a_plain_bad_share_at_parse_time_and_a_templated_one_once_rendered():
    with pytest.raises(JobSpecError, match="share_identifier"):
        GpuBatchOperator(task_id="t", job_queue="q", job_definition="d", share_identifier="rec-sys")
    with pytest.raises(JobSpecError, match="scheduling_priority"):
        GpuBatchOperator(task_id="t", job_queue="q", job_definition="d", scheduling_priority=10000)
    op = GpuBatchOperator(
        task_id="t", job_queue="q", job_definition="d", share_identifier="{{ params.share }}", scheduling_priority=5
    )
    op.share_identifier = "rec-sys"  # as rendered
    with pytest.raises(JobSpecError, match="share_identifier"):
        op._check_fields(skip_templates=False)


@pytest.mark.parametrize(
    "path",
    [
        "airflow_gpu.starting.GpuBatchStartTrigger",  # Trigger rows and serialized DAGs written before the move
        GpuBatchStartTrigger(job_queue="q").serialize()[0],
        "airflow_gpu.triggers.GpuBatchJobTrigger",
        GpuBatchJobTrigger("job-1").serialize()[0],
    ],
)
def test_every_trigger_classpath_written_then_or_now_resolves_to_its_class(path):
    module, name = path.rsplit(".", 1)
    assert (
        getattr(importlib.import_module(module), name)
        is {
            "GpuBatchStartTrigger": GpuBatchStartTrigger,
            "GpuBatchJobTrigger": GpuBatchJobTrigger,
        }[name]
    )
