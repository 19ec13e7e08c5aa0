"""GpuBatchOperator: run a GPU job on AWS Batch as an Airflow task, deferred while the GPU works.

execute: JobSpec (checked) -> reattach to this task instance's job, or submit
-> defer to GpuBatchJobTrigger -> execute_complete turns the event into XCom
or an error carrying the reason, exit code and last log lines.
"""

from __future__ import annotations

import configparser
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import airflow_gpu.compat  # noqa: F401,I001  first: refuses an Airflow older than the floor with a clear message
from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowException

from airflow_gpu.jobs.backend import SUCCEEDED, BackendTarget, JobBackend, JobState, check_backend_name
from airflow_gpu.jobs.blocking import run_blocking
from airflow_gpu.jobs.spec import (
    TAG_CANCELLED,
    JobSpec,
    JobSpecError,
    TaskIdentity,
    check_command,
    check_environment,
    check_gpus,
    check_max_queued,
    check_memory_mib,
    check_name,
    check_parameters,
    check_poll_interval,
    check_retry_attempts,
    check_tags,
    check_timeout,
    check_vcpus,
    is_template,
)
from airflow_gpu.jobs.watcher import JobWatcher, follow_job
from airflow_gpu.manifest import ManifestError, manifest_uri, read_manifest, summarize
from airflow_gpu.triggers import GpuBatchJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

#: XCom key holding the job id from the moment it is known, so a failed deferral can find the job.
JOB_ID_XCOM_KEY = "gpu_batch_job_id"
#: How follow_job's max_queued reason starts (jobs.watcher.queued_too_long_reason): that stop is this try's own.
QUEUED_TOO_LONG_PREFIX = "no GPU capacity for"
#: Log lines quoted in the error of a failed job.
TAIL_LINES = 20
_TRIGGER_TIMEOUT = "Trigger timeout"  # airflow's TriggerFailureReason.TRIGGER_TIMEOUT


class GpuJobFailed(AirflowException):
    """The GPU job did not succeed. The message names the job, its reason, exit code and last log lines."""

    def __init__(self, state: JobState, log_lines: Sequence[str] = ()) -> None:
        self.state = state
        self.log_lines = list(log_lines)
        name = f" ({state.name})" if state.name else ""
        message = (
            f"GPU job {state.job_id}{name} ended {state.status}: {state.status_reason or 'no reason given'}; "
            f"exit code {state.exit_code if state.exit_code is not None else 'unknown'}; "
            f"{state.attempts} attempt(s)."
        )
        if self.log_lines:
            message += "\nLast log lines:\n" + "\n".join(f"  {line}" for line in self.log_lines)
        elif state.log_stream:
            message += f"\nLog stream: {state.log_group}/{state.log_stream}"
        super().__init__(message)


def default_deferrable() -> bool:
    """True, unless the deployment deliberately sets ``[operators] default_deferrable``.

    Airflow ships that option as "false", and ``airflow db migrate`` writes every
    default into a generated airflow.cfg, so neither ``conf.getboolean(...,
    fallback=True)`` nor "the file has the option" can tell a choice from the
    default. A deliberate setting is one made in the environment
    (``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE``, ``_CMD``, ``_SECRET``) or a file
    value that differs from Airflow's default; otherwise a GPU job defers.
    """
    from airflow.sdk import conf

    section, key = "operators", "default_deferrable"
    if any(os.environ.get(f"AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE{s}") for s in ("", "_CMD", "_SECRET")):
        return conf.getboolean(section, key, fallback=True)
    try:
        in_file = configparser.ConfigParser.get(conf, section, key, raw=True, fallback=None)
        shipped = conf.get_default_value(section, key)
    except Exception:
        return True
    if in_file is not None and str(in_file).strip().lower() != str(shipped).strip().lower():
        return conf.getboolean(section, key, fallback=True)
    return True


class _JobLink(BaseOperatorLink):
    """Read the URL from the operator (set while it ran) or from the XCom Airflow stored for this link."""

    attr: ClassVar[str]

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = getattr(operator, self.attr, None)
        if url:
            return url
        try:
            from airflow.sdk import XCom

            return XCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""
        except Exception:  # no XCom access outside a task (e.g. in tests)
            return ""


