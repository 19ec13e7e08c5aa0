"""batch-setup config validation: every bad config gets one clear error naming the key and the fix."""

from __future__ import annotations

import pytest

from airflow_gpu.provision import ConfigError, parse_config
from airflow_gpu.provision.desired import compute_environment_request, job_definition_request
from airflow_gpu.provision.instances import INSTANCE_TYPES, SUPPORTED_FAMILIES, resolve
from tests.support.provision_testing import EXAMPLE, to_toml

ACCOUNT = "123456789012"
SLR = f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/batch.amazonaws.com/AWSServiceRoleForBatch"


def good_config() -> dict:
    return {
        "prefix": "airflow-gpu",
        "region": "us-east-1",
        "compute": {
            "instance_types": ["g6.xlarge", "g5.xlarge"],
            "max_vcpus": 64,
            "provisioning": "spot",
            "subnets": ["subnet-0123456789abcdef0"],
            "security_groups": ["sg-0123456789abcdef0"],
            "instance_role": f"arn:aws:iam::{ACCOUNT}:instance-profile/ecsInstanceRole",
            "service_role": SLR,
        },
        "job": {
            "image": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/airflow-gpu-worker:0.1.0",
            "job_role": f"arn:aws:iam::{ACCOUNT}:role/airflow-gpu-job",
            "vcpus": 4,
            "memory_mib": 15000,
            "gpus": 1,
        },
        "logs": {"group": "/aws/batch/airflow-gpu", "retention_days": 30},
        "tags": {"project": "airflow-gpu"},
    }


def edited(**tables) -> str:
    """good_config() with keys replaced (a value of None removes the key)."""
    data = good_config()
    for table, changes in tables.items():
        if not isinstance(changes, dict):
            data[table] = changes
            continue
        for key, val in changes.items():
            if val is None:
                data[table].pop(key, None)
            else:
                data[table][key] = val
    return to_toml(data)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="batch.toml")
    assert "nothing was sent to AWS" in str(err.value)
    return err.value.problems


def test_good_config_builds_the_requests():
    cfg = parse_config(to_toml(good_config()))
    assert cfg.compute_environment_name == "airflow-gpu-ce"
    assert cfg.job_queue_name == "airflow-gpu-queue"
    assert cfg.job_definition_name == "airflow-gpu-worker"
    assert cfg.compute.allocation_strategy == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert cfg.warnings == ()
    ce = compute_environment_request(cfg)
    assert ce["computeResources"]["minvCpus"] == 0
    assert ce["computeResources"]["ec2Configuration"] == [{"imageType": "ECS_AL2023_NVIDIA"}]
    assert ce["computeResources"]["type"] == "SPOT"
    jd = job_definition_request(cfg)
    assert {r["type"]: r["value"] for r in jd["containerProperties"]["resourceRequirements"]} == {
        "GPU": "1",
        "VCPU": "4",
        "MEMORY": "15000",
    }
    assert jd["retryStrategy"]["evaluateOnExit"] == [
        {"onStatusReason": "Host EC2*", "action": "RETRY"},
        {"onStatusReason": "*", "action": "EXIT"},
    ]


