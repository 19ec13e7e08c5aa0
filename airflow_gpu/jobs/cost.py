"""What a job cost: its times, GPU-hours and an estimated price. Pure arithmetic, no I/O but reading a price file.

A job's bill is its *run* time (the seconds its attempts held an instance) times the hourly
price of that instance, times the share of the instance it reserved: its GPUs over the
instance's GPUs (a 1-GPU job on an 8-GPU p5.48xlarge pays 1/8). The queue wait costs
nothing: no GPU is held. The price comes from a table (the one shipped in
:mod:`airflow_gpu.prices`, which the worker's own estimate shares, or a deployment's own file); a Spot instance is priced
at a share of on-demand unless the table gives its Spot price. A type the table does not
price says "cost unknown": an estimate is never invented.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_gpu import prices as shared_prices
from airflow_gpu.prices import DEFAULT_SPOT_SHARE as DEFAULT_SPOT_SHARE
from airflow_gpu.prices import ON_DEMAND as ON_DEMAND
from airflow_gpu.prices import SPOT as SPOT

LOCAL = "local"
#: Where a deployment without ``[airflow_gpu] prices`` (and a terminal) finds its price file.
PRICES_ENV = "AIRFLOW_GPU_PRICES"


class PriceFileError(ValueError):
    """A price file that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class PriceTable:
    """Hourly prices per instance type, and where they come from."""

    on_demand: Mapping[str, float]
    spot: Mapping[str, float] = field(default_factory=dict)
    spot_share: float = DEFAULT_SPOT_SHARE
    gpus: Mapping[str, int] = field(default_factory=dict)  # types the package's table does not know
    region: str = shared_prices.REGION
    as_of: str = shared_prices.AS_OF
    source: str = shared_prices.SOURCE

    def hourly(self, instance_type: str, market: str) -> tuple[float, str] | None:
        """(USD per instance-hour, how it was priced), or None when unknown."""
        return shared_prices.hourly(
            instance_type, market, on_demand=self.on_demand, spot=self.spot, spot_share=self.spot_share
        )

    def instance_gpus(self, instance_type: str) -> int | None:
        if instance_type in self.gpus:
            return self.gpus[instance_type]
        if instance_type in shared_prices.INSTANCE_GPUS:
            return shared_prices.INSTANCE_GPUS[instance_type]
        from airflow_gpu.provision.instances import (
            INSTANCE_TYPES,  # a plain table, no AWS
        )

        known = INSTANCE_TYPES.get(instance_type)
        return known.gpus if known else None


SHIPPED = PriceTable(on_demand=dict(shared_prices.ON_DEMAND_USD_PER_HOUR))


