"""The errors an Airflow task of airflow-gpu raises."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from airflow.sdk.exceptions import AirflowException

from airflow_gpu.jobs.backend import JobState


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


class GpuFunctionFailed(GpuJobFailed):
    """A ``@task.gpu_batch`` function raised, or its payload was refused; the message carries the remote traceback."""

    def __init__(self, state: JobState, log_lines: Sequence[str], remote: Mapping[str, Any]) -> None:
        self.remote = dict(remote)
        super().__init__(state, log_lines)
        what = "raised" if remote.get("stage") == "run" else "was not run"
        message = f"The GPU function {what}: {remote.get('error')}\n"
        if remote.get("traceback"):
            message += "Remote traceback:\n" + str(remote["traceback"]).rstrip() + "\n"
        self.args = (message + self.args[0],)
