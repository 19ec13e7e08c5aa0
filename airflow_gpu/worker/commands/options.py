"""The value types, help format and options that more than one worker command takes."""

from __future__ import annotations

import argparse

from ..publish import DEFAULT_KEEP_RUNS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def regularization(text: str) -> float | None:
    """``auto`` (None: scaled to the data, see regularization.auto_regularization) or a number >= 0."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be auto or a number >= 0, got {text!r}")
    return value


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it has one: never "(default: None)" on a required
    option, nor on one whose absence the help text already explains."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None:
            return action.help
        if action.nargs == 0 and action.const is False:
            # A --no-X flag (store_false) fills setting X: what its default says is that the flag is off.
            return f"{action.help} (default: False)"
        return super()._get_help_string(action)


def add_keep_runs(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--keep-runs",
        type=non_negative_int,
        default=DEFAULT_KEEP_RUNS,
        metavar="N",
        help="after committing, delete committed runs/<id>/ folders older than the N newest; 0 keeps all",
    )


def add_code_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--code",
        default=None,
        metavar="URI",
        help="the project to run from: a staged bundle (.../code/SHA256.tar.gz), an s3:// prefix or a local "
        "folder; unpacked into the working folder, its root on PYTHONPATH",
    )
    parser.add_argument(
        "--requirements",
        default=None,
        metavar="PATH",
        help="with --code: the requirements file inside it to install first (default: its requirements.txt, if any)",
    )
