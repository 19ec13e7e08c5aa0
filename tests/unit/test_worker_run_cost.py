"""The worker's estimate of its run's cost: the shared price table's arithmetic (airflow_gpu/prices.py),
the same as the Airflow side's bill for the same run, and every gap said as "cost unknown"."""

from __future__ import annotations

import pytest

from airflow_gpu import prices
from airflow_gpu.jobs.cost import JobUsage, bill
from airflow_gpu.worker.instance import DEFAULT_ENDPOINT, IPV6_ENDPOINT, Placement, endpoint
from airflow_gpu.worker.run_cost import estimate, forget_placement, run_cost, visible_gpus


@pytest.fixture(autouse=True)
def _ask_again():
    forget_placement()
    yield
    forget_placement()


def test_an_on_demand_g5_run_costs_its_run_time_at_the_tables_price():
    cost = estimate(Placement("g5.xlarge", "on-demand"), run_s=151, gpus=1)
    assert cost["cost_usd"] == pytest.approx(151 / 3600 * 1.006, abs=1e-4)
    assert cost["share_of_instance"] == 1.0 and cost["usd_per_hour"] == 1.006
    assert cost["text"].startswith("Estimated cost ~$0.04: 2 min 31 s on g5.xlarge (on-demand), 1/1 of the instance")
    assert "us-east-1 prices of" in cost["text"]


def test_one_gpu_of_a_p5_pays_an_eighth_of_the_instance():
    cost = estimate(Placement("p5.48xlarge", "on-demand"), run_s=3600, gpus=1)
    assert cost["share_of_instance"] == 0.125 and cost["cost_usd"] == pytest.approx(55.04 / 8, abs=1e-4)
    assert "1/8 of the instance" in cost["cost_basis"]


def test_spot_is_priced_at_the_configured_share_and_says_so(monkeypatch):
    cost = estimate(Placement("g6.xlarge", "spot"), run_s=3600, gpus=1, spot_share=0.3)
    assert cost["cost_usd"] == pytest.approx(0.8048 * 0.3, abs=1e-4)
    assert "spot at 30% of on-demand" in cost["text"]
    default = estimate(Placement("g6.xlarge", "spot"), run_s=3600, gpus=1)
    assert default["cost_usd"] == pytest.approx(0.8048 * prices.DEFAULT_SPOT_SHARE, abs=1e-4)


def test_an_unknown_market_is_priced_on_demand_and_says_the_market_is_unknown():
    cost = estimate(Placement("g5.xlarge", None), run_s=3600, gpus=1)
    assert cost["cost_usd"] == pytest.approx(1.006, abs=1e-4) and "on-demand (market unknown)" in cost["text"]


@pytest.mark.parametrize(
    ("where", "run_s", "says"),
    [
        (Placement("g5.2xlarge", "on-demand"), 60.0, "no price for g5.2xlarge in the price table"),
        (Placement(None, why_unknown="the service did not answer"), 60.0, "the service did not answer"),
        (Placement("g5.xlarge", "on-demand"), None, "the run time is not known"),
    ],
)
def test_what_cannot_be_priced_says_cost_unknown_and_no_figure(where, run_s, says):
    cost = estimate(where, run_s=run_s, gpus=1)
    assert cost["cost_usd"] is None and cost["text"].startswith("Cost unknown: ") and says in cost["text"]
    assert "$" not in cost["text"]


@pytest.mark.parametrize(
    ("instance_type", "market", "gpus", "run_s"),
    [("g5.xlarge", "on-demand", 1, 151.0), ("p5.48xlarge", "on-demand", 4, 5000.0), ("g6e.xlarge", "spot", 1, 900.0)],
)
def test_the_worker_prices_a_run_as_the_airflow_side_bills_it(instance_type, market, gpus, run_s):
    ours = estimate(Placement(instance_type, market), run_s=run_s, gpus=gpus)
    theirs = bill(JobUsage("j", "SUCCEEDED", 0.0, run_s, run_s, gpus, instance_type, market))
    assert ours["cost_usd"] == pytest.approx(theirs.cost_usd, abs=1e-4)
    assert ours["cost_basis"] == theirs.basis


def test_the_shared_tables_gpus_agree_with_the_provisioning_table():
    from airflow_gpu.provision.instances import INSTANCE_TYPES

    assert set(prices.INSTANCE_GPUS) == set(prices.ON_DEMAND_USD_PER_HOUR)
    assert {name: INSTANCE_TYPES[name].gpus for name in prices.INSTANCE_GPUS} == prices.INSTANCE_GPUS


def test_off_batch_nothing_is_asked_and_the_local_backend_says_local():
    assert "not on AWS Batch" in run_cost({"duration_s": 5.0}, environ={})["text"]
    local = run_cost({"duration_s": 5.0}, environ={"AIRFLOW_GPU_JOB_ID": "local-1"})
    assert local["text"] == "Cost: local (ran on this machine)." and local["cost_usd"] is None


def test_a_bad_spot_share_names_the_variable_and_the_fix():
    cost = run_cost({"duration_s": 5.0}, environ={"AWS_BATCH_JOB_ID": "j", prices.SPOT_SHARE_ENV: "half"})
    assert cost["cost_usd"] is None
    assert "$AIRFLOW_GPU_SPOT_PRICE_SHARE='half' is not a number in (0, 1]" in cost["text"]


@pytest.mark.parametrize(
    ("environ", "gpus"),
    [({}, 0), ({"NVIDIA_VISIBLE_DEVICES": "all"}, 0), ({"NVIDIA_VISIBLE_DEVICES": "0,3"}, 2)],
)
def test_the_gpus_held_come_from_the_profile_else_nvidia_visible_devices(environ, gpus):
    assert visible_gpus(None, environ) == gpus
    assert visible_gpus({"gpus": [{"index": 0}]}, environ) == 1


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, DEFAULT_ENDPOINT),
        ({"AWS_EC2_METADATA_DISABLED": "TRUE"}, None),
        ({"AWS_EC2_METADATA_DISABLED": "false"}, DEFAULT_ENDPOINT),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"}, "http://127.0.0.1:9/"),
        ({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}, IPV6_ENDPOINT),
    ],
)
def test_the_metadata_endpoint_follows_the_sdk_settings(environ, expected):
    assert endpoint(environ) == expected
