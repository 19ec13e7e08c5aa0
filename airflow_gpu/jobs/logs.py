"""What a log reader and a followed log see of each other: the bottom layer of live logs.

The follower (:mod:`airflow_gpu.jobs.follower`) hands a backend's reader the logs it follows; the
reader (for AWS Batch, :mod:`airflow_gpu.jobs.aws.cloudwatch`) reads their new lines and hands them
back. Each side sees the other only through a protocol here, so neither names the other's class,
and a reader keeps its own bookmarks instead of writing into the follower's objects.
"""

from __future__ import annotations

from typing import Protocol, Sequence


class FollowedLog(Protocol):
    """One job's log as a reader sees it: where it is, whether it is due, and where its lines go.

    Hashable by identity, so a reader may key its own per-log state (a cursor) on it.
    """

    @property
    def job_id(self) -> str: ...

    @property
    def log_group(self) -> str | None: ...

    @property
    def stream(self) -> str | None: ...

    @property
    def closed(self) -> bool:
        """Its owner stopped following: lines read now are dropped."""
        ...

    @property
    def retry_at(self) -> float:
        """Loop time before which a routine read skips it (its stream was missing lately)."""
        ...

    def deliver(self, lines: list[str]) -> None:
        """Hand new lines to the owner, oldest first; never raises into the reader."""

    def missing(self, now: float) -> None:
        """The stream (or its group) is not there yet: ask again later, less and less often."""

    def found(self) -> None:
        """The stream is there: ask at every read again."""


class LogReader(Protocol):
    """Reads the new lines of many followed logs and delivers them through :meth:`FollowedLog.deliver`."""

    async def read(self, follows: Sequence[FollowedLog], *, urgent: bool = False) -> None: ...

    def needs_last_read(self, follow: FollowedLog) -> bool:
        """Whether the log is somewhere this reader reads (else there is nothing to wait for)."""
        ...

    def capacity(self, seconds: float) -> int:
        """How many logs urgent reads could serve within ``seconds``, given the rate limit."""
        ...
