"""A misspelled --queue or --definition, answered with the names that do exist."""

from __future__ import annotations


async def unknown_queue_or_definition(backend, exc: BaseException, queue: str, definition: str) -> str | None:
    """The one line for Batch's "Job queue X does not exist" (or job definition), else None."""
    import botocore.exceptions

    if not isinstance(exc, botocore.exceptions.ClientError):
        return None
    message = exc.response.get("Error", {}).get("Message") or ""
    lowered = message.lower()
    if exc.response.get("Error", {}).get("Code") != "ClientException" or not (
        "does not exist" in lowered or "not found" in lowered or "inactive" in lowered
    ):
        return None
    if "queue" in lowered:
        what, flag, given, index = "job queue", "--queue", queue, 0
    elif "definition" in lowered:
        what, flag, given, index = "job definition", "--definition", definition, 1
    else:
        return None
    try:
        names = (await backend.existing_names())[index]
    except Exception:  # listing is a courtesy: without it, the line still names the fix
        names = None
    if names:
        shown = ", ".join(names[:20]) + (f" (and {len(names) - 20} more)" if len(names) > 20 else "")
        return f"no {what} {given!r} in {backend.location}; {flag} takes one of: {shown}"
    return (
        f"no {what} {given!r} in {backend.location}, and none exists there: "
        "create them with `airflow-gpu batch-setup` (see docs/aws.md)"
    )
