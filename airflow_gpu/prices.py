"""The prices GPU jobs are billed at, shared by both wings: the shipped table and its arithmetic.

Standard library only, importing neither wing (an import contract checks it): the Airflow side
bills an ended job from what Batch and ECS report (:mod:`airflow_gpu.jobs.cost`), and the worker
estimates its own run from what the instance metadata says (:mod:`airflow_gpu.worker.run_cost`);
both must price alike, so the table and the rules are written once, here.

Hourly on-demand price, Linux, us-east-1, from the EC2 On-Demand pricing page
(https://aws.amazon.com/ec2/pricing/on-demand/), as quoted in issue 26. The P5 price is
the one after AWS's mid-2025 cut. Only prices someone checked are listed: every other type
that batch-setup offers bills as "cost unknown" until a deployment supplies its price
(``[airflow_gpu] prices`` or $AIRFLOW_GPU_PRICES on the Airflow side, see docs/cost.md).
"""

from __future__ import annotations

from collections.abc import Mapping

REGION = "us-east-1"
AS_OF = "2026-12"
SOURCE = "https://aws.amazon.com/ec2/pricing/on-demand/ (Linux, us-east-1)"

#: instance type -> USD per instance-hour, on demand.
ON_DEMAND_USD_PER_HOUR: dict[str, float] = {
    "p5.48xlarge": 55.04,
    "g6e.xlarge": 1.861,
    "g5.xlarge": 1.006,
    "g6.xlarge": 0.8048,
}
#: instance type -> its GPUs, for the priced types (the worker cannot read the provisioning table;
#: a unit test keeps the two equal).
INSTANCE_GPUS: dict[str, int] = {
    "p5.48xlarge": 8,
    "g6e.xlarge": 1,
    "g5.xlarge": 1,
    "g6.xlarge": 1,
}

ON_DEMAND = "on-demand"
SPOT = "spot"
#: Spot price as a share of on-demand when the table gives none: an assumption (Spot GPU
#: capacity commonly sells at 30-50% of on-demand), which the bill says it used.
DEFAULT_SPOT_SHARE = 0.4
#: Overrides the Spot share (the Airflow side's ``[airflow_gpu] spot_price_share`` wins over it there).
SPOT_SHARE_ENV = "AIRFLOW_GPU_SPOT_PRICE_SHARE"


def spot_share_or_none(value: object) -> float | None:
    """``value`` as a Spot share in (0, 1], or None when it is not one."""
    try:
        share = float(value)  # type: ignore[arg-type]  # a str or a number; anything else is refused below
    except (TypeError, ValueError):
        return None
    return share if 0 < share <= 1 else None


def hourly(
    instance_type: str,
    market: str,
    *,
    on_demand: Mapping[str, float],
    spot: Mapping[str, float] | None = None,
    spot_share: float = DEFAULT_SPOT_SHARE,
) -> tuple[float, str] | None:
    """(USD per instance-hour, how it was priced), or None when the table does not price the type."""
    price = on_demand.get(instance_type)
    if market == SPOT:
        if spot and instance_type in spot:
            return spot[instance_type], "spot price from the table"
        if price is None:
            return None
        return price * spot_share, f"spot at {spot_share:.0%} of on-demand"
    if price is None:
        return None
    return price, "on-demand"


def reserved_share(gpus: int, instance_gpus: int | None) -> tuple[float, str]:
    """The share of the instance a job pays for, and how to say it: its GPUs over the instance's.

    No GPU reserved, or an instance whose GPUs are unknown: the whole instance is charged."""
    if gpus and instance_gpus:
        return min(1.0, gpus / instance_gpus), f"{gpus}/{instance_gpus} of the instance"
    return 1.0, "the whole instance"


def cost_usd(run_s: float, usd_per_hour: float, share: float) -> float:
    """The run time times the hourly price times the share of the instance."""
    return run_s / 3600 * usd_per_hour * share