@pytest.mark.parametrize(
    ("tables", "key", "words"),
    [
        ({"compute": {"instance_types": ["m5.xlarge"]}}, "compute.instance_types[0]", ["no NVIDIA GPU", "g5.xlarge"]),
        ({"compute": {"instance_types": ["g4dn.xlarge"]}}, "compute.instance_types[0]", ["T4", "8.0"]),
        ({"compute": {"instance_types": ["p3.2xlarge"]}}, "compute.instance_types[0]", ["V100"]),
        ({"compute": {"instance_types": ["g6f.xlarge"]}}, "compute.instance_types[0]", ["whole GPUs"]),
        ({"compute": {"instance_types": ["g5.3xlarge"]}}, "compute.instance_types[0]", ["not a size of the g5 family"]),
        ({"compute": {"instance_types": []}}, "compute.instance_types", ["non-empty list"]),
        (
            {"job": {"memory_mib": 16384}},
            "job needs",
            ["memory_mib 16384", "g5.xlarge", "larger type such as g5.2xlarge"],
        ),
        ({"job": {"gpus": 2}}, "job needs", ["job.gpus 2 > 1", "g5.12xlarge"]),
        ({"job": {"vcpus": 8}}, "job needs", ["job.vcpus 8 > 4"]),
        ({"job": {"gpus": 0}}, "job.gpus", ["between 1 and 8"]),
        ({"job": {"vcpus": "4"}}, "job.vcpus", ["whole number"]),
        ({"compute": {"max_vcpus": 2}, "job": {"vcpus": 4}}, "compute.max_vcpus", ["below job.vcpus"]),
        ({"compute": {"instance_role": None}}, "compute.instance_role", ["is missing", "instance-profile"]),
        (
            {"compute": {"instance_role": f"arn:aws:iam::{ACCOUNT}:role/ecsInstanceRole"}},
            "compute.instance_role",
            ["is a role", "instance profile"],
        ),
        ({"compute": {"service_role": None}}, "compute.service_role", ["is missing", "AWSServiceRoleForBatch"]),
        ({"compute": {"service_role": "ecsServiceRole"}}, "compute.service_role", ["not an IAM role ARN"]),
        ({"job": {"job_role": None}}, "job.job_role", ["is missing"]),
        ({"compute": {"subnets": None}}, "compute.subnets", ["is missing"]),
        ({"compute": {"subnets": ["subnet-1"]}}, "compute.subnets[0]", ["not a subnet id"]),
        ({"compute": {"security_groups": None}}, "compute.security_groups", ["is missing"]),
        ({"compute": {"subnets": ["<SUBNET_ID_A>"]}}, "compute.subnets[0]", ["placeholder"]),
        ({"compute": {"max_vcpu": 64}}, "compute.max_vcpu", ["not a known key", "max_vcpus"]),
        ({"compute": {"provisioning": "reserved"}}, "compute.provisioning", ["spot", "on-demand"]),
        (
            {"compute": {"provisioning": "on-demand", "allocation_strategy": "SPOT_CAPACITY_OPTIMIZED"}},
            "compute.allocation_strategy",
            ["not allowed with on-demand", "BEST_FIT_PROGRESSIVE"],
        ),
        ({"compute": {"allocation_strategy": "BEST_FIT"}}, "compute.allocation_strategy", ["blocks in-place updates"]),
        ({"compute": {"provisioning": "on-demand", "bid_percentage": 50}}, "compute.bid_percentage", ["spot only"]),
        ({"logs": {"retention_days": 31}}, "logs.retention_days", ["not a value CloudWatch Logs accepts", "30"]),
        ({"job": {"environment": {"AWS_BATCH_X": "1"}}}, "job.environment.AWS_BATCH_X", ["reserves"]),
        ({"job": {"timeout_seconds": 10}}, "job.timeout_seconds", ["between 60"]),
        ({"job": {"retry_attempts": 11}}, "job.retry_attempts", ["between 1 and 10"]),
        ({"job": {"shared_memory_mib": 15000}}, "job.shared_memory_mib", ["below job.memory_mib", "/dev/shm"]),
        ({"region": "mars-1"}, "region", ["not an AWS region"]),
        ({"prefix": "-bad"}, "prefix", ["name prefix"]),
        ({"tags": {"aws:owner": "me"}}, "tags.aws:owner", ["may not start with 'aws:'"]),
    ],
)
def test_each_bad_config_names_the_key_and_the_fix(tables, key, words):
    problems = problems_of(edited(**tables))
    assert len(problems) == 1, problems
    assert problems[0].startswith(key), problems[0]
    for word in words:
        assert word in problems[0], (word, problems[0])


def test_all_problems_are_reported_at_once():
    problems = problems_of(edited(compute={"subnets": None, "instance_types": ["t3.large"]}, job={"job_role": None}))
    assert [p.split(" ", 1)[0] for p in problems] == ["compute.instance_types[0]", "compute.subnets", "job.job_role"]


def test_not_toml_is_one_clear_error():
    assert problems_of("prefix = \n")[0].startswith("not valid TOML")


