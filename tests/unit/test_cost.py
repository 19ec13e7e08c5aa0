"""The bill's arithmetic: run time x hourly price x share of the instance; Spot, on-demand, unknown types."""

from __future__ import annotations

import json

import pytest

from airflow_gpu.jobs.cost import (
    LOCAL,
    ON_DEMAND,
    SHIPPED,
    SPOT,
    JobUsage,
    PriceFileError,
    bill,
    duration,
    read_price_file,
)


def _usage(**more) -> JobUsage:
    base = dict(
        job_id="j-1", status="SUCCEEDED", created_at=1000.0, stopped_at=1000.0 + 120 + 3600, run_s=3600.0, gpus=1
    )
    return JobUsage(**{**base, **more})


def test_an_on_demand_job_pays_its_run_time_at_the_full_price_of_a_one_gpu_instance():
    b = bill(_usage(instance_type="g5.xlarge", market=ON_DEMAND))
    assert b.wall_s == 3720 and b.queue_s == 120 and b.run_s == 3600
    assert b.gpu_hours == pytest.approx(1.0)
    assert b.cost_usd == pytest.approx(1.006)
    assert b.share == 1.0
    assert "1/1 of the instance" in b.basis and "us-east-1" in b.basis
    assert b.as_dict()["cost_usd"] == pytest.approx(1.006)


def test_one_gpu_of_an_eight_gpu_instance_pays_an_eighth():
    b = bill(_usage(instance_type="p5.48xlarge", market=ON_DEMAND, run_s=1800.0, stopped_at=2800.0))
    assert b.share == pytest.approx(1 / 8)
    assert b.cost_usd == pytest.approx(55.04 / 8 / 2)
    assert b.as_dict()["share_of_instance"] == 0.125
    assert "1/8 of the instance" in b.basis


def test_spot_is_priced_at_the_configured_share_of_on_demand_unless_the_table_gives_a_spot_price(tmp_path):
    assert bill(_usage(instance_type="g6.xlarge", market=SPOT)).cost_usd == pytest.approx(0.8048 * 0.4)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"spot_share": 0.25, "spot": {"g5.xlarge": 0.3}}))
    table = read_price_file(str(prices))
    assert bill(_usage(instance_type="g6.xlarge", market=SPOT), table).cost_usd == pytest.approx(0.8048 * 0.25)
    spot = bill(_usage(instance_type="g5.xlarge", market=SPOT), table)
    assert spot.cost_usd == pytest.approx(0.3) and "spot price from the table" in spot.basis


def test_an_unpriced_type_says_cost_unknown_and_never_a_figure():
    b = bill(_usage(instance_type="g5.48xlarge", market=ON_DEMAND))
    assert b.cost_usd is None and b.cost_text() == "cost unknown"
    assert b.gpu_hours == pytest.approx(1.0)  # the GPU-hours are still known
    assert "no price for g5.48xlarge" in b.line()
    assert "$" not in b.line()
    assert bill(_usage(instance_type=None)).cost_text() == "cost unknown"
    assert bill(_usage(instance_type="g5.xlarge", run_s=None)).cost_usd is None


def test_a_deployment_file_prices_its_own_types_with_their_gpus(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            {
                "region": "eu-west-1",
                "as_of": "2027-01",
                "on_demand": {"x9.big": {"usd_per_hour": 8.0, "gpus": 4}, "g5.xlarge": 1.2},
            }
        )
    )
    table = read_price_file(str(prices))
    b = bill(_usage(instance_type="x9.big", market=ON_DEMAND, gpus=2), table)
    assert b.cost_usd == pytest.approx(4.0) and "eu-west-1 prices of 2027-01" in b.basis
    assert bill(_usage(instance_type="g5.xlarge"), table).cost_usd == pytest.approx(1.2)
    assert bill(_usage(instance_type="p5.48xlarge", gpus=8), table).cost_usd == pytest.approx(
        55.04
    )  # shipped still apply


@pytest.mark.parametrize(
    "content, match",
    [
        ("not json", "is not JSON"),
        (json.dumps({"on_demand": {"g5.xlarge": "cheap"}}), "must be USD per hour"),
        (json.dumps({"spot_share": 2}), "spot_share"),
        (json.dumps([1]), "JSON object"),
    ],
)
def test_a_bad_price_file_is_named_with_what_to_fix(tmp_path, content, match):
    prices = tmp_path / "prices.json"
    prices.write_text(content)
    with pytest.raises(PriceFileError, match=match):
        read_price_file(str(prices))


def test_a_missing_price_file_names_the_setting():
    with pytest.raises(PriceFileError, match=r"\[airflow_gpu\] prices"):
        read_price_file("/nonexistent/prices.json")


def test_a_local_job_reports_its_wall_time_and_cost_local():
    b = bill(JobUsage(job_id="l-1", status="SUCCEEDED", created_at=0.0, stopped_at=151.0, run_s=150.0, market=LOCAL))
    assert b.line() == "Job l-1 SUCCEEDED: wall 2 min 31 s, cost: local"
    assert b.cost_usd is None


def test_the_shipped_table_prices_only_types_batch_setup_offers():
    from airflow_gpu.provision.instances import INSTANCE_TYPES

    assert set(SHIPPED.on_demand) <= set(INSTANCE_TYPES)


def test_durations_read_like_a_person_writes_them():
    assert [duration(s) for s in (None, 5, 151, 7322)] == ["-", "5 s", "2 min 31 s", "2 h 2 min"]


def test_the_price_file_example_in_docs_cost_md_reads(tmp_path):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "cost.md").read_text()
    example = text.split("```json\n", 1)[1].split("```", 1)[0]
    prices = tmp_path / "prices.json"
    prices.write_text(example)
    table = read_price_file(str(prices))
    assert bill(_usage(instance_type="x9.big", market=ON_DEMAND, gpus=1), table).cost_usd == pytest.approx(4.5)
    assert bill(_usage(instance_type="g5.xlarge", market=SPOT), table).cost_usd == pytest.approx(0.41)
    assert bill(_usage(instance_type="g6.xlarge", market=SPOT), table).cost_usd == pytest.approx(0.8048 * 0.35)


def test_a_deployment_points_airflow_gpu_prices_at_its_file_and_sets_the_spot_share(tmp_path, monkeypatch):
    from airflow_gpu.config import price_table

    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"on_demand": {"g5.2xlarge": 1.212}}))
    monkeypatch.delenv("AIRFLOW_GPU_PRICES", raising=False)
    assert "g5.2xlarge" not in price_table().on_demand  # the shipped table alone
    monkeypatch.setenv("AIRFLOW__AIRFLOW_GPU__PRICES", str(prices))
    monkeypatch.setenv("AIRFLOW__AIRFLOW_GPU__SPOT_PRICE_SHARE", "0.3")
    table = price_table()
    assert table.on_demand["g5.2xlarge"] == 1.212 and table.spot_share == 0.3
    monkeypatch.delenv("AIRFLOW__AIRFLOW_GPU__PRICES")
    monkeypatch.setenv("AIRFLOW_GPU_PRICES", str(prices))  # the terminal's way, and a fallback
    assert price_table(airflow_config=False).on_demand["g5.2xlarge"] == 1.212
    monkeypatch.setenv("AIRFLOW__AIRFLOW_GPU__SPOT_PRICE_SHARE", "half")
    with pytest.raises(PriceFileError, match="spot_price_share"):
        price_table()
