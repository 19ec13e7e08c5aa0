"""How a backend tells the watcher why it could not describe jobs, so a failed poll decides no job's fate.

A poll that fails says nothing about the jobs: they run on whatever the watcher sees.
So the watcher never fails a trigger on one bad reply. It tells three cases apart:

* :class:`JobIdsRejected` -- the request itself was refused (a malformed id in the
  batch). The watcher splits the batch to find the id; only an id refused on its own,
  while others in its batch were described, is reported as unknown.
* :class:`CannotSeeJobs` -- anything else that is not transient (AccessDenied, a 4xx,
  credentials that stay bad after a refresh). The watcher keeps retrying with backoff
  for ``JobWatcher.describe_error_grace`` seconds; only then does it report the jobs
  with a message naming the missing permission and the fix, and never terminates them.
"""

from __future__ import annotations


class CannotSeeJobs(Exception):
    """The backend could not describe these jobs; it says what permission or fix would let it."""

    def __init__(self, message: str, *, code: str = "", fix: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.fix = fix


class JobIdsRejected(CannotSeeJobs):
    """The backend refused the request for what it asked about (a malformed id among them)."""


def not_seen_reason(job_id: str, location: str, seconds: float, error: BaseException) -> str:
    """The reason a trigger fails with once the watcher has been blind to its job past the grace time."""
    fix = getattr(error, "fix", "") or "check the connection's credentials and permissions"
    return (
        f"airflow-gpu could not see job {job_id} on {location} for {seconds:.0f} s ({error}); {fix}. "
        f"The job was NOT terminated and may still be running: check it in the console, then clear the task "
        f"(it reattaches to the job)."
    )


def rejected_reason(job_id: str, location: str, error: BaseException) -> str:
    return (
        f"{location} rejects job id {job_id!r} ({error}), while it described the other jobs asked about with it; "
        f"check the job id the task was given"
    )
