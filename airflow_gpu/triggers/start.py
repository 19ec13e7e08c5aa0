"""Start and end a GPU task on the triggerer (``GpuBatchOperator(start_from_trigger=True)``, Airflow 3.3+).

The scheduler defers such a task straight to :class:`GpuBatchStartTrigger`, with the operator's
fields as trigger kwargs; the triggerer renders their templates from the task's context, and
the trigger then does what ``execute`` would have done on a worker -- check the fields, reattach
to this task instance's job by its idempotency key or submit one -- and watches the job like
:class:`~airflow_gpu.triggers.GpuBatchJobTrigger`, which it extends. A job that SUCCEEDED ends the task here
(``TaskSuccessEvent`` with its XComs, after the manifest is read asynchronously), unless the task
has outlets: Airflow emits Asset events only for a task that finishes on a worker, so such a task,
like one whose job FAILED (the error carries the reason and the log's tail), resumes on a worker
in ``execute_complete``.

A triggerer restart or a move re-runs the trigger from the start: it finds the job it submitted
by the idempotency key and never submits a second one, which is why ``reattach=False`` is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator

from airflow.triggers.base import StartTriggerArgs, TaskFailedEvent, TaskSuccessEvent, TriggerEvent

from airflow_gpu.committed_outputs import ManifestError, read_job_output_summary
from airflow_gpu.job_request import JobRequest, check_job_fields, job_spec
from airflow_gpu.jobs.backend import SUCCEEDED, JobState
from airflow_gpu.jobs.blocking import claim, submit_or_reattach
from airflow_gpu.jobs.ownership import superseded
from airflow_gpu.jobs.spec import TAG_DEFERRED_TRY, JobSpecError, TaskIdentity
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.task_job import JOB_ID_XCOM_KEY, job_result, task_identity, try_number
from airflow_gpu.triggers.watch import GpuBatchJobTrigger

#: The path serialize() and StartTriggerArgs give Airflow (the package re-exports the class); a Trigger
#: row or serialized DAG an earlier release wrote names airflow_gpu.starting's, which still resolves.
CLASSPATH = "airflow_gpu.triggers.GpuBatchStartTrigger"


def start_trigger_args(operator: Any) -> StartTriggerArgs:
    """The operator's StartTriggerArgs, or a JobSpecError (at DAG parse time) naming what needs a worker."""
    name = f"{type(operator).__name__}(task_id={operator.task_id!r}, start_from_trigger=True)"
    if not operator.deferrable:
        raise JobSpecError(
            f"{name} needs deferrable=True: a task started on the triggerer waits there. Drop deferrable=False, "
            f"or drop start_from_trigger to wait on a worker."
        )
    if not operator.reattach:
        raise JobSpecError(
            f"{name} needs reattach=True: a restarted triggerer runs the trigger again, and only finding the job by "
            f"its idempotency key keeps it from submitting a second one. Drop reattach=False, or drop start_from_trigger."
        )
    # Under the operator's names: the triggerer renders those that are the operator's template fields
    # (it matches template fields to trigger kwargs by name).
    kwargs: dict[str, Any] = JobRequest.of(operator).trigger_kwargs()
    upstream = [field for field, value in kwargs.items() if _holds_xcom_arg(value)]
    if upstream:
        raise JobSpecError(
            f"{name}: {', '.join(upstream)} come(s) from an upstream task's XCom, which the triggerer cannot resolve "
            f"before the task starts. Pass plain values or Jinja templates of the run's context ({{{{ params.x }}}}, "
            f"{{{{ run_id }}}}), or drop start_from_trigger to submit from a worker."
        )
    kwargs["end_on_trigger"] = not operator.outlets
    return StartTriggerArgs(trigger_cls=CLASSPATH, trigger_kwargs=kwargs, next_method="execute_complete")


