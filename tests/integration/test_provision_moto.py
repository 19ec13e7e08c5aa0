"""`airflow-gpu batch-setup` against a moto server: create, no-op, update, dry run, delete, refusals.

Writes are counted at the server (tests/support/moto_aws.py), so "changes nothing" is checked
where it matters. moto skips a few AWS Batch rules (in-place compute updates, the
DISABLED-before-delete order, CREATING/UPDATING statuses); the harness adds them back.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from airflow_gpu.provision import parse_config
from airflow_gpu.provision.aws import connect
from airflow_gpu.provision.plan import plan_setup
from tests.support.provision_testing import EXAMPLE, config, run, to_toml

ACCOUNT = "123456789012"


def example_text(ids: dict) -> str:
    text = EXAMPLE.read_text()
    for placeholder, value in {
        "<SUBNET_ID_A>": ids["subnets"][0],
        "<SUBNET_ID_B>": ids["subnets"][1],
        "<SECURITY_GROUP_ID>": ids["security_group"],
        "<ACCOUNT_ID>": ACCOUNT,
    }.items():
        text = text.replace(placeholder, value)
    return text


def test_example_config_creates_everything_through_aws_endpoint_url(moto_aws, ids, tmp_path, capsys, monkeypatch):
    # No --endpoint-url: botocore itself must route every call to AWS_ENDPOINT_URL.
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_aws.endpoint_url)
    rc, out, err = run(moto_aws, tmp_path, capsys, example_text(ids), endpoint=False)
    assert rc == 0, err
    assert err == ""
    assert moto_aws.log.aws_calls["batch:createcomputeenvironment"] == 1

    batch = moto_aws.client("batch")
    ce = batch.describe_compute_environments(computeEnvironments=["airflow-gpu-ce"])["computeEnvironments"][0]
    cr = ce["computeResources"]
    assert (ce["type"], ce["state"], ce["serviceRole"]) == ("MANAGED", "ENABLED", ids["service_role"])
    assert (cr["type"], cr["allocationStrategy"], cr["minvCpus"], cr["desiredvCpus"], cr["maxvCpus"]) == (
        "SPOT",
        "SPOT_PRICE_CAPACITY_OPTIMIZED",
        0,
        0,
        64,
    )
    assert cr["ec2Configuration"] == [{"imageType": "ECS_AL2023_NVIDIA"}]
    assert cr["instanceTypes"] == ["g6e.2xlarge", "g6.4xlarge", "g5.4xlarge"]
    assert cr["instanceRole"] == ids["instance_role"]

    queue = batch.describe_job_queues(jobQueues=["airflow-gpu-queue"])["jobQueues"][0]
    assert queue["state"] == "ENABLED"
    assert queue["computeEnvironmentOrder"] == [{"order": 1, "computeEnvironment": ce["computeEnvironmentArn"]}]

    jd = batch.describe_job_definitions(jobDefinitionName="airflow-gpu-worker", status="ACTIVE")["jobDefinitions"]
    assert [d["revision"] for d in jd] == [1]
    container = jd[0]["containerProperties"]
    assert {r["type"]: r["value"] for r in container["resourceRequirements"]} == {
        "GPU": "1",
        "VCPU": "8",
        "MEMORY": "60000",
    }
    assert container["linuxParameters"] == {"sharedMemorySize": 2048}
    assert container["jobRoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/airflow-gpu-job"
    assert container["logConfiguration"] == {
        "logDriver": "awslogs",
        "options": {
            "awslogs-group": "/aws/batch/airflow-gpu",
            "awslogs-region": "us-east-1",
            "awslogs-stream-prefix": "airflow-gpu",
        },
    }
    assert jd[0]["timeout"] == {"attemptDurationSeconds": 14400}
    assert jd[0]["retryStrategy"]["attempts"] == 3
    assert [(r["onStatusReason"], r["action"].upper()) for r in jd[0]["retryStrategy"]["evaluateOnExit"]] == [
        ("Host EC2*", "RETRY"),
        ("*", "EXIT"),
    ]
    assert jd[0]["tags"]["project"] == "airflow-gpu"

    groups = moto_aws.client("logs").describe_log_groups(logGroupNamePrefix="/aws/batch/airflow-gpu")["logGroups"]
    assert [(g["logGroupName"], g["retentionInDays"]) for g in groups] == [("/aws/batch/airflow-gpu", 30)]

    # The values a DAG needs, at the end.
    assert "job_queue        = 'airflow-gpu-queue'" in out
    assert f"job_definition   = '{jd[0]['jobDefinitionArn']}'" in out


def test_second_run_with_the_same_config_writes_nothing(moto_aws, ids, tmp_path, capsys):
    data = config(ids)
    assert run(moto_aws, tmp_path, capsys, data)[0] == 0
    moto_aws.log.reset()
    rc, out, err = run(moto_aws, tmp_path, capsys, data, "--output", "json")
    assert rc == 0, err
    assert moto_aws.log.writes() == Counter()
    assert sum(moto_aws.log.aws_calls.values()) == 4  # one describe per resource
    assert "Everything is up to date" in err
    result = json.loads(out)
    assert result["changed"] is False and result["actions"] == []
    assert result["job_queue"] == "gpu-test-queue"
    assert result["job_definition_arn"].endswith("job-definition/gpu-test-worker:1")
    assert result["compute_environment_arn"].endswith("compute-environment/gpu-test-ce")


def test_changed_config_updates_in_place_registers_a_revision_and_prints_the_diff(moto_aws, ids, tmp_path, capsys):
    assert run(moto_aws, tmp_path, capsys, config(ids))[0] == 0
    moto_aws.log.reset()
    changed = config(
        ids,
        compute={
            "max_vcpus": 128,
            "instance_types": ["g6.xlarge", "g5.xlarge", "g6e.xlarge"],
            "subnets": ids["subnets"],
        },
        job={"image": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/airflow-gpu-worker:0.2.0", "memory_mib": 14000},
        logs={"retention_days": 30},
    )
    # The request sent: only the changed fields, and time for running jobs to finish their attempt.
    plan = plan_setup(parse_config(to_toml(changed)), connect("us-east-1", moto_aws.endpoint_url))
    update = next(a for a in plan.actions if a.resource == "compute environment")
    assert update.request == {
        "computeEnvironment": "gpu-test-ce",
        "computeResources": {
            "instanceTypes": ["g6.xlarge", "g5.xlarge", "g6e.xlarge"],
            "maxvCpus": 128,
            "subnets": ids["subnets"],
        },
        "updatePolicy": {"terminateJobsOnUpdate": False, "jobExecutionTimeoutMinutes": 60},
    }
    assert moto_aws.log.writes() == Counter()

    rc, out, err = run(moto_aws, tmp_path, capsys, changed)
    assert rc == 0, err
    assert moto_aws.log.writes() == Counter(
        {
            "batch:updatecomputeenvironment": 1,
            "batch:registerjobdefinition": 1,
            "logs:putretentionpolicy": 1,
        }
    )
    assert (
        "gpu-test-ce: update in place (infrastructure update: AWS replaces the instances; running jobs get up to 60 minutes"
        in out
    )
    assert "computeResources.maxvCpus: 64 -> 128" in out
    assert (
        "computeResources.instanceTypes: ['g5.xlarge', 'g6.xlarge'] -> ['g5.xlarge', 'g6.xlarge', 'g6e.xlarge']" in out
    )
    assert "job definition gpu-test-worker: register a new revision (latest is 1)" in out
    assert (
        "containerProperties.image: '123456789012.dkr.ecr.us-east-1.amazonaws.com/airflow-gpu-worker:0.1.0' -> " in out
    )
    assert "containerProperties.resourceRequirements.MEMORY: '15000' -> '14000'" in out
    assert "retentionInDays: 14 -> 30" in out
    assert "job queue gpu-test-queue: up to date" in out

    batch = moto_aws.client("batch")
    cr = batch.describe_compute_environments(computeEnvironments=["gpu-test-ce"])["computeEnvironments"][0][
        "computeResources"
    ]
    assert cr["maxvCpus"] == 128 and "g6e.xlarge" in cr["instanceTypes"] and len(cr["subnets"]) == 3
    revisions = batch.describe_job_definitions(jobDefinitionName="gpu-test-worker", status="ACTIVE")["jobDefinitions"]
    assert sorted(d["revision"] for d in revisions) == [1, 2]
    assert "worker:2'" in out

    # And the new state is stable.
    moto_aws.log.reset()
    assert run(moto_aws, tmp_path, capsys, changed)[0] == 0
    assert moto_aws.log.writes() == Counter()


def test_spot_to_on_demand_is_an_in_place_infrastructure_update(moto_aws, ids, tmp_path, capsys):
    assert run(moto_aws, tmp_path, capsys, config(ids))[0] == 0
    moto_aws.log.reset()
    on_demand = config(ids, compute={"provisioning": "on-demand"})
    rc, out, err = run(moto_aws, tmp_path, capsys, on_demand)
    assert rc == 0, err
    assert "computeResources.type: 'SPOT' -> 'EC2'" in out
    assert "computeResources.allocationStrategy: 'SPOT_PRICE_CAPACITY_OPTIMIZED' -> 'BEST_FIT_PROGRESSIVE'" in out
    assert moto_aws.log.writes() == Counter({"batch:updatecomputeenvironment": 1})
    cr = moto_aws.client("batch").describe_compute_environments(computeEnvironments=["gpu-test-ce"])[
        "computeEnvironments"
    ][0]["computeResources"]
    assert (cr["type"], cr["allocationStrategy"]) == ("EC2", "BEST_FIT_PROGRESSIVE")
    moto_aws.log.reset()
    assert run(moto_aws, tmp_path, capsys, on_demand)[0] == 0
    assert moto_aws.log.writes() == Counter()


def test_drift_made_by_hand_is_put_back(moto_aws, ids, tmp_path, capsys):
    data = config(ids)
    assert run(moto_aws, tmp_path, capsys, data)[0] == 0
    batch = moto_aws.client("batch")
    batch.update_job_queue(jobQueue="gpu-test-queue", state="DISABLED")
    moto_aws.log.reset()
    rc, out, _ = run(moto_aws, tmp_path, capsys, data)
    assert rc == 0
    assert "state: 'DISABLED' -> 'ENABLED'" in out
    assert moto_aws.log.writes() == Counter({"batch:updatejobqueue": 1})
    assert batch.describe_job_queues(jobQueues=["gpu-test-queue"])["jobQueues"][0]["state"] == "ENABLED"


@pytest.mark.parametrize("existing", [False, True])
def test_dry_run_prints_the_plan_and_writes_nothing(moto_aws, ids, tmp_path, capsys, existing):
    if existing:
        assert run(moto_aws, tmp_path, capsys, config(ids))[0] == 0
        moto_aws.log.reset()
    data = config(ids, compute={"max_vcpus": 256}, job={"vcpus": 2})
    rc, out, err = run(moto_aws, tmp_path, capsys, data, "--dry-run", "--output", "json")
    assert rc == 0, err
    assert moto_aws.log.writes() == Counter()
    assert "Dry run: nothing was changed." in err
    result = json.loads(out)
    assert result["dry_run"] is True and result["changed"] is False
    kinds = [(a["resource"], a["action"].split(" ")[0]) for a in result["actions"]]
    if existing:
        assert kinds == [("compute environment", "update"), ("job definition", "register")]
        assert "computeResources.maxvCpus: 64 -> 256" in err
        assert result["job_definition_arn"] is None  # the new revision does not exist yet
    else:
        assert kinds == [
            ("log group", "create"),
            ("compute environment", "create"),
            ("job queue", "create"),
            ("job definition", "register"),
        ]
        assert moto_aws.client("batch").describe_compute_environments()["computeEnvironments"] == []


def test_delete_tears_down_in_order_and_keeps_the_logs(moto_aws, ids, tmp_path, capsys):
    data = config(ids, job={"memory_mib": 14000})
    assert run(moto_aws, tmp_path, capsys, data)[0] == 0
    assert run(moto_aws, tmp_path, capsys, config(ids))[0] == 0  # a second revision
    moto_aws.log.reset()
    rc, out, err = run(moto_aws, tmp_path, capsys, data, "--delete")
    assert rc == 0, err
    # The harness enforces AWS's rules, so a wrong order would have failed at the server.
    assert moto_aws.log.write_order() == [
        "batch:updatejobqueue",
        "batch:deletejobqueue",
        "batch:updatecomputeenvironment",
        "batch:deletecomputeenvironment",
        "batch:deregisterjobdefinition",
        "batch:deregisterjobdefinition",
    ]
    assert "log group /aws/batch/gpu-test is kept" in out
    batch = moto_aws.client("batch")
    assert batch.describe_job_queues()["jobQueues"] == []
    assert batch.describe_compute_environments()["computeEnvironments"] == []
    assert batch.describe_job_definitions(jobDefinitionName="gpu-test-worker", status="ACTIVE")["jobDefinitions"] == []
    assert moto_aws.client("logs").describe_log_groups()["logGroups"]

    moto_aws.log.reset()
    rc, out, _ = run(moto_aws, tmp_path, capsys, data, "--delete", "--delete-logs")
    assert rc == 0
    assert moto_aws.log.writes() == Counter({"logs:deleteloggroup": 1})
    assert moto_aws.client("logs").describe_log_groups()["logGroups"] == []

    moto_aws.log.reset()
    rc, out, _ = run(moto_aws, tmp_path, capsys, data, "--delete")
    assert rc == 0 and "Nothing to delete." in out
    assert moto_aws.log.writes() == Counter()


def test_delete_dry_run_writes_nothing(moto_aws, ids, tmp_path, capsys):
    assert run(moto_aws, tmp_path, capsys, config(ids))[0] == 0
    moto_aws.log.reset()
    rc, out, _ = run(moto_aws, tmp_path, capsys, config(ids), "--delete", "--dry-run")
    assert rc == 0
    assert "- job queue gpu-test-queue: disable" in out and "Dry run: nothing was deleted." in out
    assert moto_aws.log.writes() == Counter()
    assert moto_aws.client("batch").describe_job_queues()["jobQueues"]


def test_delete_refuses_what_batch_setup_did_not_make(moto_aws, ids, tmp_path, capsys):
    moto_aws.create_gpu_batch_environment("gpu-test")  # same names, no batch-setup tag
    moto_aws.log.reset()
    rc, _, err = run(moto_aws, tmp_path, capsys, config(ids), "--delete")
    assert rc == 1
    assert "job queue gpu-test-queue was not made by batch-setup" in err
    assert "compute environment gpu-test-ce was not made by batch-setup" in err
    assert moto_aws.log.writes() == Counter()


def test_delete_keeps_job_definition_revisions_it_did_not_register(moto_aws, ids, tmp_path, capsys):
    assert run(moto_aws, tmp_path, capsys, config(ids))[0] == 0
    batch = moto_aws.client("batch")
    batch.register_job_definition(  # revision 2, registered by hand
        jobDefinitionName="gpu-test-worker",
        type="container",
        containerProperties={
            "image": "x",
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}],
        },
    )
    moto_aws.log.reset()
    rc, out, err = run(moto_aws, tmp_path, capsys, config(ids), "--delete")
    assert rc == 0, err
    assert "gpu-test-worker:2 were not registered by batch-setup and are kept" in out
    assert moto_aws.log.writes()["batch:deregisterjobdefinition"] == 1
    active = batch.describe_job_definitions(jobDefinitionName="gpu-test-worker", status="ACTIVE")["jobDefinitions"]
    assert [d["revision"] for d in active] == [2]


def test_delete_refuses_while_jobs_are_live(moto_aws, ids, tmp_path, capsys):
    assert run(moto_aws, tmp_path, capsys, config(ids))[0] == 0
    moto_aws.batch.hold("RUNNING")
    job_id = moto_aws.client("batch").submit_job(
        jobName="j", jobQueue="gpu-test-queue", jobDefinition="gpu-test-worker"
    )["jobId"]
    moto_aws.log.reset()
    rc, _, err = run(moto_aws, tmp_path, capsys, config(ids), "--delete")
    assert rc == 1
    assert f"still has queued or running jobs ({job_id})" in err
    assert moto_aws.log.writes() == Counter()


def test_delete_refuses_a_compute_environment_another_queue_uses(moto_aws, ids, tmp_path, capsys):
    assert run(moto_aws, tmp_path, capsys, config(ids))[0] == 0
    batch = moto_aws.client("batch")
    ce = batch.describe_compute_environments(computeEnvironments=["gpu-test-ce"])["computeEnvironments"][0]
    batch.create_job_queue(
        jobQueueName="someone-else",
        state="ENABLED",
        priority=5,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce["computeEnvironmentArn"]}],
    )
    moto_aws.log.reset()
    rc, _, err = run(moto_aws, tmp_path, capsys, config(ids), "--delete")
    assert rc == 1 and "also serves job queue(s) someone-else" in err
    assert moto_aws.log.writes() == Counter()


def test_infrastructure_change_without_the_service_linked_role_stops_before_writing(moto_aws, ids, tmp_path, capsys):
    data = config(ids, compute={"service_role": ids["custom_service_role"]})
    rc, _, err = run(moto_aws, tmp_path, capsys, data)
    assert rc == 0 and "warning: compute.service_role is not the AWSServiceRoleForBatch" in err
    moto_aws.log.reset()
    changed = config(
        ids,
        compute={"service_role": ids["custom_service_role"], "instance_types": ["g6e.xlarge"]},
        job={"image": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/airflow-gpu-worker:0.2.0"},
    )
    rc, _, err = run(moto_aws, tmp_path, capsys, changed)
    assert rc == 1
    assert "instanceTypes can change in place only with an infrastructure update" in err
    assert "not the AWSServiceRoleForBatch service-linked role" in err
    assert "--delete" in err and "nothing was changed" in err
    assert moto_aws.log.writes() == Counter()  # not even the job definition: all or nothing

    # A scaling update (maxvCpus) works with any service role.
    rc, out, err = run(
        moto_aws, tmp_path, capsys, config(ids, compute={"service_role": ids["custom_service_role"], "max_vcpus": 32})
    )
    assert rc == 0, err
    assert "(scaling update)" in out
    assert moto_aws.log.writes() == Counter({"batch:updatecomputeenvironment": 1})


def test_switching_to_the_service_linked_role_is_refused(moto_aws, ids, tmp_path, capsys):
    assert run(moto_aws, tmp_path, capsys, config(ids, compute={"service_role": ids["custom_service_role"]}))[0] == 0
    moto_aws.log.reset()
    rc, _, err = run(moto_aws, tmp_path, capsys, config(ids))
    assert rc == 1 and "cannot switch a compute environment between the service-linked role and an ordinary role" in err
    assert moto_aws.log.writes() == Counter()


def test_waits_for_valid_before_using_a_new_compute_environment(moto_aws, ids, tmp_path, capsys):
    moto_aws.batch.settle_after(3)  # CREATING for three describes, as AWS is for a while
    rc, out, err = run(moto_aws, tmp_path, capsys, config(ids))
    assert rc == 0, err
    order = moto_aws.log.aws_call_order
    create_queue = order.index("batch:createjobqueue")
    describes_before = order[order.index("batch:createcomputeenvironment") : create_queue].count(
        "batch:describecomputeenvironments"
    )
    assert describes_before == 5  # three CREATING, one VALID, and the queue step's own check
    assert "waiting for compute environment gpu-test-ce to be VALID" in out


def test_a_wait_that_times_out_says_so_and_the_next_run_continues(moto_aws, ids, tmp_path, capsys):
    moto_aws.batch.settle_after(10_000)
    rc, _, err = run(moto_aws, tmp_path, capsys, config(ids), "--wait-timeout", "0.2", "--poll-interval", "0.02")
    assert rc == 1
    assert (
        "timed out after 0 s waiting for compute environment gpu-test-ce to be VALID (last seen: status CREATING" in err
    )
    assert "Done before the failure: log group /aws/batch/gpu-test: create" in err
    assert "run the same command again" in err

    moto_aws.batch.settle_after(0)
    moto_aws.log.reset()
    rc, out, err = run(moto_aws, tmp_path, capsys, config(ids))
    assert rc == 0, err
    assert moto_aws.log.writes() == Counter({"batch:createjobqueue": 1, "batch:registerjobdefinition": 1})


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"compute": {"instance_types": ["c5.xlarge"]}}, "compute.instance_types[0]"),
        ({"job": {"memory_mib": 64000}}, "job needs"),
        ({"compute": {"subnets": []}}, "compute.subnets"),
        ({"compute": {"instance_role": ""}}, "compute.instance_role"),
    ],
)
def test_bad_config_fails_before_any_call(moto_aws, ids, tmp_path, capsys, change, key):
    rc, out, err = run(moto_aws, tmp_path, capsys, config(ids, **change))
    assert rc == 2
    assert f"  - {key}" in err and "nothing was sent to AWS" in err
    assert out == ""
    assert sum(moto_aws.log.aws_calls.values()) == 0


def test_aws_errors_become_one_clear_message(moto_aws, ids, tmp_path, capsys):
    data = config(ids, compute={"subnets": ["subnet-0123456789abcdef0"]})  # well-formed, but no such subnet
    rc, _, err = run(moto_aws, tmp_path, capsys, data)
    assert rc == 1
    assert "creating compute environment gpu-test-ce failed" in err and "subnet-0123456789abcdef0" in err
    assert "Traceback" not in err


def test_the_queue_cancels_misconfigured_jobs_after_10_minutes_by_default_and_the_limits_update_in_place(
    moto_aws, ids, tmp_path, capsys
):
    assert run(moto_aws, tmp_path, capsys, config(ids))[0] == 0
    batch = moto_aws.client("batch")

    def actions() -> list[tuple]:
        queue = batch.describe_job_queues(jobQueues=["gpu-test-queue"])["jobQueues"][0]
        return sorted(
            (a["reason"], a["state"], a["maxTimeSeconds"], a["action"]) for a in queue["jobStateTimeLimitActions"]
        )

    assert actions() == [
        ("MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE", "RUNNABLE", 600, "CANCEL"),
        ("MISCONFIGURATION:EC2_INSTANCE_CONFIGURATION_UNSUPPORTED", "RUNNABLE", 600, "CANCEL"),
        ("MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT", "RUNNABLE", 600, "CANCEL"),
    ]
    moto_aws.log.reset()
    assert run(moto_aws, tmp_path, capsys, config(ids))[0] == 0
    assert moto_aws.log.writes() == Counter()  # the limits read back as written: nothing to update

    changed = config(ids, queue={"cancel_misconfigured_after_seconds": 0, "cancel_no_capacity_after_seconds": 14400})
    rc, out, err = run(moto_aws, tmp_path, capsys, changed)
    assert rc == 0, err
    assert moto_aws.log.writes() == Counter({"batch:updatejobqueue": 1})
    assert "jobStateTimeLimitActions" in out
    assert actions() == [("CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY", "RUNNABLE", 14400, "CANCEL")]


@pytest.mark.parametrize("value", [599, 86401, "ten"])
def test_a_queue_time_limit_outside_what_aws_accepts_is_refused_before_any_call(moto_aws, ids, tmp_path, capsys, value):
    rc, out, err = run(moto_aws, tmp_path, capsys, config(ids, queue={"cancel_misconfigured_after_seconds": value}))
    assert rc == 2
    assert "queue.cancel_misconfigured_after_seconds" in err and "600-86400" in err
    assert sum(moto_aws.log.aws_calls.values()) == 0


def _remove_slr(moto_aws, ids):
    moto_aws.client("iam").delete_role(RoleName="AWSServiceRoleForBatch")
    return {}


def _other_vpc_subnet(moto_aws, ids):
    ec2 = moto_aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/24")["Subnet"]["SubnetId"]
    return {"compute": {"subnets": [ids["subnets"][0], subnet]}}


def _untagged_image(moto_aws, ids):
    return {"job": {"image": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/airflow-gpu-worker:9.9.9"}}


MISSING_PIECES = {
    "service-linked role": (
        _remove_slr,
        "compute.service_role",
        "aws iam create-service-linked-role --aws-service-name batch.amazonaws.com",
    ),
    "service role": (
        lambda aws, ids: {"compute": {"service_role": f"arn:aws:iam::{ACCOUNT}:role/service-role/no-such-batch-role"}},
        "compute.service_role",
        "aws iam create-role --role-name no-such-batch-role --path /service-role/",
    ),
    "instance profile": (
        lambda aws, ids: {"compute": {"instance_role": f"arn:aws:iam::{ACCOUNT}:instance-profile/noSuchProfile"}},
        "compute.instance_role",
        "aws iam create-instance-profile --instance-profile-name noSuchProfile",
    ),
    "instance profile without a role": (
        lambda aws, ids: (
            aws.client("iam").create_instance_profile(InstanceProfileName="emptyProfile")
            and {"compute": {"instance_role": f"arn:aws:iam::{ACCOUNT}:instance-profile/emptyProfile"}}
        ),
        "holds no role",
        "aws iam add-role-to-instance-profile --instance-profile-name emptyProfile",
    ),
    "job role": (
        lambda aws, ids: {"job": {"job_role": f"arn:aws:iam::{ACCOUNT}:role/no-such-job-role"}},
        "job.job_role",
        "aws iam put-role-policy --role-name no-such-job-role",
    ),
    "subnet": (
        lambda aws, ids: {"compute": {"subnets": [ids["subnets"][0], "subnet-0123456789abcdef0"]}},
        "compute.subnets subnet-0123456789abcdef0",
        "aws ec2 create-subnet --region us-east-1 --vpc-id {vpc}",
    ),
    "security group": (
        lambda aws, ids: {"compute": {"security_groups": ["sg-0123456789abcdef0"]}},
        "compute.security_groups sg-0123456789abcdef0",
        "aws ec2 create-security-group --region us-east-1 --vpc-id {vpc}",
    ),
    "two VPCs": (
        _other_vpc_subnet,
        "are not in one VPC",
        "aws ec2 describe-subnets --region us-east-1 --filters Name=vpc-id",
    ),
    "ECR repository": (
        lambda aws, ids: {"job": {"image": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/no-such-repo:1.0"}},
        "which does not exist",
        "aws ecr create-repository --region us-east-1 --repository-name no-such-repo",
    ),
    "ECR image": (
        _untagged_image,
        "is not in ECR repository airflow-gpu-worker",
        "docker push 123456789012.dkr.ecr.us-east-1.amazonaws.com/airflow-gpu-worker:9.9.9",
    ),
}


@pytest.mark.parametrize("piece", list(MISSING_PIECES))
def test_dry_run_reports_a_missing_dependency_with_the_command_that_creates_it(moto_aws, ids, tmp_path, capsys, piece):
    make_it_missing, names, command = MISSING_PIECES[piece]
    data = config(ids, **make_it_missing(moto_aws, ids))
    moto_aws.log.reset()
    rc, out, err = run(moto_aws, tmp_path, capsys, data, "--dry-run")
    assert rc == 1, out + err
    assert "depends on 1 thing(s) that AWS does not have" in err
    assert names in err
    assert command.format(vpc=ids["vpc"]) in err
    assert moto_aws.log.writes(("batch", "logs", "iam", "ec2", "ecr")) == Counter()


def test_dry_run_with_every_dependency_present_checks_them_read_only(moto_aws, ids, tmp_path, capsys):
    rc, out, err = run(moto_aws, tmp_path, capsys, config(ids), "--dry-run")
    assert rc == 0, err
    calls = moto_aws.log.aws_calls
    assert calls["iam:getrole"] == 2 and calls["iam:getinstanceprofile"] == 1
    assert calls["ec2:describesubnets"] == 1 and calls["ec2:describesecuritygroups"] == 1
    assert calls["ecr:describeimages"] == 1
    assert moto_aws.log.writes(("batch", "logs", "iam", "ec2", "ecr")) == Counter()
