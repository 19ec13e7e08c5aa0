"""The one exception a user can cause.

Anything the person running the job can fix (a wrong URI, a missing column, a corrupt
object, a GPU that is too small) is raised as ``WorkerError`` with a one-line message
that names the object or column and says what to do. The CLI prints that line and
exits non-zero without a traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class WorkerError(Exception):
    """A problem with the job's inputs or settings, explained in one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
