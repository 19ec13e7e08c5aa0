"""What batch-setup builds on but does not create: roles, the instance profile, network, the image.

A plan made from plausible but wrong ids reads fine, and the real run then fails half-way
(AWS checks a compute environment's roles and subnets only when it creates it, and a job's
image only when the job starts). So ``--dry-run`` looks each of them up, read-only, and
reports every one that is missing together with the AWS CLI command that creates it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import botocore.exceptions

from .aws import Clients, aws_errors
from .config import SERVICE_LINKED_ROLE_NAME, BatchSetupConfig

_ECR_IMAGE = re.compile(
    r"^(?P<registry>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[a-z0-9][a-z0-9._/-]*?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
_NOT_FOUND = ("NoSuchEntity", "NoSuchEntityException")


def _trust(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        },
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class Missing:
    """One thing the config names that AWS does not have, and how to make it."""

    what: str
    problem: str
    create: tuple[str, ...]

    def render(self) -> list[str]:
        return [f"{self.what} {self.problem}; create it with:", *(f"      {line}" for line in self.create)]


def check_dependencies(cfg: BatchSetupConfig, clients: Clients) -> list[Missing]:
    """Everything the set-up depends on that is missing, in the order a user would create it."""
    missing: list[Missing] = []
    missing += _check_service_role(cfg, clients)
    missing += _check_instance_profile(cfg, clients)
    missing += _check_job_role(cfg, clients)
    missing += _check_network(cfg, clients)
    missing += _check_image(cfg, clients)
    return missing


def _name(arn_or_name: str) -> str:
    return arn_or_name.rstrip("/").rsplit("/", 1)[-1]


def _exists(call: Callable[[], Any], doing: str) -> bool:
    """True if ``call`` finds it, False on IAM's not-found; any other error is the user's to fix (AccessDenied...)."""
    with aws_errors(doing):
        try:
            call()
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return False
            raise
    return True


def _check_service_role(cfg: BatchSetupConfig, clients: Clients) -> list[Missing]:
    arn = cfg.compute.service_role
    name = _name(arn)
    if _exists(lambda: clients.iam.get_role(RoleName=name), f"looking up the Batch service role {name}"):
        return []
    create: tuple[str, ...]
    if name == SERVICE_LINKED_ROLE_NAME:
        create = ("aws iam create-service-linked-role --aws-service-name batch.amazonaws.com",)
    else:
        path = arn.split(":role", 1)[-1].rsplit("/", 1)[0] + "/"
        create = (
            f"aws iam create-role --role-name {name} --path {path} --assume-role-policy-document '{_trust('batch.amazonaws.com')}'",
            f"aws iam attach-role-policy --role-name {name} --policy-arn arn:aws:iam::aws:policy/service-role/AWSBatchServiceRole",
        )
    return [Missing(f"compute.service_role {arn}", "does not exist", create)]


def _check_instance_profile(cfg: BatchSetupConfig, clients: Clients) -> list[Missing]:
    profile = cfg.compute.instance_role
    name = _name(profile)
    found: dict[str, Any] = {}

    def look_up() -> None:
        found.update(clients.iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"])

    if _exists(look_up, f"looking up the instance profile {name}"):
        if found.get("Roles"):
            return []
        # An empty profile gives the hosts no credentials: the ECS agent cannot register and the
        # compute environment never gets an instance to run on.
        return [
            Missing(
                f"compute.instance_role {profile}",
                "holds no role",
                (
                    f"aws iam add-role-to-instance-profile --instance-profile-name {name} --role-name ecsInstanceRole",
                    "(a role trusted by ec2.amazonaws.com with AmazonEC2ContainerServiceforEC2Role attached)",
                ),
            )
        ]
    return [
        Missing(
            f"compute.instance_role {profile}",
            "does not exist",
            (
                f"aws iam create-role --role-name {name} --assume-role-policy-document '{_trust('ec2.amazonaws.com')}'",
                f"aws iam attach-role-policy --role-name {name} --policy-arn arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role",
                f"aws iam create-instance-profile --instance-profile-name {name}",
                f"aws iam add-role-to-instance-profile --instance-profile-name {name} --role-name {name}",
            ),
        )
    ]


def _check_job_role(cfg: BatchSetupConfig, clients: Clients) -> list[Missing]:
    arn = cfg.job.job_role
    name = _name(arn)
    if _exists(lambda: clients.iam.get_role(RoleName=name), f"looking up the job role {name}"):
        return []
    return [
        Missing(
            f"job.job_role {arn}",
            "does not exist",
            (
                f"aws iam create-role --role-name {name} --assume-role-policy-document '{_trust('ecs-tasks.amazonaws.com')}'",
                f"aws iam put-role-policy --role-name {name} --policy-name airflow-gpu-job --policy-document file://container/iam/job-role.json",
                "(edit the bucket names in container/iam/job-role.json first)",
            ),
        )
    ]


def _check_network(cfg: BatchSetupConfig, clients: Clients) -> list[Missing]:
    c = cfg.compute
    with aws_errors("looking up the subnets"):
        subnets = clients.ec2.describe_subnets(Filters=[{"Name": "subnet-id", "Values": list(c.subnets)}])["Subnets"]
    with aws_errors("looking up the security groups"):
        groups = clients.ec2.describe_security_groups(
            Filters=[{"Name": "group-id", "Values": list(c.security_groups)}]
        )["SecurityGroups"]
    vpc_of = {s["SubnetId"]: s["VpcId"] for s in subnets}
    vpc_of.update({g["GroupId"]: g["VpcId"] for g in groups})
    vpcs = sorted(set(vpc_of.values()))
    vpc = vpcs[0] if len(vpcs) == 1 else "<VPC_ID>"
    missing = [
        Missing(
            f"compute.subnets {subnet}",
            f"does not exist in {cfg.region}",
            (
                f"aws ec2 create-subnet --region {cfg.region} --vpc-id {vpc} --cidr-block <CIDR>",
                "(a private subnet, with a NAT gateway or VPC endpoints for ECR, S3 and CloudWatch Logs)",
            ),
        )
        for subnet in c.subnets
        if subnet not in vpc_of
    ]
    missing += [
        Missing(
            f"compute.security_groups {group}",
            f"does not exist in {cfg.region}",
            (
                f"aws ec2 create-security-group --region {cfg.region} --vpc-id {vpc} --group-name {cfg.prefix}-batch "
                "--description 'airflow-gpu GPU hosts: outbound only'",
            ),
        )
        for group in c.security_groups
        if group not in vpc_of
    ]
    if len(vpcs) > 1:
        where = "; ".join(f"{v}: {', '.join(i for i, iv in vpc_of.items() if iv == v)}" for v in vpcs)
        missing.append(
            Missing(
                "compute.subnets and compute.security_groups",
                f"are not in one VPC ({where})",
                (
                    f"aws ec2 describe-subnets --region {cfg.region} --filters Name=vpc-id,Values=<VPC_ID>",
                    f"aws ec2 describe-security-groups --region {cfg.region} --filters Name=vpc-id,Values=<VPC_ID>",
                    "(then list only the subnets and security groups of that one VPC)",
                ),
            )
        )
    return missing


def _check_image(cfg: BatchSetupConfig, clients: Clients) -> list[Missing]:
    image = cfg.job.image
    match = _ECR_IMAGE.match(image)
    if match is None:
        return []  # another registry: nothing to look up with AWS credentials
    region, repository = match["region"], match["repository"]
    ref = {"imageDigest": match["digest"]} if match["digest"] else {"imageTag": match["tag"] or "latest"}
    ecr = clients.ecr_in(region)
    host = image.split("/", 1)[0]
    push = (
        f"aws ecr get-login-password --region {region} | docker login --username AWS --password-stdin {host}",
        f"docker build -f container/Dockerfile -t {image} .",
        f"docker push {image}",
    )
    with aws_errors(f"looking up the image {image}"):
        try:
            ecr.describe_images(registryId=match["registry"], repositoryName=repository, imageIds=[ref])
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "RepositoryNotFoundException":
                return [
                    Missing(
                        f"job.image {image}",
                        f"names ECR repository {repository}, which does not exist",
                        (
                            f"aws ecr create-repository --region {region} --repository-name {repository}",
                            *push,
                        ),
                    )
                ]
            if code == "ImageNotFoundException":
                return [Missing(f"job.image {image}", f"is not in ECR repository {repository}", push)]
            raise
    return []