def read_price_file(path: str, *, spot_share: float | None = None) -> PriceTable:
    """A deployment's prices, over the shipped ones. JSON::

    {"region": "eu-west-1", "as_of": "2027-01", "source": "our EDP rates",
     "spot_share": 0.35,
     "on_demand": {"g5.xlarge": 1.1, "x9.big": {"usd_per_hour": 9.0, "gpus": 2}},
     "spot": {"g5.xlarge": 0.4}}
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise PriceFileError(
            f"cannot read the price file {path}: {exc.strerror or exc}; fix [airflow_gpu] prices or ${PRICES_ENV}"
        ) from None
    except ValueError as exc:
        raise PriceFileError(f"the price file {path} is not JSON ({exc}); see docs/cost.md for its shape") from None
    if not isinstance(data, dict):
        raise PriceFileError(f"the price file {path} must hold a JSON object; see docs/cost.md for its shape")
    on_demand = dict(SHIPPED.on_demand)
    gpus: dict[str, int] = {}
    for name, value in (data.get("on_demand") or {}).items():
        if isinstance(value, dict):
            if value.get("gpus") is not None:
                gpus[name] = _positive_int(path, name, value["gpus"])
            value = value.get("usd_per_hour")
        on_demand[name] = _price(path, name, value)
    spot = {name: _price(path, name, value) for name, value in (data.get("spot") or {}).items()}
    share = spot_share if spot_share is not None else data.get("spot_share", DEFAULT_SPOT_SHARE)
    return PriceTable(
        on_demand=on_demand,
        spot=spot,
        spot_share=check_spot_share(share, where=path),
        gpus=gpus,
        region=str(data.get("region") or SHIPPED.region),
        as_of=str(data.get("as_of") or "as given"),
        source=str(data.get("source") or path),
    )


def check_spot_share(value: Any, *, where: str) -> float:
    share = shared_prices.spot_share_or_none(value)
    if share is None:
        raise PriceFileError(f"spot_share in {where} must be a number in (0, 1], got {value!r}")
    return share


def _price(path: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise PriceFileError(f"the price of {name} in {path} must be USD per hour (a number >= 0), got {value!r}")
    return float(value)


def _positive_int(path: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PriceFileError(f"gpus of {name} in {path} must be a whole number >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class JobUsage:
    """What a backend knows of where and how long a job ran (epoch seconds)."""

    job_id: str
    status: str
    created_at: float | None = None
    stopped_at: float | None = None
    #: Seconds the job's attempts ran (held an instance), summed over retries.
    run_s: float | None = None
    gpus: int = 0
    instance_type: str | None = None
    market: str | None = None  # ON_DEMAND, SPOT, LOCAL, or None when unknown
    tags: Mapping[str, str] = field(default_factory=dict)
    queue: str | None = None  # the job queue's name (None on a backend without queues)


@dataclass(frozen=True)
class Bill:
    """A job's times, GPU-hours and estimated cost; ``cost_usd`` is None when unknown."""

    job_id: str
    status: str
    wall_s: float | None
    queue_s: float | None
    run_s: float | None
    gpus: int
    instance_type: str | None
    market: str | None
    gpu_hours: float | None
    cost_usd: float | None
    #: Why the cost is what it is: the share and price used, or why there is none.
    basis: str
    share: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """For XCom: numbers rounded to what a person would read, plus the basis in words."""
        return {
            "wall_s": _round(self.wall_s, 1),
            "queue_s": _round(self.queue_s, 1),
            "run_s": _round(self.run_s, 1),
            "instance_type": self.instance_type,
            "market": self.market,
            "gpus": self.gpus,
            "share_of_instance": _round(self.share, 4),
            "gpu_hours": _round(self.gpu_hours, 4),
            "cost_usd": _round(self.cost_usd, 4),
            "cost_basis": self.basis,
        }

    def cost_text(self) -> str:
        if self.market == LOCAL:
            return "cost: local"
        return "cost unknown" if self.cost_usd is None else f"~${self.cost_usd:,.2f}"

    def line(self) -> str:
        """The task log's last line for the job."""
        if self.market == LOCAL:
            return f"Job {self.job_id} {self.status}: wall {duration(self.wall_s)}, {self.cost_text()}"
        where = self.instance_type or "an unknown instance type"
        if self.market:
            where += f" ({self.market})"
        hours = "-" if self.gpu_hours is None else f"{self.gpu_hours:.3f}"
        return (
            f"Job {self.job_id} {self.status}: wall {duration(self.wall_s)} (queued {duration(self.queue_s)}, "
            f"ran {duration(self.run_s)}) on {where}, {hours} GPU-h, {self.cost_text()} ({self.basis})"
        )


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def bill(usage: JobUsage, prices: PriceTable = SHIPPED) -> Bill:
    """The bill of one job, from what its backend reported and a price table."""
    wall = None
    if usage.created_at is not None and usage.stopped_at is not None:
        wall = max(0.0, usage.stopped_at - usage.created_at)
    run = usage.run_s
    queue = None if wall is None or run is None else max(0.0, wall - run)
    gpu_hours = None if run is None else run / 3600 * usage.gpus

    def made(basis: str, cost: float | None = None, share: float | None = None) -> Bill:
        return Bill(
            job_id=usage.job_id,
            status=usage.status,
            wall_s=wall,
            queue_s=queue,
            run_s=run,
            gpus=usage.gpus,
            instance_type=usage.instance_type,
            market=usage.market,
            gpu_hours=gpu_hours,
            cost_usd=cost,
            basis=basis,
            share=share,
        )

    if usage.market == LOCAL:
        return made("ran on this machine")
    if run is None:
        return made("the run time is not known")
    if not usage.instance_type:
        return made("the instance type is not known")
    priced = prices.hourly(usage.instance_type, usage.market or ON_DEMAND)
    if priced is None:
        return made(f"no price for {usage.instance_type} in the price table")
    hourly, how = priced
    if usage.market is None:
        how += " (market unknown)"
    share, share_text = shared_prices.reserved_share(usage.gpus, prices.instance_gpus(usage.instance_type))
    return made(
        f"{share_text} at ${hourly:.4g}/h, {how}, {prices.region} prices of {prices.as_of}",
        shared_prices.cost_usd(run, hourly, share),
        share,
    )
