"""GpuBatchOperator: run a GPU job on AWS Batch as an Airflow task, deferred while the GPU works.

execute: JobSpec (checked) -> reattach to this task instance's job, or submit
-> defer to GpuBatchJobTrigger -> execute_complete turns the event into XCom
or an error carrying the reason, exit code and last log lines.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

import airflow_gpu.compat  # noqa: F401,I001  first: refuses an Airflow older than the floor with a clear message
from airflow_gpu.committed_outputs import ManifestError, asset_extra, job_output_summary, manifest_uri
from airflow_gpu.config import default_deferrable
from airflow_gpu.exceptions import GpuJobFailed
from airflow_gpu.job_request import JobRequest, check_job_fields, default_poll_interval, job_spec
from airflow_gpu.jobs.backend import SUCCEEDED, BackendTarget, JobState, check_backend_name
from airflow_gpu.jobs.billing import COST_KEY, job_bill
from airflow_gpu.jobs.blocking import BlockingJobs, JobView
from airflow_gpu.jobs.spec import TAG_CANCELLED, JobSpec, TaskIdentity, check_poll_interval, is_template
from airflow_gpu.links import BatchJobLink, CloudWatchLogsLink
from airflow_gpu.object_store import ObjectStore
from airflow_gpu.task_job import JOB_ID_XCOM_KEY, job_result, task_identity, try_number
from airflow_gpu.triggers import GpuBatchJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

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
    :param share_identifier: the fair-share identifier the job's usage counts against (Batch's
        ``shareIdentifier``): required by a queue with a fair-share scheduling policy, refused by
        any other. 1 to 255 letters and digits.
    :param scheduling_priority: the job's priority within its share (0-9999, higher starts first;
        Batch's ``schedulingPriorityOverride``), or None to keep the job definition's.
    :param retry_attempts: Batch attempts (1-10). Spot reclaims (status reason ``Host EC2*``)
        are retried; application errors exit at once.
    :param timeout: attempt duration (timedelta or seconds, at least 60).
    :param max_queued: how long the job may wait for capacity (SUBMITTED through STARTING)
        before it is terminated, with "no GPU capacity" as the reason.
    :param aws_conn_id: Airflow AWS connection (credentials, region, ``endpoint_url`` extras).
    :param region_name: overrides the connection's region.
    :param poll_interval: seconds between status polls (default: 2 with backend="local", else 30).
    :param deferrable: free the worker slot while the job runs. Defaults to True unless
        ``[operators] default_deferrable`` is explicitly set.
    :param reattach: before submitting, look for this task instance's job: a live one is
        waited on, a SUCCEEDED one is reused, a FAILED one is submitted anew. A worker
        crash and retry thus never starts a second GPU job. After a clear, a new try may
        reattach before the earlier try's trigger has terminated the job (its ``on_kill``);
        when that termination arrives, the new try submits a fresh job instead of failing.
        Whatever ``reattach``, a live job an earlier try deferred on (a clear's) is terminated
        and never reattached to (docs/operator.md, "When a deferred task is cancelled").
    :param stream_logs: relay the job's log lines into the task log while it runs.
    :param backend: job system: ``"aws_batch"`` (default), ``"local"`` (a process on this
        machine, for demos and development; see :mod:`airflow_gpu.jobs.local.backend`) or another
        registered backend. Templated, so a DAG param can choose it.
    :param output_uri: where the job writes its outputs (the worker's ``--output``). When set,
        success means the job also committed ``manifest.json`` there: its summary is added to
        the XCom under ``"manifest"``, and a job that ended SUCCEEDED without one fails the task.
        Every :class:`~airflow.sdk.Asset` in ``outlets`` then gets an event whose extra is that
        summary (run id, where, counts, precision@k): see docs/operator.md, "Assets".
    :param start_from_trigger: submit from the triggerer instead of a worker (templated fields are
        rendered there), and, when the job succeeds and the task has no ``outlets``, end there too:
        the task never takes a worker slot. A failed job, or a task with outlets, resumes on a
        worker to raise the error or emit the Asset events. Needs ``deferrable=True`` and
        ``reattach=True``, and fields Airflow can render without a worker (no XComArg). Mapped
        tasks start on a worker (Airflow 3.3 does not start them from the triggerer).

    Returns (XCom) ``{"job_id", "job_name", "status", "attempts", "exit_code", "log_stream", "log_group"}``,
    plus ``"manifest"`` (run id, where the outputs are, counts, precision@k) with ``output_uri``, and
    ``"cost"`` (wall time, queue wait, run time, instance type and market, GPU-hours, estimated cost and
    the share of the instance it was priced at; see docs/cost.md).
    """

    # The job request's fields are declared once, in airflow_gpu/job_request.py; the signature below
    # repeats them because it is the public API (tests/unit/test_job_request.py holds the two together).
    template_fields: Sequence[str] = JobRequest.template_fields()
    # __init__ sets every field of the request; these are the ones the operator's own code reads.
    aws_conn_id: str | None
    region_name: str | None
    max_queued: float | None
    stream_logs: bool
    output_uri: str | None
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
        share_identifier: str | None = None,
        scheduling_priority: int | None = None,
        retry_attempts: int = 3,
        timeout: timedelta | float | None = None,
        max_queued: timedelta | float | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        poll_interval: float | None = None,
        deferrable: bool | None = None,
        reattach: bool = True,
        stream_logs: bool = True,
        backend: str = "aws_batch",
        output_uri: str | None = None,
        start_from_trigger: bool = False,
        **kwargs: Any,
    ) -> None:
        given = locals()  # first: the parameters, by name
        super().__init__(**kwargs)
        for name, value in JobRequest.checked_at_init(given).items():
            setattr(self, name, value)
        if poll_interval is None and not is_template(backend):
            poll_interval = default_poll_interval(backend)  # else decided once the backend is rendered
        self.poll_interval = (
            poll_interval if poll_interval is None or is_template(poll_interval) else check_poll_interval(poll_interval)
        )
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        self.reattach = bool(reattach)
        self.backend = backend if is_template(backend) else check_backend_name(backend)
        self._check_fields(skip_templates=True)
        if start_from_trigger:
            from airflow_gpu.triggers.start import start_trigger_args

            self.start_trigger_args = start_trigger_args(self)  # refuses, naming why, what the triggerer cannot do
            self.start_from_trigger = True
        self._job_id: str | None = None
        self._reattached = False
        self._job_url: str | None = None
        self._log_url: str | None = None
        self._try_began_here = False
        self._read_by_trigger: Mapping[str, Any] | None = None
        self._reused = False  # this try found its job already SUCCEEDED for an earlier one (billed as reused)

    # -- checks -----------------------------------------------------------------------------------

    def _check_fields(self, *, skip_templates: bool) -> None:
        check_job_fields(self, skip_templates=skip_templates)

    def _spec(self, identity: TaskIdentity) -> JobSpec:
        return job_spec(self, identity)

    @property
    def jobs(self) -> BlockingJobs:
        """The I/O of this task, one call per step (built per use: ``backend`` is templated)."""
        return BlockingJobs(
            BackendTarget(backend=self.backend, conn_id=self.aws_conn_id, region_name=self.region_name), self.log
        )

    def _seen(self, view: JobView) -> JobView:
        """Keep the job's id and web pages for the extra links."""
        self._job_id = view.state.job_id
        self._job_url = view.job_url or self._job_url
        self._log_url = view.log_url or self._log_url
        return view

    # -- execute ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any] | None:
        self._try_began_here = True  # read by the links: no earlier run of this try saved one
        if self.start_from_trigger:
            self.log.warning(
                "start_from_trigger=True, but Airflow started this task on a worker (it does so for mapped tasks): "
                "submitting from here"
            )
        self._check_fields(skip_templates=False)
        this_try = try_number(context["ti"])
        # A deferring try tags its job with its number, so a later try knows a clear or a mark ended this one.
        view = self._seen(
            self.jobs.submit_or_reattach(
                self._spec(task_identity(context["ti"])),
                reattach=self.reattach,
                try_number=this_try,
                claim_for_deferral=self.deferrable,
            )
        )
        state = view.state
        context["ti"].xcom_push(key=JOB_ID_XCOM_KEY, value=state.job_id)
        if state.status == SUCCEEDED and view.earlier:
            self.log.info("Reusing the result of job %s, which already SUCCEEDED for this task instance", state.job_id)
            self._reused = True
            return self._announce(context, self._finish(state, ()))
        # A job submitted just now may have ended already (a fast local job): it is followed all the
        # same, so its output reaches this task's log.
        if not self.deferrable:
            final = self._seen(
                self.jobs.wait(
                    state.job_id,
                    poll_interval=self._poll_seconds,
                    max_queued=self.max_queued,
                    who=f"Airflow task {self.dag_id}.{self.task_id}",
                )
            )
            return self._announce(context, self._finish(final.state, final.log_lines))
        self._defer(state.job_id, reattached=view.reattached)
        return None  # not reached: defer raises

    @property
    def _poll_seconds(self) -> float:
        """The poll interval, resolved by check_job_fields before anything is submitted."""
        assert self.poll_interval is not None and not isinstance(self.poll_interval, str)
        return float(self.poll_interval)

    def _defer(self, job_id: str, *, reattached: bool) -> None:
        self.defer(
            trigger=GpuBatchJobTrigger(
                job_id,
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                poll_interval=self._poll_seconds,
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
        reattached = reattached or bool(event.get("reattached"))  # from the triggerer's own submit (start_from_trigger)
        if reattached and state.status != SUCCEEDED and self._stopped_for_an_earlier_try(state):
            # This try reattached to a job that an earlier try had deferred on, and that try's
            # trigger then terminated it (its on_kill, when the task was cleared or marked): the
            # clear asked for a fresh run, so submit one instead of failing.
            self.log.warning(
                "Job %s, which this try reattached to, was stopped for an earlier try (%s); submitting a new job",
                state.job_id,
                state.status_reason,
            )
            fresh = self._seen(
                self.jobs.submit_or_reattach(
                    self._spec(task_identity(context["ti"])),
                    reattach=False,
                    try_number=try_number(context["ti"]),
                    claim_for_deferral=True,
                )
            ).state
            context["ti"].xcom_push(key=JOB_ID_XCOM_KEY, value=fresh.job_id)
            self._defer(fresh.job_id, reattached=False)
        self._seen(JobView(state, event.get("job_url"), event.get("log_url")))
        lines: Sequence[str] = ()
        if state.status != SUCCEEDED:
            lines = self._seen(self.jobs.tail(state)).log_lines
        self._read_by_trigger = event.get("manifest")
        self._reused = bool(event.get("reused"))  # the start trigger found it SUCCEEDED already
        return self._announce(context, self._finish(state, lines))

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
            job_bill(self.jobs, state, self.log)
            raise GpuJobFailed(state, lines)
        if not self._reused:
            self.log.info("Job %s SUCCEEDED after %d attempt(s)", state.job_id, state.attempts)
        try:
            result = self._result(state)
        finally:  # also when the manifest is missing: the job ran, and cost what it cost
            # last: the task log's closing line for the job
            cost = job_bill(self.jobs, state, self.log, reused=self._reused)
        return self._with_cost(result, cost)

    def _with_cost(self, result: dict[str, Any], cost: dict[str, Any]) -> Any:
        """The XCom value: the job's facts with its bill."""
        result[COST_KEY] = cost
        return result

    def _result(self, state: JobState) -> dict[str, Any]:
        result = job_result(state)
        if self.output_uri:
            # The summary the trigger already read (start_from_trigger), else read here.
            result["manifest"] = dict(self._read_by_trigger or {}) or self._manifest_summary(state)
        return result

    def _manifest_summary(self, state: JobState) -> dict[str, Any]:
        """Read the manifest the job committed; a success without one is no success for its readers."""
        assert self.output_uri  # called only for a task with an output (see _result)
        store = ObjectStore(self.aws_conn_id, self.region_name)
        try:
            summary = job_output_summary(store.read(manifest_uri(self.output_uri)), self.output_uri, state.job_id)
        except ManifestError as exc:
            raise AirflowException(str(exc)) from exc
        self.log.info("Job %s committed run %s at %s", state.job_id, summary["run_id"], summary["manifest_uri"])
        return summary

    def _announce(self, context: Context, result: Any) -> Any:
        """Give every Asset in ``outlets`` the committed output's summary as its event's extra.

        Airflow emits the events when the task succeeds on a worker (a task ending on the
        triggerer emits none, which is why a task with outlets resumes on a worker)."""
        summary = result.get("manifest") if self.output_uri and isinstance(result, Mapping) else None
        if not summary:
            return result
        from airflow.sdk import Asset

        extra = asset_extra(summary)
        if result.get(COST_KEY):
            extra[COST_KEY] = result[COST_KEY]
        for outlet in self.outlets or ():
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = extra
                self.log.info("Asset %s: event for run %s (%s)", outlet.uri, extra["run_id"], extra["manifest_uri"])
        return result

    # -- cancellation -----------------------------------------------------------------------------

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Airflow resumes with ``__fail__`` when the deferral timed out or the trigger failed.
        The task is about to fail, so the GPU job is terminated first: a failed task leaves no job running."""
        if next_method == "__fail__":
            self._terminate_after_failed_deferral(context, next_kwargs or {})
        return super().resume_execution(next_method, next_kwargs, context)

    def _terminate_after_failed_deferral(self, context: Context, next_kwargs: Mapping[str, Any]) -> None:
        identity = task_identity(context["ti"])
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


__all__ = ["GpuBatchOperator", "JOB_ID_XCOM_KEY", "check_job_fields", "job_result", "job_spec"]
