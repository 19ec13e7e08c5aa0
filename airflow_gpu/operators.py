"""GpuBatchOperator: run a GPU job on AWS Batch as an Airflow task, deferred while the GPU works.

execute: JobSpec (checked) -> reattach to this task instance's job, or submit
-> defer to GpuBatchJobTrigger -> execute_complete turns the event into XCom
or an error carrying the reason, exit code and last log lines.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import airflow_gpu.compat  # noqa: F401,I001  first: refuses an Airflow older than the floor with a clear message
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from airflow_gpu.config import default_deferrable
from airflow_gpu.exceptions import GpuJobFailed
from airflow_gpu.jobs.backend import SUCCEEDED, BackendTarget, JobState, check_backend_name
from airflow_gpu.jobs.blocking import BlockingJobs, JobView
from airflow_gpu.jobs.spec import (
    FIELD_CHECKS,
    TAG_CANCELLED,
    JobSpec,
    JobSpecError,
    TaskIdentity,
    check_max_queued,
    check_name,
    check_poll_interval,
    check_retry_attempts,
    check_timeout,
    holds_template,
    is_template,
)
from airflow_gpu.links import BatchJobLink, CloudWatchLogsLink
from airflow_gpu.outputs import ManifestError, ObjectStore, manifest_uri, read_manifest, summarize
from airflow_gpu.triggers import GpuBatchJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

#: XCom key holding the job id from the moment it is known, so a failed deferral can find the job.
JOB_ID_XCOM_KEY = "gpu_batch_job_id"
_TRIGGER_TIMEOUT = "Trigger timeout"  # airflow's TriggerFailureReason.TRIGGER_TIMEOUT


class GpuBatchOperator(BaseOperator):
    """Run a GPU job on AWS Batch, deferring while it queues and runs.

    :param job_queue: Batch job queue name or ARN (required on AWS Batch; the local backend has none).
    :param job_definition: job definition name, ``name:revision`` or ARN (required on AWS Batch; the
        local backend takes a local job definition file here, or nothing).
    :param command: argv handed to the image's entrypoint (``["als", "--input", ...]``), overriding
        the definition's command; never run through a shell. The local backend prepends the same
        entrypoint (``airflow-gpu-worker`` unless told otherwise), so a task runs unchanged on both.
    :param environment: extra environment variables (string values).
    :param gpus: GPUs per job (0-16); submitted as a GPU resource requirement.
    :param vcpus: vCPUs, or None to keep the definition's.
    :param memory_mib: memory in MiB, or None to keep the definition's.
    :param job_name: base of the Batch job name; defaults to ``<dag_id>-<task_id>``. It is
        sanitised to Batch's rules and gets ``-<12 hex>`` appended, a hash of the task
        instance, which is how a retry finds its job.
    :param tags: extra tags; airflow-gpu adds dag id, task id, run id, map index and an
        idempotency key, and propagates all tags to the ECS task.
    :param parameters: Batch parameter substitutions for the job definition.
    :param retry_attempts: Batch attempts (1-10). Spot reclaims (status reason ``Host EC2*``)
        are retried; application errors exit at once.
    :param timeout: attempt duration (timedelta or seconds, at least 60).
    :param max_queued: how long the job may wait for capacity (SUBMITTED through STARTING)
        before it is terminated, with "no GPU capacity" as the reason.
    :param aws_conn_id: Airflow AWS connection (credentials, region, ``endpoint_url`` extras).
    :param region_name: overrides the connection's region.
    :param poll_interval: seconds between status polls.
    :param deferrable: free the worker slot while the job runs. Defaults to True unless
        ``[operators] default_deferrable`` is explicitly set.
    :param reattach: before submitting, look for this task instance's job: a live one is
        waited on, a SUCCEEDED one is reused, a FAILED one is submitted anew. A worker
        crash and retry thus never starts a second GPU job. After a clear, a new try may
        reattach before the earlier try's trigger has terminated the job (its ``on_kill``);
        when that termination arrives, the new try submits a fresh job instead of failing.
    :param stream_logs: relay the job's log lines into the task log while it runs.
    :param backend: job system: ``"aws_batch"`` (default), ``"local"`` (a process on this
        machine, for demos and development; see :mod:`airflow_gpu.jobs.local.backend`) or another
        registered backend. Templated, so a DAG param can choose it.
    :param output_uri: where the job writes its outputs (the worker's ``--output``). When set,
        success means the job also committed ``manifest.json`` there: its summary is added to
        the XCom under ``"manifest"``, and a job that ended SUCCEEDED without one fails the task.

    Returns (XCom) ``{"job_id", "job_name", "status", "attempts", "exit_code", "log_stream", "log_group"}``,
    plus ``"manifest"`` (run id, where the outputs are, counts, precision@k) with ``output_uri``.
    """

    template_fields: Sequence[str] = (
        "job_queue",
        "job_definition",
        "command",
        "environment",
        "gpus",
        "vcpus",
        "memory_mib",
        "job_name",
        "tags",
        "parameters",
        "aws_conn_id",
        "region_name",
        "backend",
        "poll_interval",
        "output_uri",
    )
    template_fields_renderers = {"command": "json", "environment": "json", "tags": "json", "parameters": "json"}
    operator_extra_links = (BatchJobLink(), CloudWatchLogsLink())
    ui_color = "#76b900"

    def __init__(
        self,
        *,
        job_queue: str | None = None,
        job_definition: str | None = None,
        command: Sequence[str] | None = None,
        environment: Mapping[str, str] | None = None,
        gpus: int = 1,
        vcpus: int | None = None,
        memory_mib: int | None = None,
        job_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        parameters: Mapping[str, str] | None = None,
        retry_attempts: int = 3,
        timeout: timedelta | float | None = None,
        max_queued: timedelta | float | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        poll_interval: float = 30,
        deferrable: bool | None = None,
        reattach: bool = True,
        stream_logs: bool = True,
        backend: str = "aws_batch",
        output_uri: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_queue = job_queue
        self.job_definition = job_definition
        self.command = command
        self.environment = environment
        self.gpus = gpus
        self.vcpus = vcpus
        self.memory_mib = memory_mib
        self.job_name = job_name
        self.tags = tags
        self.parameters = parameters
        self.retry_attempts = check_retry_attempts(retry_attempts)
        self.timeout = check_timeout(timeout)
        self.max_queued = check_max_queued(max_queued)
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.poll_interval = poll_interval if is_template(poll_interval) else check_poll_interval(poll_interval)
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        self.reattach = bool(reattach)
        self.stream_logs = bool(stream_logs)
        self.backend = backend if is_template(backend) else check_backend_name(backend)
        self.output_uri = output_uri
        self._check_fields(skip_templates=True)
        self._job_id: str | None = None
        self._reattached = False
        self._job_url: str | None = None
        self._log_url: str | None = None
        self._try_began_here = False

    # -- checks -----------------------------------------------------------------------------------

    def _check_fields(self, *, skip_templates: bool) -> None:
        """Check the templatable parameters: at DAG parse time those that are plain values,
        at run time (after rendering) all of them -- always before any call to a backend."""
        for field, check in FIELD_CHECKS.items():
            value = getattr(self, field)
            if skip_templates and holds_template(value):
                continue
            if field in ("job_queue", "job_definition") and value is None:
                self._check_needed(field, skip_templates=skip_templates)
                continue
            check(value)
        if not skip_templates:
            self.backend = check_backend_name(self.backend)
            poll = self.poll_interval
            if isinstance(poll, str):  # a rendered template such as "{{ params.poll_interval }}"
                try:
                    poll = float(poll)
                except ValueError:
                    raise JobSpecError(f"poll_interval must be a number of seconds, got {self.poll_interval!r}.") from None
            self.poll_interval = check_poll_interval(poll)
        if self.output_uri is not None and not (skip_templates and is_template(self.output_uri)):
            check_name("output_uri", self.output_uri, "Pass the job's output prefix (s3://bucket/prefix/ or a folder), or None.")

    def _check_needed(self, field: str, *, skip_templates: bool) -> None:
        """A missing job_queue or job_definition is fine for a backend without queues (local) only."""
        if skip_templates and is_template(self.backend):
            return  # known once rendered
        from airflow_gpu.jobs.backend import backend_class

        if backend_class(check_backend_name(self.backend)).needs_queue:
            raise JobSpecError(
                f"{field} is required with backend={self.backend!r}: pass the Batch "
                f"{field.replace('_', ' ')} name or ARN (airflow-gpu batch-setup prints both), or use backend='local'."
            )

    def _spec(self, identity: TaskIdentity) -> JobSpec:
        return JobSpec.build(
            identity=identity,
            job_queue=self.job_queue,
            job_definition=self.job_definition,
            job_name=self.job_name,
            command=self.command,
            environment=self.environment,
            gpus=self.gpus,
            vcpus=self.vcpus,
            memory_mib=self.memory_mib,
            tags=self.tags,
            parameters=self.parameters,
            retry_attempts=self.retry_attempts,
            timeout=self.timeout,
        )

    @property
    def jobs(self) -> BlockingJobs:
        """The I/O of this task, one call per step (built per use: ``backend`` is templated)."""
        return BlockingJobs(BackendTarget(backend=self.backend, conn_id=self.aws_conn_id, region_name=self.region_name), self.log)

    def _seen(self, view: JobView) -> JobView:
        """Keep the job's id and web pages for the extra links."""
        self._job_id = view.state.job_id
        self._job_url = view.job_url or self._job_url
        self._log_url = view.log_url or self._log_url
        return view

    # -- execute ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any] | None:
        self._try_began_here = True  # read by the links: no earlier run of this try saved one
        self._check_fields(skip_templates=False)
        view = self._seen(self.jobs.submit_or_reattach(self._spec(_identity(context)), reattach=self.reattach))
        state = view.state
        context["ti"].xcom_push(key=JOB_ID_XCOM_KEY, value=state.job_id)
        if state.status == SUCCEEDED:
            self.log.info("Reusing the result of job %s, which already SUCCEEDED for this task instance", state.job_id)
            return self._result(state)
        if not self.deferrable:
            final = self._seen(self.jobs.wait(state.job_id, poll_interval=self.poll_interval, max_queued=self.max_queued,
                                               who=f"Airflow task {self.dag_id}.{self.task_id}"))
            return self._finish(final.state, final.log_lines)
        self._defer(state.job_id, reattached=view.reattached)
        return None  # not reached: defer raises

    def _defer(self, job_id: str, *, reattached: bool) -> None:
        self.defer(
            trigger=GpuBatchJobTrigger(
                job_id,
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                poll_interval=self.poll_interval,
                max_queued=self.max_queued,
                stream_logs=self.stream_logs,
                backend=self.backend,
            ),
            method_name="execute_complete",
            kwargs={"reattached": True} if reattached else None,
            timeout=self.execution_timeout,
        )

    def execute_complete(
        self, context: Context, event: Mapping[str, Any] | None = None, reattached: bool = False
    ) -> dict[str, Any]:
        """Resume after the trigger fired. Idempotent: a redelivered event gives the same outcome."""
        if not event or "job_id" not in event or "status" not in event:
            raise AirflowException(f"The GPU job trigger resumed the task without a job event ({event!r}).")
        state = JobState.from_event(event)
        if reattached and state.status != SUCCEEDED and self._stopped_for_an_earlier_try(state):
            # This try reattached to a job that an earlier try had deferred on, and that try's
            # trigger then terminated it (its on_kill, when the task was cleared or marked): the
            # clear asked for a fresh run, so submit one instead of failing.
            self.log.warning(
                "Job %s, which this try reattached to, was stopped for an earlier try (%s); submitting a new job",
                state.job_id, state.status_reason,
            )
            fresh = self._seen(self.jobs.submit_or_reattach(self._spec(_identity(context)), reattach=False)).state
            context["ti"].xcom_push(key=JOB_ID_XCOM_KEY, value=fresh.job_id)
            self._defer(fresh.job_id, reattached=False)
        self._seen(JobView(state, event.get("job_url"), event.get("log_url")))
        lines: Sequence[str] = ()
        if state.status != SUCCEEDED:
            lines = self._seen(self.jobs.tail(state)).log_lines
        return self._finish(state, lines)

    def _stopped_for_an_earlier_try(self, state: JobState) -> bool:
        """Did airflow-gpu itself terminate the job (it carries the cancelled mark), and not for
        max_queued (which this try's own trigger enforces)? Then an earlier try's on_kill did."""
        if state.stopped_for is not None:  # this try's own trigger stopped it (max_queued, never starts)
            return False
        try:
            current = self.jobs.describe(state.job_id, timeout=60)
        except Exception as exc:
            self.log.warning("Could not describe job %s to tell why it stopped: %s", state.job_id, exc)
            return False
        return current is not None and TAG_CANCELLED in current.tags

    def _finish(self, state: JobState, lines: Sequence[str]) -> dict[str, Any]:
        if state.status != SUCCEEDED:
            raise GpuJobFailed(state, lines)
        self.log.info("Job %s SUCCEEDED after %d attempt(s)", state.job_id, state.attempts)
        return self._result(state)

    def _result(self, state: JobState) -> dict[str, Any]:
        result = {
            "job_id": state.job_id,
            "job_name": state.name,
            "status": state.status,
            "attempts": state.attempts,
            "exit_code": state.exit_code,
            "log_stream": state.log_stream,
            "log_group": state.log_group,
        }
        if self.output_uri:
            result["manifest"] = self._manifest_summary(state)
        return result

    def _manifest_summary(self, state: JobState) -> dict[str, Any]:
        """Read the manifest the job committed; a success without one is no success for its readers."""
        store = ObjectStore(self.aws_conn_id, self.region_name)
        try:
            manifest = read_manifest(store, self.output_uri)
        except ManifestError as exc:
            raise AirflowException(f"Job {state.job_id} SUCCEEDED but its output is unreadable: {exc}") from exc
        if manifest is None:
            raise AirflowException(
                f"Job {state.job_id} SUCCEEDED but committed no manifest at {manifest_uri(self.output_uri)}; readers "
                f"treat the output as absent. Check that the job's command writes to output_uri={self.output_uri!r}."
            )
        summary = summarize(manifest, self.output_uri)
        self.log.info("Job %s committed run %s at %s", state.job_id, summary["run_id"], summary["manifest_uri"])
        return summary

    # -- cancellation -----------------------------------------------------------------------------

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Airflow resumes with ``__fail__`` when the deferral timed out or the trigger failed.
        The task is about to fail, so the GPU job is terminated first: a failed task leaves no job running."""
        if next_method == "__fail__":
            self._terminate_after_failed_deferral(context, next_kwargs or {})
        return super().resume_execution(next_method, next_kwargs, context)

    def _terminate_after_failed_deferral(self, context: Context, next_kwargs: Mapping[str, Any]) -> None:
        identity = _identity(context)
        error = next_kwargs.get("error")
        if getattr(error, "value", error) == _TRIGGER_TIMEOUT:
            why = f"hit its execution_timeout ({self.execution_timeout}) while waiting for the job"
        else:
            why = f"failed while waiting for the job ({getattr(error, 'value', error) or 'trigger failure'})"
        reason = f"Airflow task {identity.describe()} {why}"
        ti = context["ti"]
        job_id = ti.xcom_pull(task_ids=ti.task_id, key=JOB_ID_XCOM_KEY, map_indexes=ti.map_index)
        try:
            # Without the XCom, the job is found by its idempotency key.
            terminated = self.jobs.terminate(job_id, reason, find=None if job_id else self._spec(identity), timeout=120)
        except Exception as exc:
            self.log.error("Could not terminate the GPU job after the deferral failed: %s", exc)
            return
        if terminated:
            self.log.warning("Terminated job %s: %s", terminated, reason)

    def on_kill(self) -> None:
        """The worker is being stopped while it waits (deferrable=False) or submits: stop the job too."""
        job_id = self._job_id
        if not job_id:
            return
        reason = f"Airflow task {self.dag_id}.{self.task_id} was killed"
        try:
            self.jobs.terminate(job_id, reason, in_thread=True, timeout=60)
        except Exception as exc:
            self.log.error("Could not terminate job %s: %s", job_id, exc)


def _identity(context: Context) -> TaskIdentity:
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    return TaskIdentity(ti.dag_id, ti.task_id, ti.run_id, -1 if map_index is None else int(map_index))


__all__ = ["GpuBatchOperator", "JOB_ID_XCOM_KEY"]
