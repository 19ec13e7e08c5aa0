"""A job's life in the terminal: each state with the time since the watch began, Batch's reason
while it waits (RUNNABLE), and its log lines as they come. The shared JobWatcher and
LogFollower do the polling, exactly as for a deferred task; this only prints."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from airflow_gpu.jobs.backend import UNKNOWN, BackendTarget, JobState
from airflow_gpu.jobs.follower import LogFollow, LogFollower
from airflow_gpu.jobs.watcher import JobWatcher, follow_job
from airflow_gpu.terminal.options import TerminalError


class JobView:
    """Prints one job's states and log lines to ``out`` (the log lines as they are, states marked ``==``)."""

    def __init__(
        self,
        target: BackendTarget,
        out: TextIO | None = None,
        *,
        stream_logs: bool = True,
        poll_interval: float = 5.0,
        tail: int | None = None,
        give_up_after: float | None = None,
    ):
        self.target = target
        # The follower reads a stream from its start; ``tail`` keeps only the last lines of that first read.
        self.tail = tail
        self.out = out or sys.stdout
        self.stream_logs = stream_logs
        self.poll_interval = poll_interval
        # A person watching gives up on an API that stays unreachable far sooner than a triggerer.
        self.give_up_after = give_up_after
        self.started = time.monotonic()
        self._last: tuple[str, str | None] | None = None
        self._follow: LogFollow | None = None

    def say(self, text: str) -> None:
        print(f"== {time.monotonic() - self.started:7.1f}s  {text}", file=self.out, flush=True)

    def _on_change(self, state: JobState) -> None:
        # RUNNABLE's reason is why it waits (no capacity, a misconfigured environment): worth a line when it changes.
        shown = (state.status, state.status_reason if state.status == "RUNNABLE" else None)
        if shown != self._last and not state.is_terminal:
            self._last = shown
            self.say(state.status + (f"  ({shown[1]})" if shown[1] else ""))
        if self.stream_logs and state.log_stream and (self._follow is None or self._follow.stream != state.log_stream):
            if self._follow is not None:
                self._follow.close()
            backend = JobWatcher.shared(self.target).backend_instance
            url = backend.log_url(state) if backend is not None else None
            if url:
                self.say(f"log: {url}")
            self._follow = LogFollower.shared(self.target).follow(
                state, self._print_lines, poll_interval=self.poll_interval
            )

    def _print_lines(self, lines: list[str]) -> None:
        if self.tail is not None:
            lines, self.tail = lines[-self.tail :] if self.tail > 0 else [], None
        for line in lines:
            print(line, file=self.out)
        self.out.flush()

    async def watch(self, job_id: str, *, max_queued: float | None = None) -> JobState:
        """Until the job ends (or is terminated for queueing past ``max_queued``); its final state."""
        watcher = JobWatcher.shared(self.target)
        if self.give_up_after is not None:
            watcher.describe_error_grace = self.give_up_after
        watch = watcher.watch(job_id, poll_interval=self.poll_interval, max_queued=max_queued)
        try:
            final = await follow_job(watch, on_change=self._on_change)
            if self._follow is not None:
                await self._follow.finish(final)
        finally:
            if self._follow is not None:
                self._follow.close()
            watch.close()
        if final.status == UNKNOWN:  # never seen for give_up_after seconds: the reason says why
            raise TerminalError(final.status_reason or f"lost sight of job {job_id}")
        end = f"{final.status}" + (f", exit code {final.exit_code}" if final.exit_code is not None else "")
        self.say(end + (f"  ({final.status_reason})" if final.status_reason and final.status != "SUCCEEDED" else ""))
        return final


def exit_code_of(state: JobState) -> int:
    """The job's own exit code; 1 for a failure without one (never started, terminated, unknown)."""
    if state.status == "SUCCEEDED":
        return 0
    return state.exit_code if state.exit_code not in (None, 0) else 1