def test_the_example_as_shipped_points_at_every_placeholder():
    problems = problems_of(EXAMPLE.read_text())
    keys = {p.split(" ", 1)[0] for p in problems}
    assert keys == {
        "compute.subnets[0]",
        "compute.subnets[1]",
        "compute.security_groups[0]",
        "compute.instance_role",
        "compute.service_role",
        "job.image",
        "job.job_role",
    }
    assert all("placeholder" in p for p in problems)


def test_example_with_ids_replaced_is_valid():
    text = EXAMPLE.read_text()
    for placeholder, value in {
        "<SUBNET_ID_A>": "subnet-0123456789abcdef0",
        "<SUBNET_ID_B>": "subnet-0123456789abcdef1",
        "<SECURITY_GROUP_ID>": "sg-0123456789abcdef0",
        "<ACCOUNT_ID>": ACCOUNT,
    }.items():
        text = text.replace(placeholder, value)
    cfg = parse_config(text)
    assert cfg.warnings == ()
    assert cfg.region == "us-east-1"


def test_warnings_for_risky_but_valid_choices():
    cfg = parse_config(
        edited(
            compute={
                "service_role": f"arn:aws:iam::{ACCOUNT}:role/service-role/AWSBatchServiceRole",
                "instance_types": ["g6.xlarge", "p5.48xlarge"],
            },
            job={"image": "example.com/worker:latest", "memory_mib": 15000},
        )
    )
    text = "\n".join(cfg.warnings)
    assert "only max_vcpus in place" in text
    assert "no fixed tag" in text
    assert len(cfg.warnings) == 2
    # An instance type too small for the job is wasted, not fatal, while another type fits.
    cfg = parse_config(
        edited(compute={"instance_types": ["g6.xlarge", "g6.2xlarge"]}, job={"vcpus": 8, "memory_mib": 30000})
    )
    assert any("g6.xlarge cannot hold one job" in w for w in cfg.warnings)


def test_region_flag_overrides_the_file():
    assert parse_config(to_toml(good_config()), region="eu-west-1").region == "eu-west-1"
    with pytest.raises(ConfigError, match="--region 'nowhere'"):
        parse_config(to_toml(good_config()), region="nowhere")


def test_families_resolve_to_every_size():
    assert [t.name for t in resolve("p5")] == ["p5.4xlarge", "p5.48xlarge"]
    cfg = parse_config(edited(compute={"instance_types": ["g6e"]}, job={"memory_mib": 30000}))
    assert cfg.compute.instance_types == ("g6e",)


def test_instance_table_matches_ec2_facts_recorded_by_moto():
    """Our GPU table against an independent copy of EC2 DescribeInstanceTypes (moto ships one)."""
    from moto.ec2.models.instance_types import INSTANCE_TYPES as EC2

    assert len(INSTANCE_TYPES) == sum(len(f.sizes) for f in SUPPORTED_FAMILIES.values())
    for name, ours in INSTANCE_TYPES.items():
        facts = EC2[name]
        gpus = sum(g["Count"] for g in facts["GpuInfo"]["Gpus"])
        assert (ours.gpus, ours.vcpus, ours.memory_mib) == (
            gpus,
            facts["VCpuInfo"]["DefaultVCpus"],
            facts["MemoryInfo"]["SizeInMiB"],
        ), name
        assert facts["GpuInfo"]["Gpus"][0]["Manufacturer"] == "NVIDIA", name
    # Every size EC2 lists for a supported family is in the table.
    for family in SUPPORTED_FAMILIES:
        ec2_sizes = {n for n, f in EC2.items() if n.split(".")[0] == family and f.get("GpuInfo")}
        assert ec2_sizes <= set(INSTANCE_TYPES), (family, ec2_sizes - set(INSTANCE_TYPES))


def test_memory_headroom_is_below_what_ecs_registers():
    # AWS: an 8 GiB m4.large registers 7985 MiB, minus 32 MiB the agent keeps; our share is stricter.
    g5 = INSTANCE_TYPES["g5.xlarge"]
    assert g5.job_memory_mib < 16384 * 7953 // 8192
    assert g5.fits(1, 4, 15000) and not g5.fits(1, 4, 16000)
