"""The errors batch-setup shows to its user: each says what was wrong and what to do."""

from __future__ import annotations


class ProvisionError(Exception):
    """Something batch-setup could not do; the message is for the user, not a traceback."""


class ConfigError(ProvisionError):
    """The config file is wrong. Raised before any AWS call, listing every problem at once."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {count}; nothing was sent to AWS.\n{lines}")


class WaitTimeout(ProvisionError):
    """A resource did not reach the state batch-setup needs within the wait timeout."""
