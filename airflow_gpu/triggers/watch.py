"""GpuBatchJobTrigger: waits for one GPU job in the triggerer, through the loop's shared watcher."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseTrigger, TriggerEvent

import airflow_gpu.compat  # noqa: F401  refuses an Airflow older than the floor (3.3), whose triggerer calls on_kill
from airflow_gpu.jobs.backend import BackendTarget, JobBackend, JobState
from airflow_gpu.jobs.follower import LogFollow, LogFollower
from airflow_gpu.jobs.interrupt import INTERRUPTED, _Interrupted, terminate_interrupted, wait_unless_interrupted
from airflow_gpu.jobs.loop_log import log_off_loop, logs_written
from airflow_gpu.jobs.ownership import Action, TaskState, decide_on_kill
from airflow_gpu.jobs.placement import waiting_line
from airflow_gpu.jobs.shared import DEFAULT_POLL_INTERVAL
from airflow_gpu.jobs.watcher import JobWatch, JobWatcher, follow_job
from airflow_gpu.task_state import read_task_state


class GpuBatchJobTrigger(BaseTrigger):
    """Fires one event when the job reaches SUCCEEDED or FAILED (or turns out not to exist).

    The trigger holds no client and no timer of its own: it registers its job
    with the event loop's :class:`JobWatcher`, which describes every watched job
    in batches and wakes this trigger only when its job's state changes. That is
    what lets one triggerer wait for thousands of GPU jobs.

    With ``stream_logs``, once the job has a log stream the trigger registers it
    with the loop's :class:`~airflow_gpu.jobs.follower.LogFollower`, which reads the
    logs of all jobs in batches and writes each job's new lines into this
    trigger's log (hence the task's log) about once per poll interval. When the
    job ends, the trigger asks for one last read, waits for it at most half a
    second (not at all when CloudWatch's rate limit could not serve it by then),
    and fires; the event's ``log_relayed_to_end`` says whether the live log
    reached the job's end.

    :param job_id: the backend's job id.
    :param aws_conn_id: Airflow connection for AWS; only its id is stored, never credentials.
    :param region_name: overrides the connection's region.
    :param poll_interval: seconds between polls; the watcher polls at the smallest
        interval any of its triggers asks for.
    :param max_queued: seconds the job may wait for capacity (SUBMITTED, PENDING,
        RUNNABLE, STARTING) before it is terminated; None waits for ever.
    :param stream_logs: relay the job's log lines into the task log while it runs.
    :param backend: which job system, e.g. ``"aws_batch"``.
    """

    def __init__(
        self,
        job_id: str,
        *,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_queued: float | None = None,
        stream_logs: bool = True,
        backend: str = "aws_batch",
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.poll_interval = poll_interval
        self.max_queued = max_queued
        self.stream_logs = stream_logs
        self.backend = backend
        self._watch: JobWatch | None = None
        self._follow: LogFollow | None = None
        self._retired: asyncio.Future | None = None
        self._killing: asyncio.Future | None = None  # on_kill's decision, kept alive past a second cancel, made once

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_gpu.triggers.GpuBatchJobTrigger",
            {
                "job_id": self.job_id,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "poll_interval": self.poll_interval,
                "max_queued": self.max_queued,
                "stream_logs": self.stream_logs,
                "backend": self.backend,
            },
        )

    @property
    def target(self) -> BackendTarget:
        return BackendTarget(backend=self.backend, conn_id=self.aws_conn_id, region_name=self.region_name)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watcher = JobWatcher.shared(self.target)
        self._watch = watcher.watch(self.job_id, poll_interval=self.poll_interval, max_queued=self.max_queued)
        try:
            following = follow_job(self._watch, on_change=self._on_change)
            final: JobState | _Interrupted
            if self.task_instance is not None:  # on a triggerer: its signals are its own business
                final = await following
            else:
                # Run inline (`airflow dags test`): this process is the job's only watcher, so
                # Ctrl-C terminates the job and the task resumes with that, instead of a traceback.
                final = await wait_unless_interrupted(following)
                if final is INTERRUPTED:
                    final = await terminate_interrupted(watcher, self.job_id, "the inline trigger (airflow dags test)")
                    self.log.warning(
                        "Ctrl-C: terminated job %s; the task fails with: %s", self.job_id, final.status_reason
                    )
            # The end itself is not logged here: the triggerer logs the event and the task logs the
            # outcome when it resumes. At 10,000 jobs ending together, every record counts.
            relayed = None if self._follow is None else await self._follow.finish(final)
            event = final.as_event()
            if relayed is not None:
                event["log_relayed_to_end"] = relayed  # False: the live log stops short; the log link has it all
            backend = watcher.backend_instance
            if backend is None:
                async with watcher.backend() as backend:
                    self._add_links(event, backend, final)
            else:
                self._add_links(event, backend, final)
        finally:
            self._release()
        if self.task_instance is None:
            # Run inline, the loop ends with this event: close its clients now rather than leave
            # them to the grace period (which would outlive the loop: "Unclosed client session").
            await _close_if_idle(watcher, LogFollower.shared(self.target))
        await logs_written()  # the job's lines before its event
        # Released before yielding: the triggerer may keep this generator suspended at the yield.
        yield TriggerEvent(event)

    @staticmethod
    def _add_links(event: dict[str, Any], backend: JobBackend, state: JobState) -> None:
        # Console links for the operator's extra links.
        event["job_url"] = backend.job_url(state.job_id)
        event["log_url"] = backend.log_url(state)

    def _on_change(self, state: JobState) -> None:
        # One line per state change while the job lives, never per poll: at 10,000 jobs the log
        # is a cost too (a record costs 40-100 us in the triggerer).
        if not state.is_terminal:
            log_off_loop(self.log.info, waiting_line(state.job_id, state.status, state.blocked))  # see jobs/loop_log.py
        if self.stream_logs and state.log_stream:
            self._follow_log(state)

    def _follow_log(self, state: JobState) -> None:
        current = self._follow
        if current is not None and current.stream == state.log_stream:
            return
        if current is not None:  # a new attempt writes a new stream: the old one gets its last read
            self._retired = asyncio.ensure_future(current.finish())
        self._follow = LogFollower.shared(self.target).follow(
            state, self._relay_lines, poll_interval=self.poll_interval
        )

    def _relay_lines(self, lines: list[str]) -> None:
        # One record per read, not per line: a record costs 40-100 us in the triggerer whatever
        # its length, and a chatty job should not cost a core.
        log_off_loop(self.log.info, "\n".join(lines))

    def _release(self) -> None:
        if self._retired is not None:
            self._retired.cancel()
            self._retired = None
        if self._follow is not None:
            self._follow.close()
            self._follow = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    async def cleanup(self) -> None:
        """Release the watch, and leave the job alone.

        cleanup() runs whenever run() ends: after the event, when the triggerer shuts down, or when
        another triggerer takes the trigger over; the job must live on for the two last. A user's
        clear or mark of the task comes through on_kill() (the floor, Airflow 3.3, calls it).
        """
        self._release()

    async def on_kill(self) -> None:
        """The triggerer cancelled this trigger with its user-action message (Airflow 3.3+): the task
        was cleared or marked -- or, on Airflow 3.3.2 (apache/airflow PR #73454), this triggerer
        resumed from a stall and found the trigger given to another triggerer. The job and the task
        instance's state tell which (airflow_gpu/jobs/ownership.py; the table is in docs/operator.md).

        A clear's next try never reattaches to this job (it carries this try's number), so a
        DEFERRED task read here is this try still waiting, elsewhere. The triggerer cancels a
        trigger it dropped again on each pass until it has ended, so the decision runs as its own
        task, which a second cancel cannot stop halfway, and runs once."""
        if self._killing is None:
            self._killing = asyncio.ensure_future(self._decide_and_act())
        await asyncio.shield(self._killing)

    async def _decide_and_act(self) -> None:
        ti = self.task_instance
        try_number = getattr(ti, "try_number", None)
        async with JobWatcher.shared(self.target).backend() as backend:
            decision = decide_on_kill(await _described(backend, self.job_id), None, try_number)
            if decision.action is not Action.LEAVE:  # only a live job is worth the task's state
                task_state = TaskState.UNKNOWN if ti is None else await read_task_state(ti, self.log)
                # Described again: the state read may have taken a while, and a later try may have ended the job meanwhile.
                decision = decide_on_kill(await _described(backend, self.job_id), task_state, try_number)
            if decision.action is Action.TERMINATE:
                reason = self._kill_reason()
                self.log.warning("Terminating job %s: %s", self.job_id, decision.why)
                await backend.terminate(self.job_id, reason)
            else:
                self.log.info("Job %s left running: %s", self.job_id, decision.why)

    def _kill_reason(self) -> str:
        ti = self.task_instance
        if ti is None:
            return "the Airflow task waiting for this job was cleared or marked failed/succeeded"
        where = f"{ti.dag_id}.{ti.task_id} run {ti.run_id}"
        if getattr(ti, "map_index", -1) not in (-1, None):
            where += f" map index {ti.map_index}"
        return f"Airflow task {where} was cleared or marked failed/succeeded"


async def _described(backend: JobBackend, job_id: str) -> JobState | None:
    found = await backend.describe([job_id])
    return found[0] if found else None


async def _close_if_idle(watcher: JobWatcher, follower: LogFollower) -> None:
    if follower.followed == 0:
        await follower.aclose()
    if watcher.idle:
        await watcher.aclose()
