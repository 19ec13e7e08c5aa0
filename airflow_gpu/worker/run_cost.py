"""What this run cost, as the worker can estimate it: its run time, the instance's price, its share.

The Airflow side bills the job from Batch's record when it ends (:mod:`airflow_gpu.jobs.cost`);
the worker cannot see that record, but its report and manifest should say what the run cost
too. It learns its instance type and market from the instance metadata
(:mod:`airflow_gpu.worker.instance`) and prices them from the same shipped table
(:mod:`airflow_gpu.prices`), with the same rules: the run time times the hourly price times the
share of the instance it held (the GPUs it sees over the instance's GPUs), Spot at
``$AIRFLOW_GPU_SPOT_PRICE_SHARE`` of on-demand (0.4 unless set). The run time is this process's
(to the moment of the estimate), so it leaves out the container's start; the Airflow side's bill
is the one to add up.

The instance is asked only on AWS Batch (``AWS_BATCH_JOB_ID`` set) or where
``AWS_EC2_METADATA_SERVICE_ENDPOINT`` names a service: elsewhere (a laptop, a test) there is no
instance to ask, and waiting for one would only slow the run down. A run on the local backend
says "cost: local"; any other gap says "cost unknown" and why, never a made-up figure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .. import prices
from .instance import Placement, lookup
from .profile import _duration

_placement: Placement | None = None  # asked once per process: the instance does not change


def placement(environ: Mapping[str, str]) -> Placement:
    """Where this process runs (cached), or why that is not asked or not known."""
    global _placement
    if _placement is None:
        if not environ.get("AWS_BATCH_JOB_ID") and not environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"):
            return Placement(None, why_unknown="not on AWS Batch (no AWS_BATCH_JOB_ID), so no instance was asked")
        _placement = lookup(environ)
    return _placement


def forget_placement() -> None:
    """For tests: ask the instance again."""
    global _placement
    _placement = None


def visible_gpus(profile: Mapping[str, Any] | None, environ: Mapping[str, str]) -> int:
    """The GPUs this job holds: those the profile saw, else NVIDIA_VISIBLE_DEVICES's list (Batch sets it)."""
    seen = len((profile or {}).get("gpus") or ())
    if seen:
        return seen
    listed = environ.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if not listed or listed in ("all", "none", "void"):
        return 0  # "all" is the whole instance, which a share of 0 GPUs also charges
    return len([d for d in listed.split(",") if d.strip()])


def estimate(
    where: Placement, *, run_s: float | None, gpus: int, spot_share: float = prices.DEFAULT_SPOT_SHARE
) -> dict[str, Any]:
    """The cost of ``run_s`` seconds on ``where`` holding ``gpus`` GPUs, with the sentence a person reads."""
    found: dict[str, Any] = {
        "instance_type": where.instance_type,
        "market": where.market,
        "gpus": gpus,
        "run_s": None if run_s is None else round(run_s, 1),
        "share_of_instance": None,
        "usd_per_hour": None,
        "cost_usd": None,
    }

    def unknown(why: str) -> dict[str, Any]:
        return {**found, "cost_basis": why, "text": f"Cost unknown: {why}."}

    if where.instance_type is None:
        return unknown(where.why_unknown or "the instance type is not known")
    if run_s is None:
        return unknown("the run time is not known (the profile is off)")
    priced = prices.hourly(
        where.instance_type,
        where.market or prices.ON_DEMAND,
        on_demand=prices.ON_DEMAND_USD_PER_HOUR,
        spot_share=spot_share,
    )
    if priced is None:
        return unknown(f"no price for {where.instance_type} in the price table")
    hourly, how = priced
    if where.market is None:
        how += " (market unknown)"
    share, share_text = prices.reserved_share(gpus, prices.INSTANCE_GPUS.get(where.instance_type))
    cost = prices.cost_usd(run_s, hourly, share)
    basis = f"{share_text} at ${hourly:.4g}/h, {how}, {prices.REGION} prices of {prices.AS_OF}"
    market = f" ({where.market})" if where.market else ""
    return {
        **found,
        "share_of_instance": round(share, 4),
        "usd_per_hour": round(hourly, 4),
        "cost_usd": round(cost, 4),
        "cost_basis": basis,
        "text": f"Estimated cost ~${cost:,.2f}: {_duration(run_s)} on {where.instance_type}{market}, {basis}.",
    }


def run_cost(
    profile: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None, *, run_s: float | None = None
) -> dict[str, Any]:
    """This run's cost so far, from its profile (run time, GPUs) and its instance; ``run_s`` when there is
    no profile (switched off). May ask IMDS: call it off the event loop."""
    environ = os.environ if environ is None else environ
    if environ.get("AIRFLOW_GPU_JOB_ID") and not environ.get("AWS_BATCH_JOB_ID"):
        return {"cost_usd": None, "cost_basis": "ran on this machine", "text": "Cost: local (ran on this machine)."}
    share_text = environ.get(prices.SPOT_SHARE_ENV, "")
    share = prices.spot_share_or_none(share_text) if share_text else prices.DEFAULT_SPOT_SHARE
    run_s = (profile or {}).get("duration_s", run_s)
    if share is None:
        why = f"${prices.SPOT_SHARE_ENV}={share_text!r} is not a number in (0, 1]; fix it in the job's environment"
        return estimate(Placement(None, why_unknown=why), run_s=run_s, gpus=0)
    return estimate(placement(environ), run_s=run_s, gpus=visible_gpus(profile, environ), spot_share=share)