def _holds_xcom_arg(value: Any) -> bool:
    from airflow.sdk.definitions._internal.mixins import ResolveMixin

    if isinstance(value, ResolveMixin):
        return True
    if isinstance(value, dict):
        return any(_holds_xcom_arg(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_xcom_arg(v) for v in value)
    return False


class GpuBatchStartTrigger(GpuBatchJobTrigger):
    """Submits (or finds) this task instance's job, watches it, and ends the task where it can.

    Its kwargs are the job request's fields (:class:`~airflow_gpu.job_request.JobRequest`) as the
    operator holds them, rendered by the triggerer. ``end_on_trigger``: a job that
    SUCCEEDED ends the task here (False when the task has outlets, whose events need a worker).
    ``job_id`` is set once the job is known; a new run of the trigger finds it again regardless.
    """

    output_uri: str | None  # set, with every field of the request, by __init__

    def __init__(self, *, end_on_trigger: bool = True, job_id: str = "", **request: Any) -> None:
        fields = JobRequest.from_trigger_kwargs(request)  # the operator's fields, rendered
        super().__init__(
            job_id,
            aws_conn_id=fields["aws_conn_id"],
            region_name=fields["region_name"],
            poll_interval=fields["poll_interval"],
            max_queued=fields["max_queued"],
            stream_logs=fields["stream_logs"],
            backend=fields["backend"],
        )
        for name, value in fields.items():
            setattr(self, name, value)
        self.end_on_trigger = end_on_trigger

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs = JobRequest.of(self).trigger_kwargs()
        return CLASSPATH, {**kwargs, "end_on_trigger": self.end_on_trigger, "job_id": self.job_id}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_gpu.jobs.billing import COST_KEY, job_bill_async

        identity = self._identity()
        try:
            check_job_fields(self, skip_templates=False)  # rendered by now: the operator's run-time checks
            spec = job_spec(self, identity)
        except JobSpecError as exc:
            self.log.error("Task %s cannot start: %s", identity.describe(), exc)
            yield TaskFailedEvent()
            return
        this_try = self._try_number()
        if this_try is not None:  # this try is deferred already: its submit carries its claim (jobs/ownership.py)
            spec = dataclasses.replace(spec, tags={**spec.tags, TAG_DEFERRED_TRY: str(this_try)})
        watcher = JobWatcher.shared(self.target)
        async with watcher.backend() as backend:
            state, reattached = await submit_or_reattach(
                backend, spec, reattach=True, log=self.log, try_number=this_try
            )
            if this_try is not None and state.is_live:
                await claim(backend, state, this_try, self.log)  # one a worker submitted for this try, if any
            links = {"job_url": backend.job_url(state.job_id), "log_url": backend.log_url(state)}
        self.job_id = state.job_id
        reused = state.status == SUCCEEDED
        if reused:
            self.log.info("Reusing the result of job %s, which already SUCCEEDED for this task instance", state.job_id)
            event = {**state.as_event(), **links, "reused": True}  # billed as reused, on a worker too
        else:
            event = None
            async for fired in super().run():
                event = fired.payload
        assert event is not None  # the watching trigger ends with one event (or raises)
        final = JobState.from_event(event)
        event["reattached"] = reattached
        if final.status != SUCCEEDED:
            yield TriggerEvent(event)  # the worker raises the error: reason, exit code, the log's last lines
            return
        result = job_result(final)
        if self.output_uri:
            try:
                result["manifest"] = await read_job_output_summary(
                    self.aws_conn_id, self.region_name, self.output_uri, final.job_id
                )
            except ManifestError as exc:
                self.log.error("%s", exc)
                yield TaskFailedEvent(xcoms={JOB_ID_XCOM_KEY: final.job_id})
                return
            self.log.info(
                "Job %s committed run %s at %s",
                final.job_id,
                result["manifest"]["run_id"],
                result["manifest"]["manifest_uri"],
            )
        if not self.end_on_trigger:
            event["manifest"] = result.get("manifest")  # read once: the worker emits the Asset events with it
            yield TriggerEvent(event)
            return
        self.log.info(
            "Job %s SUCCEEDED after %d attempt(s); the task ends on the triggerer", final.job_id, final.attempts
        )
        async with watcher.backend() as backend:  # the bill, as a worker would log it (the job's last line)
            result[COST_KEY] = await job_bill_async(backend, final, self.log, reused=reused)
        yield TaskSuccessEvent(xcoms={"return_value": result, JOB_ID_XCOM_KEY: final.job_id})

    def _try_number(self) -> int | None:
        return try_number(self.task_instance)

    def _identity(self) -> TaskIdentity:
        if self.task_instance is None:
            raise RuntimeError(
                "GpuBatchStartTrigger runs on a triggerer, for a task instance (start_from_trigger=True)"
            )
        return task_identity(self.task_instance)

    async def on_kill(self) -> None:
        """As the watching trigger's. Cancelled before it knew its job (mid-submit), it looks the
        job up by the idempotency key, so a job submitted just then is decided on too; a live job
        an earlier try deferred on is not this try's (the next try ends it)."""
        if not self.job_id:
            try:
                spec = job_spec(self, self._identity())
                this_try = self._try_number()
                async with JobWatcher.shared(self.target).backend() as backend:
                    live = [
                        s
                        for s in await backend.find(spec)
                        if s.is_live and (this_try is None or not superseded(s, this_try))
                    ]
            except Exception as exc:  # nothing valid to look for, or the backend is unreachable
                self.log.warning("Could not look for this task's job to stop it: %s", exc)
                return
            if not live:
                return
            self.job_id = live[0].job_id
        await super().on_kill()

    async def cleanup(self) -> None:
        if self.job_id:
            await super().cleanup()
        else:
            self._release()


__all__ = ["GpuBatchStartTrigger", "start_trigger_args", "CLASSPATH"]
