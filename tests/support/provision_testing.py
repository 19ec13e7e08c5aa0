"""batch-setup's test inputs: the example config, a TOML writer, the ids a user makes first, and one CLI run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_gpu.cli import main

ACCOUNT = "123456789012"

EXAMPLE = Path(__file__).resolve().parents[2] / "container" / "batch-setup.example.toml"


def to_toml(data: dict) -> str:
    """Just enough TOML for these configs: top-level values, then one table per dict."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for table, body in data.items():
        if isinstance(body, dict):
            lines.append(f"[{table}]")
            lines.extend(f"{json.dumps(k)} = {value(v)}" for k, v in body.items())
    return "\n".join(lines) + "\n"


SLR_PATH = "/aws-service-role/batch.amazonaws.com/"


@pytest.fixture
def ids(moto_aws):
    """What a user creates before batch-setup: roles, an instance profile, subnets, a security group."""
    iam = moto_aws.client("iam")
    ec2 = moto_aws.client("ec2")
    # The service-linked role, at the path and name AWS gives it (moto's create_service_linked_role
    # spells the name AWSServiceRoleForbatch, so create it as a role with the real name).
    slr = iam.create_role(RoleName="AWSServiceRoleForBatch", Path=SLR_PATH, AssumeRolePolicyDocument="{}")["Role"][
        "Arn"
    ]
    custom = iam.create_role(RoleName="AWSBatchServiceRole", Path="/service-role/", AssumeRolePolicyDocument="{}")[
        "Role"
    ]["Arn"]
    job_role = iam.create_role(RoleName="airflow-gpu-job", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")["InstanceProfile"]["Arn"]
    iam.create_role(RoleName="ecsInstanceRole", AssumeRolePolicyDocument="{}")
    iam.add_role_to_instance_profile(InstanceProfileName="ecsInstanceRole", RoleName="ecsInstanceRole")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"] for i in range(3)]
    sg = ec2.create_security_group(GroupName="batch", Description="batch", VpcId=vpc)["GroupId"]
    # The worker image that config() names, pushed to ECR.
    ecr = moto_aws.client("ecr")
    ecr.create_repository(repositoryName="airflow-gpu-worker")
    ecr.put_image(
        repositoryName="airflow-gpu-worker",
        imageTag="0.1.0",
        imageManifest=json.dumps(
            {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "layers": []}
        ),
    )
    moto_aws.log.reset()
    return {
        "service_role": slr,
        "custom_service_role": custom,
        "job_role": job_role,
        "instance_role": profile,
        "subnets": subnets,
        "security_group": sg,
        "vpc": vpc,
    }


def config(ids: dict, **tables) -> dict:
    data = {
        "prefix": "gpu-test",
        "region": "us-east-1",
        "compute": {
            "instance_types": ["g6.xlarge", "g5.xlarge"],
            "max_vcpus": 64,
            "provisioning": "spot",
            "subnets": ids["subnets"][:2],
            "security_groups": [ids["security_group"]],
            "instance_role": ids["instance_role"],
            "service_role": ids["service_role"],
        },
        "job": {
            "image": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/airflow-gpu-worker:0.1.0",
            "job_role": ids["job_role"],
            "vcpus": 4,
            "memory_mib": 15000,
            "gpus": 1,
            "timeout_seconds": 3600,
            "retry_attempts": 3,
        },
        "logs": {"group": "/aws/batch/gpu-test", "retention_days": 14},
        "tags": {"team": "recs"},
    }
    for table, changes in tables.items():
        if isinstance(changes, dict):
            data.setdefault(table, {}).update(changes)
        else:
            data[table] = changes
    return data


def run(moto_aws, tmp_path, capsys, data_or_text, *flags, endpoint=True):
    path = tmp_path / "batch.toml"
    path.write_text(data_or_text if isinstance(data_or_text, str) else to_toml(data_or_text))
    argv = ["batch-setup", "--config", str(path), "--poll-interval", "0.01", *flags]
    if endpoint:
        argv += ["--endpoint-url", moto_aws.endpoint_url]
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err
