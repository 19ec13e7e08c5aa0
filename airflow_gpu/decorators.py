"""``@task.gpu_batch``: a Python function run inside the GPU container, as a GpuBatchOperator task.

    from airflow.sdk import task

    @task.gpu_batch(job_queue="gpu", job_definition="airflow-gpu-worker", gpus=1, staging_prefix="s3://b/staging/")
    def train(rows: int) -> dict:
        import torch  # imports inside the function: only its source travels
        ...
        return {"loss": 0.1}

The operator does everything it does for any job (JobSpec checks, reattach, deferral, live
logs, links, termination on kill/clear/timeout/max_queued); this class only decides the
command. At execute it stages the function's source and its (rendered) arguments as one JSON
document under ``<staging_prefix>/functions/<sha256>/`` and runs
``airflow-gpu-worker run-function --payload URI --sha256 DIGEST --result PREFIX``. On
success the task returns what the function returned (see :mod:`airflow_gpu.shipping` for what
can be passed and returned); on failure the error carries the remote traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Sequence

from airflow.sdk.bases.decorator import DecoratedOperator, task_decorator_factory
from airflow.sdk.definitions._internal.mixins import ResolveMixin
from airflow.sdk.exceptions import AirflowException

from airflow_gpu.config import staging_prefix
from airflow_gpu.exceptions import GpuFunctionFailed
from airflow_gpu.jobs.backend import SUCCEEDED, JobState
from airflow_gpu.jobs.spec import JobSpecError
from airflow_gpu.object_store import ObjectStore
from airflow_gpu.operators import GpuBatchOperator
from airflow_gpu.shipping import (
    ResultMissing,
    check_arguments,
    function_payload,
    read_error,
    read_result,
    result_prefix,
    stage,
)
from airflow_gpu.task_job import task_identity

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.bases.decorator import TaskDecorator


class GpuBatchDecoratedOperator(DecoratedOperator, GpuBatchOperator):
    """GpuBatchOperator whose command runs the decorated function (``run-function``).

    :param staging_prefix: where the function and its results are staged (``s3://bucket/prefix/``,
        or a folder for ``backend="local"``); else ``[airflow_gpu] staging_prefix``, else
        ``$AIRFLOW_GPU_STAGING_PREFIX``. The job's role must read and write it.
    :param code: a folder (relative paths: beside the DAG file) shipped with the function as one code
        bundle, so the function may import its modules; its requirements.txt is installed first.
    :param max_code_size: refuse a bundle larger than this (bytes, or "200MB"; the default).
    """

    custom_operator_name = "@task.gpu_batch"
    template_fields: Sequence[str] = tuple(
        dict.fromkeys((*DecoratedOperator.template_fields, *GpuBatchOperator.template_fields, "staging_prefix"))
    )
    template_fields_renderers = {
        **GpuBatchOperator.template_fields_renderers,
        **DecoratedOperator.template_fields_renderers,
    }

    def __init__(
        self,
        *,
        python_callable: Callable,
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        staging_prefix: str | None = None,
        code: str | None = None,
        max_code_size: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("command") is not None:
            raise JobSpecError(
                "@task.gpu_batch builds the job's command itself; drop command= (use GpuBatchOperator for a command)."
            )
        if kwargs.get("output_uri") is not None:
            raise JobSpecError("@task.gpu_batch returns the function's value, not a manifest; drop output_uri=.")
        if kwargs.get("start_from_trigger"):
            # The function and its rendered arguments are staged (blocking S3 writes, the arguments'
            # upstream XComs) before the job can be submitted: that takes a worker.
            raise JobSpecError(
                "@task.gpu_batch cannot start_from_trigger: it stages the function and its arguments from a worker "
                "before submitting. Drop start_from_trigger (the task still defers while the job runs), or use "
                "GpuBatchOperator(start_from_trigger=True) with a command."
            )
        self.staging_prefix = staging_prefix
        self.code = code
        self.max_code_size = max_code_size
        self._results: str | None = None
        super().__init__(python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)
        # What the DAG file passes literally is known now: a set or a DataFrame fails the DAG's import,
        # naming the argument, rather than each run. Upstream XComs are checked once resolved, at execute.
        check_arguments(
            python_callable.__name__,
            [_as_parsed(value) for value in self.op_args],
            {key: _as_parsed(value) for key, value in self.op_kwargs.items()},
        )

    @property
    def _store(self) -> ObjectStore:
        return ObjectStore(self.aws_conn_id, self.region_name)

    def _ship(self, context: Context) -> None:
        """Stage the payload (same call, same bytes, same key) and point the command at it."""
        from airflow_gpu.config import local_staging_default

        local = local_staging_default(airflow_home=True) if self.backend == "local" else None
        prefix = staging_prefix(self.staging_prefix, local_default=local)
        payload = function_payload(
            self.get_python_source(),
            self.python_callable.__name__,
            list(self.op_args),
            dict(self.op_kwargs),
            multiple_outputs=self.multiple_outputs,
        )
        staged = stage(self._store, prefix, "functions", payload, "function.json")
        self._results = result_prefix(prefix, task_identity(context["ti"]).idempotency_key, staged.sha256)
        # The argv of the image's entrypoint; the local backend puts that entrypoint in front itself.
        self.command = ["run-function", "--payload", staged.uri, "--sha256", staged.sha256, "--result", self._results]
        if self.code:
            from airflow_gpu.shipping import ship_code

            bundle = ship_code(self._store, prefix, self.code, self._dag_folder(), self.max_code_size, self.log)
            self.command += ["--code", bundle.uri, "--code-sha256", bundle.sha256]
        endpoint = self._local_s3_endpoint(prefix)
        if endpoint:
            self.command += ["--endpoint-url", endpoint]
        self.log.info("Staged %s() as %s", self.python_callable.__name__, staged.uri)

    def _dag_folder(self) -> str | None:
        """Where a relative ``code=`` is resolved: beside the DAG file, as the DAG's author wrote it."""
        fileloc = getattr(getattr(self, "dag", None), "fileloc", None) if self.has_dag() else None
        return str(Path(fileloc).parent) if fileloc else None

    def _local_s3_endpoint(self, prefix: str) -> str | None:
        """A local job runs on this machine and reaches S3 where this task's connection does (a test or
        demo server); a Batch job uses its own region's S3."""
        if self.backend != "local" or not prefix.startswith("s3://"):
            return None
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).conn_config.get_service_endpoint_url(
            "s3"
        )

    def execute(self, context: Context) -> Any:
        self._check_fields(skip_templates=False)  # a bad job_queue fails before anything is staged
        self._ship(context)
        return super().execute(context)

    def execute_complete(
        self, context: Context, event: Mapping[str, Any] | None = None, reattached: bool = False
    ) -> Any:
        # A new operator object resumes: the command and result prefix are derived again from the
        # same rendered arguments (so the same digest), in case a fresh job must be submitted.
        self._ship(context)
        return super().execute_complete(context, event, reattached)

    def _finish(self, state: JobState, lines: Sequence[str]) -> Any:
        if state.status != SUCCEEDED and self._results:
            try:
                remote = read_error(self._store, self._results, state.job_id)
            except Exception as exc:
                self.log.warning("Could not read the function's error record: %s", exc)
                remote = None
            if remote is not None:
                raise GpuFunctionFailed(state, lines, remote)
        return super()._finish(state, lines)

    def _with_cost(self, result: Any, cost: dict[str, Any]) -> Any:
        """The function's own value is the XCom, untouched: the bill is the task log's last line."""
        return result

    def _result(self, state: JobState) -> Any:
        assert self._results is not None
        try:
            value = read_result(self._store, self._results, state.job_id)
        except ResultMissing as exc:
            raise AirflowException(
                f"Job {state.job_id} SUCCEEDED but the function left {exc}; was the job's image running "
                "airflow-gpu-worker run-function?"
            ) from None
        self.log.info("Job %s SUCCEEDED; %s() returned", state.job_id, self.python_callable.__name__)
        return value


def _as_parsed(value: Any) -> Any:
    """``value`` with every upstream reference (an XComArg, resolved only at run time) put as None."""
    if isinstance(value, ResolveMixin):
        return None
    if isinstance(value, (list, tuple)):
        return [_as_parsed(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_parsed(item) for key, item in value.items()}
    return value


def gpu_batch_task(
    python_callable: Callable | None = None, multiple_outputs: bool | None = None, **kwargs: Any
) -> TaskDecorator:
    """``@task.gpu_batch(...)``: takes GpuBatchOperator's parameters (but ``command``/``output_uri``)
    and ``staging_prefix``, ``code`` and ``max_code_size``."""
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=GpuBatchDecoratedOperator,
        **kwargs,
    )


__all__ = ["GpuBatchDecoratedOperator", "gpu_batch_task"]
