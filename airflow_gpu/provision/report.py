"""How batch-setup shows a plan and its result: readable text, or one JSON document for scripts."""

from __future__ import annotations

import json
from typing import TextIO

from .apply import Outputs
from .plan import Plan

_MARK = {"create": "+", "register": "+", "delete": "-", "deregister": "-", "disable": "-"}


def render_plan(plan: Plan) -> list[str]:
    cfg = plan.config
    what = "tear-down" if plan.delete else "set-up"
    lines = [f"batch-setup {what} plan for prefix {cfg.prefix!r} in {cfg.region}:"]
    for action in plan.actions:
        mark = _MARK.get(action.verb.split(" ", 1)[0], "~")
        lines.append(f"  {mark} {action.headline()}")
        for change in action.changes:
            lines.append(f"      {change.render()}")
    for item in plan.up_to_date:
        lines.append(f"  = {item}: up to date")
    for note in plan.notes:
        lines.append(f"  . {note}")
    if not plan.actions:
        lines.append("Nothing to delete." if plan.delete else "Everything is up to date; nothing to change.")
    return lines


def render_outputs(out: Outputs) -> list[str]:
    if out.delete:
        if out.dry_run:
            return ["Dry run: nothing was deleted."]
        return ["Deleted." if out.actions else "Nothing was there to delete."]
    lines = []
    if out.dry_run:
        lines.append("Dry run: nothing was changed.")
    lines.append("For your DAG (GpuBatchOperator):")
    lines.append(f"  region           = {out.region!r}")
    lines.append(f"  job_queue        = {out.job_queue!r}")
    if out.job_definition_arn:
        lines.append(f"  job_definition   = {out.job_definition_arn!r}")
    else:
        lines.append("  job_definition   = (its ARN exists once this plan is applied)")
    return lines


def write_json(out: Outputs, stream: TextIO) -> None:
    json.dump(out.as_dict(), stream, indent=2, sort_keys=True, default=str)
    stream.write("\n")