class BatchJobLink(_JobLink):
    """The job's page in the AWS Batch console."""

    name = "AWS Batch job"
    attr = "_job_url"


class CloudWatchLogsLink(_JobLink):
    """The job's log stream in the CloudWatch console."""

    name = "CloudWatch log stream"
    attr = "_log_url"


class GpuBatchOperator(BaseOperator):
    """Run a GPU job on AWS Batch, deferring while it queues and runs.

    :param job_queue: Batch job queue name or ARN.
    :param job_definition: job definition name, ``name:revision`` or ARN.
    :param command: argv list overriding the definition's command; never run through a shell.
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
        machine, for demos and development; see :mod:`airflow_gpu.jobs.local`) or another
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
        job_queue: str,
        job_definition: str,
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

    # -- checks -----------------------------------------------------------------------------------

    def _check_fields(self, *, skip_templates: bool) -> None:
        """Check the templatable parameters: at DAG parse time those that are plain values,
        at run time (after rendering) all of them -- always before any call to a backend."""
        checks = {
            "job_queue": lambda v: check_name("job_queue", v, "Pass the Batch job queue name or ARN."),
            "job_definition": lambda v: check_name("job_definition", v, "Pass the job definition name or ARN."),
            "command": check_command,
            "environment": check_environment,
            "gpus": check_gpus,
            "vcpus": check_vcpus,
            "memory_mib": check_memory_mib,
            "tags": check_tags,
            "parameters": check_parameters,
        }
        for field, check in checks.items():
            value = getattr(self, field)
            if skip_templates and _holds_template(value):
                continue
            check(value)
        if self.job_name is not None and not (skip_templates and is_template(self.job_name)):
            check_name("job_name", self.job_name, "Pass a name or leave it out to derive one from dag and task.")
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
    def target(self) -> BackendTarget:
        return BackendTarget(backend=self.backend, conn_id=self.aws_conn_id, region_name=self.region_name)

    # -- execute ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any] | None:
        self._check_fields(skip_templates=False)
        spec = self._spec(_identity(context))
        state = run_blocking(lambda: self._submit_or_reattach(spec))
        self._job_id = state.job_id
        context["ti"].xcom_push(key=JOB_ID_XCOM_KEY, value=state.job_id)
        if state.status == SUCCEEDED:
            self.log.info("Reusing the result of job %s, which already SUCCEEDED for this task instance", state.job_id)
            return self._result(state)
        if not self.deferrable:
            final, lines = run_blocking(lambda: self._wait_here(state.job_id))
            return self._finish(final, lines)
        self._defer(state.job_id, reattached=self._reattached)
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

    async def _submit_or_reattach(self, spec: JobSpec, *, reattach: bool | None = None) -> JobState:
        self._reattached = False
        async with JobWatcher.shared(self.target).backend() as backend:
            state = None
            if self.reattach if reattach is None else reattach:
                found = await backend.find(spec)
                state = next((s for s in found if s.is_live), None) or next(
                    (s for s in found if s.status == SUCCEEDED), None
                )
                if state is not None and state.is_live:
                    self._reattached = True
                    self.log.info("Reattaching to job %s (%s), already %s for this task instance", state.job_id, spec.name, state.status)
                elif found:
                    self.log.info("Earlier jobs for this task instance failed; submitting a new one")
            if state is None:
                state = await backend.submit(spec)
                self.log.info(
                    "Submitted job %s (%s) to %s, queue %s, %d GPU(s)", state.job_id, spec.name, backend.location, spec.queue, spec.gpus
                )
            self._set_urls(backend, state)
            return state

    async def _wait_here(self, job_id: str) -> tuple[JobState, list[str]]:
        """The blocking path: the same watcher and follow logic as the trigger, in this worker."""
        watcher = JobWatcher.shared(self.target)
        async with watcher.watch(job_id, poll_interval=self.poll_interval, max_queued=self.max_queued) as watch:
            final = await follow_job(watch, on_change=lambda s: self.log.info("Job %s is %s", s.job_id, s.status))
        async with watcher.backend() as backend:
            self._set_urls(backend, final)
            lines = [] if final.status == SUCCEEDED else await self._tail(backend, final)
        return final, lines

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
            fresh = run_blocking(lambda: self._submit_or_reattach(self._spec(_identity(context)), reattach=False))
            self._job_id = fresh.job_id
            context["ti"].xcom_push(key=JOB_ID_XCOM_KEY, value=fresh.job_id)
            self._defer(fresh.job_id, reattached=False)
        self._job_id = state.job_id
        self._job_url = event.get("job_url") or self._job_url
        self._log_url = event.get("log_url") or self._log_url
        lines: list[str] = []
        if state.status != SUCCEEDED:
            lines = self._tail_blocking(state)
        return self._finish(state, lines)

    def _stopped_for_an_earlier_try(self, state: JobState) -> bool:
        """Did airflow-gpu itself terminate the job (it carries the cancelled mark), and not for
        max_queued (which this try's own trigger enforces)? Then an earlier try's on_kill did."""
        if state.status_reason and state.status_reason.startswith(QUEUED_TOO_LONG_PREFIX):
            return False

        async def describe() -> JobState | None:
            async with JobWatcher.shared(self.target).backend() as backend:
                found = await backend.describe([state.job_id])
                return found[0] if found else None

        try:
            current = run_blocking(describe, timeout=60)
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
        from airflow_gpu.objects import ObjectStore

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

    # -- logs and links ---------------------------------------------------------------------------

    def _set_urls(self, backend: JobBackend, state: JobState) -> None:
        self._job_url = backend.job_url(state.job_id) or self._job_url
        self._log_url = backend.log_url(state) or self._log_url

    async def _tail(self, backend: JobBackend, state: JobState) -> list[str]:
        try:
            return (await backend.read_logs(state, tail=TAIL_LINES)).lines
        except Exception as exc:  # the failure matters more than its log
            self.log.warning("Could not read the last log lines of job %s: %s", state.job_id, exc)
            return []

    def _tail_blocking(self, state: JobState) -> list[str]:
        if not state.log_stream:
            return []

        async def tail() -> list[str]:
            async with JobWatcher.shared(self.target).backend() as backend:
                self._set_urls(backend, state)
                return await self._tail(backend, state)

        try:
            return run_blocking(tail, timeout=60)
        except Exception as exc:
            self.log.warning("Could not read the last log lines of job %s: %s", state.job_id, exc)
            return []

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

        async def terminate() -> str | None:
            async with JobWatcher.shared(self.target).backend() as backend:
                target_id = job_id
                if not target_id:  # the XCom is gone: find the job by its idempotency key
                    live = [s for s in await backend.find(self._spec(identity)) if s.is_live]
                    target_id = live[0].job_id if live else None
                if target_id:
                    await backend.terminate(target_id, reason)
                return target_id

        try:
            terminated = run_blocking(terminate, timeout=120)
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

        async def terminate() -> None:
            async with JobWatcher.shared(self.target).backend() as backend:
                await backend.terminate(job_id, reason)

        try:
            run_blocking(terminate, in_thread=True, timeout=60)
        except Exception as exc:
            self.log.error("Could not terminate job %s: %s", job_id, exc)


def _identity(context: Context) -> TaskIdentity:
    ti = context["ti"]
    map_index = getattr(ti, "map_index", -1)
    return TaskIdentity(ti.dag_id, ti.task_id, ti.run_id, -1 if map_index is None else int(map_index))


def _holds_template(value: Any) -> bool:
    if is_template(value):
        return True
    if isinstance(value, Mapping):
        return any(is_template(k) or is_template(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(is_template(v) for v in value)
    return False


__all__ = ["GpuBatchOperator", "BatchJobLink", "CloudWatchLogsLink", "GpuJobFailed", "JobSpecError", "JOB_ID_XCOM_KEY"]
