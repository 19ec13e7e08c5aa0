"""container/job-definition.json and batch-setup must describe the same job definition.

The JSON is for `aws batch register-job-definition --cli-input-json`, by hand; batch-setup
builds its request from container/batch-setup.example.toml. With the same account id they
must be the same definition, compared the way batch-setup compares a live revision. Only
the JSON's placeholder command (each job brings its own) and batch-setup's tags may differ.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from airflow_gpu.provision import parse_config
from airflow_gpu.provision.compare import job_definition_view
from airflow_gpu.provision.desired import job_definition_request

ROOT = Path(__file__).resolve().parents[2]
JOB_DEFINITION_JSON = ROOT / "container" / "job-definition.json"
EXAMPLE = ROOT / "container" / "batch-setup.example.toml"


def example_request(account: str) -> dict:
    text = EXAMPLE.read_text()
    for placeholder, value in {
        "<SUBNET_ID_A>": "subnet-0123456789abcdef0",
        "<SUBNET_ID_B>": "subnet-0123456789abcdef1",
        "<SECURITY_GROUP_ID>": "sg-0123456789abcdef0",
        "<ACCOUNT_ID>": account,
    }.items():
        text = text.replace(placeholder, value)
    return job_definition_request(parse_config(text))


def view(definition: dict) -> dict:
    return {
        k: v
        for k, v in job_definition_view(definition).items()
        if not k.startswith("tags.") and k != "containerProperties.command"
    }


def test_job_definition_json_is_what_batch_setup_registers_from_the_example():
    shipped = json.loads(JOB_DEFINITION_JSON.read_text())
    account = re.search(r"arn:aws:iam::(\d{12}):", shipped["containerProperties"]["jobRoleArn"]).group(1)
    ours = example_request(account)
    assert shipped["jobDefinitionName"] == ours["jobDefinitionName"]
    assert view(shipped) == view(ours)


def test_the_comparison_sees_a_difference():
    """The check above can fail: a changed requirement in the JSON is reported."""
    shipped = json.loads(JOB_DEFINITION_JSON.read_text())
    ours = example_request("123456789012")
    shipped["retryStrategy"]["evaluateOnExit"][0]["action"] = "EXIT"
    assert view(shipped) != view(ours)
