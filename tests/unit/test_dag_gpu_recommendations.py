"""The gpu_recommendations DAG: structure, documented params, environments that never mix, worker commands."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

from airflow_gpu.decorators import GpuBatchDecoratedOperator
from airflow_gpu.operators import GpuBatchOperator

DAG_PATH = Path(__file__).resolve().parents[2] / "dags" / "gpu_recommendations.py"


@pytest.fixture(scope="module")
def module():
    spec = importlib.util.spec_from_file_location("gpu_recommendations_dag", DAG_PATH)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def params_of(module, **overrides) -> dict:
    values = {name: param.value for name, param in module.PARAMS.items()}
    values.update(overrides)
    return values


def test_dag_shape(module):
    dag = module.dag
    assert dag.dag_id == "gpu_recommendations"
    order = [t.task_id for t in dag.topological_sort()]
    assert order[:2] == ["prepare", "train"] and sorted(order[2:]) == ["gpu_check", "publish"]
    check = dag.get_task("gpu_check")
    assert isinstance(check, GpuBatchDecoratedOperator) and check.upstream_task_ids == {"prepare", "train"}
    assert check.deferrable is True
    train = dag.get_task("train")
    assert isinstance(train, GpuBatchOperator)
    assert train.deferrable is True
    assert {"backend", "poll_interval", "output_uri", "command"} <= set(train.template_fields)
    assert dag.max_active_runs == 1


def test_every_param_is_documented(module):
    for name in module.dag.params:
        description = module.dag.params.get_param(name).description
        assert description and len(description) > 20, f"param {name} has no real description"
    assert {"environment", "backend", "eval_holdout", "min_lift"} <= set(module.dag.params)
    assert module.PARAMS["environment"].schema["enum"] == ["production", "staging", "testing"]
    assert module.PARAMS["backend"].schema["enum"] == ["aws_batch", "local"]


def test_each_environment_has_its_own_data_queue_and_image(module):
    configs = {name: module.environment_config(name) for name in ("testing", "staging", "production")}
    for field in ("data_root", "job_queue", "job_definition"):
        assert len({config[field] for config in configs.values()}) == 3, field
    assert configs["production"]["data_root"] == "s3://airflow-gpu-production/recsys/"


def test_the_variable_overrides_an_environment(module):
    config = module.environment_config(
        "production",
        {
            "production": {
                "data_root": "s3://recsys-prod/data",
                "job_definition": "arn:aws:batch:x:1:job-definition/w:7",
            }
        },
    )
    assert config["data_root"] == "s3://recsys-prod/data/"
    assert config["job_definition"].endswith("w:7")
    assert config["job_queue"] == "airflow-gpu-production-queue"  # the default still fills the rest


@pytest.mark.parametrize(
    "override, message",
    [
        ({"staging": {"data_root": "s3://airflow-gpu-testing/recsys/"}}, "share data"),
        ({"staging": {"data_root": "s3://airflow-gpu-testing/recsys/staging/"}}, "share data"),  # nested counts too
        ({"staging": {"job_queue": ""}}, "no job_queue"),
        (["not", "a", "mapping"], "JSON object"),
    ],
)
def test_environments_that_would_mix_are_refused(module, override, message):
    with pytest.raises(ValueError, match=message):
        module.environment_config("staging", override)


def test_unknown_environment(module):
    with pytest.raises(ValueError, match="unknown environment"):
        module.environment_config("qa")


def test_each_run_writes_under_its_own_prefix(module):
    a = module.run_folder("manual__2026-01-01T00:00:00+00:00")
    b = module.run_folder("scheduled__2026-01-02T00:00:00+00:00")
    assert a != b and "/" not in a and ":" not in a and "+" not in a
    assert module.run_folder("../..") not in ("", ".", "..")


def test_worker_command_for_batch_uses_the_image_entrypoint(module):
    command = module.worker_command(params_of(module), "s3://b/in/", "s3://b/out/", "http://localhost:1")
    assert command[:5] == ["als", "--input", "s3://b/in/", "--output", "s3://b/out/"]
    assert command[command.index("--weight-col") + 1] == "plays"
    assert command[command.index("--eval-holdout") + 1] == "0.1"
    assert "--endpoint-url" not in command  # a Batch container reaches S3 itself
    assert all(isinstance(arg, str) for arg in command)


def test_worker_command_for_a_local_process_is_the_same_entrypoint_argv(module):
    params = params_of(module, backend="local", weight_column=None, eval_holdout=0)
    command = module.worker_command(params, "s3://b/in/", "s3://b/out/", "http://127.0.0.1:9000")
    assert command[:5] == [
        "als",
        "--input",
        "s3://b/in/",
        "--output",
        "s3://b/out/",
    ]  # the backend prepends the entrypoint
    assert command[-2:] == ["--endpoint-url", "http://127.0.0.1:9000"]
    assert "--weight-col" not in command and "--eval-holdout" not in command


def test_regularization_is_auto_or_a_number_the_worker_accepts(module):
    from airflow.sdk.definitions.param import ParamValidationError

    from airflow_gpu.worker.commands.options import regularization as _regularization

    param = copy.deepcopy(module.PARAMS["regularization"])  # resolve() keeps the value: not the DAG's own
    assert param.resolve("auto") == "auto" and param.resolve(2.5) == 2.5
    for bad in ("strong", -1):
        with pytest.raises(ParamValidationError):
            param.resolve(bad)
    for value, parsed in (("auto", None), (2.5, 2.5)):
        # A fixed regularization leaves nothing to tune: it comes with tune false (see the next test).
        command = module.worker_command(
            params_of(module, regularization=value, tune=value == "auto"), "s3://b/in/", "s3://b/out/", ""
        )
        assert _regularization(command[command.index("--regularization") + 1]) == parsed


def test_tune_is_on_by_default_like_the_workers_and_refuses_a_fixed_regularization(module):
    from airflow_gpu.worker.__main__ import build_parser
    from airflow_gpu.worker.commands.als import TUNE_BY_DEFAULT

    assert module.PARAMS["tune"].value is True is TUNE_BY_DEFAULT
    command = module.worker_command(params_of(module), "s3://b/in/", "s3://b/out/", "")
    args = build_parser().parse_args(command)  # the worker takes the argv as the DAG builds it
    assert "--tune" in command and args.tune is True and args.regularization is None
    # Off is said to the worker in so many words, since the worker searches unless told not to.
    command = module.worker_command(params_of(module, tune=False), "s3://b/in/", "s3://b/out/", "")
    assert "--no-tune" in command and build_parser().parse_args(command).tune is False
    command = module.worker_command(params_of(module, tune=False, regularization=2.5), "s3://b/in/", "s3://b/out/", "")
    assert build_parser().parse_args(command).regularization == 2.5
    with pytest.raises(ValueError, match="set regularization to auto, or tune to false"):
        module.worker_command(params_of(module, regularization=2.5), "s3://b/in/", "s3://b/out/", "")


def test_train_emits_the_asset_the_consumer_dag_is_scheduled_on(module):
    spec = importlib.util.spec_from_file_location(
        "gpu_recommendations_consumer_dag", DAG_PATH.with_name("gpu_recommendations_consumer.py")
    )
    consumer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(consumer)
    [outlet] = module.dag.get_task("train").outlets
    assert outlet == module.RECOMMENDATIONS == consumer.RECOMMENDATIONS
    assert list(consumer.dag.timetable.asset_condition.objects) == [outlet]  # scheduled on that Asset, and only on it
