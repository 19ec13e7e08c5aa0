"""The on-demand prices shipped with the package: the few GPU instance types whose price is known.

Hourly on-demand price, Linux, us-east-1, from the EC2 On-Demand pricing page
(https://aws.amazon.com/ec2/pricing/on-demand/), as quoted in issue 26. The P5 price is
the one after AWS's mid-2025 cut. Only prices someone checked are listed: every other type
that batch-setup offers bills as "cost unknown" until a deployment supplies its price
(``[airflow_gpu] prices`` or $AIRFLOW_GPU_PRICES, see :mod:`airflow_gpu.jobs.cost`).
"""

from __future__ import annotations

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
