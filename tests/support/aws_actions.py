"""Which IAM actions the package's own code needs, recorded from its real calls against moto.

Every botocore call (boto3 and aiobotocore clients alike) passes through
``_make_api_call``; the recorder wraps it, finds the innermost airflow_gpu module on
the call's stack (an awaiting coroutine is on the stack too), and files the call under
the principal that module runs as. Calls made by the tests themselves (setting up moto)
have no airflow_gpu frame and are left out.

Most IAM actions are named after their API operation; S3's are not, and a few
operations need a second permission (tagging on create), so those are mapped here.
"""

from __future__ import annotations

import contextlib
import json
import sys
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import aiobotocore.client
import botocore.client

POLICIES = Path(__file__).resolve().parents[2] / "container" / "iam"

#: principal -> the policy file its role or user carries.
POLICY_FILES = {"airflow": "airflow.json", "job": "job-role.json", "batch-setup": "batch-setup.json"}

# S3's IAM actions, per API operation (from the S3 service authorization reference).
_S3 = {
    "ListObjectsV2": ["s3:ListBucket"],
    "ListObjects": ["s3:ListBucket"],
    "HeadBucket": ["s3:ListBucket"],
    "GetObject": ["s3:GetObject"],
    "HeadObject": ["s3:GetObject"],
    "PutObject": ["s3:PutObject"],
    "CreateMultipartUpload": ["s3:PutObject"],
    "UploadPart": ["s3:PutObject"],
    "CompleteMultipartUpload": ["s3:PutObject"],
    "CopyObject": ["s3:GetObject", "s3:PutObject"],
    "AbortMultipartUpload": ["s3:AbortMultipartUpload"],
    "ListParts": ["s3:ListMultipartUploadParts"],
    "ListMultipartUploads": ["s3:ListBucketMultipartUploads"],
    "DeleteObject": ["s3:DeleteObject"],
    "DeleteObjects": ["s3:DeleteObject"],
}
# Creating a resource with tags needs the service's tagging permission as well.
_TAGS_ON_CREATE = {
    ("batch", "SubmitJob"): "batch:TagResource",
    ("batch", "CreateComputeEnvironment"): "batch:TagResource",
    ("batch", "CreateJobQueue"): "batch:TagResource",
    ("batch", "RegisterJobDefinition"): "batch:TagResource",
    ("logs", "CreateLogGroup"): "logs:TagResource",
}


def iam_actions(prefix: str, operation: str, params: dict[str, Any]) -> list[str]:
    if prefix == "s3":
        return _S3.get(operation, [f"s3:{operation}"])
    actions = [f"{prefix}:{operation}"]
    tagged = _TAGS_ON_CREATE.get((prefix, operation))
    if tagged and params.get("tags"):
        actions.append(tagged)
    return actions


def principal_of_stack() -> str | None:
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("airflow_gpu"):
            if module.startswith("airflow_gpu.worker"):
                return "job"
            if module.startswith("airflow_gpu.provision"):
                return "batch-setup"
            if module.startswith("airflow_gpu.demo"):
                return None  # the demo seeds its own data; no deployment runs it
            return "airflow"
        frame = frame.f_back
    return None


@contextlib.contextmanager
def recording_actions() -> Iterator[dict[str, set[str]]]:
    """Record, per principal, the IAM actions of every call the package makes inside the block."""
    seen: dict[str, set[str]] = defaultdict(set)
    # A call run as a task of its own (asyncio.shield) has no caller on its stack: it belongs
    # to whoever its client made calls for before.
    owner: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def note(client: Any, operation: str, params: dict[str, Any]) -> None:
        principal = principal_of_stack() or owner.get(client)
        if principal is not None:
            owner[client] = principal
            prefix = client.meta.service_model.signing_name
            seen[principal].update(a.lower() for a in iam_actions(prefix, operation, params or {}))

    sync_call = botocore.client.BaseClient._make_api_call
    async_call = aiobotocore.client.AioBaseClient._make_api_call

    def sync_recorded(self, operation_name, api_params):
        note(self, operation_name, api_params)
        return sync_call(self, operation_name, api_params)

    async def async_recorded(self, operation_name, api_params):
        note(self, operation_name, api_params)
        return await async_call(self, operation_name, api_params)

    botocore.client.BaseClient._make_api_call = sync_recorded
    aiobotocore.client.AioBaseClient._make_api_call = async_recorded
    try:
        yield seen
    finally:
        botocore.client.BaseClient._make_api_call = sync_call
        aiobotocore.client.AioBaseClient._make_api_call = async_call


def allowed_actions(policy_file: str) -> set[str]:
    """The actions a shipped policy allows, lower-cased (IAM compares them case-insensitively)."""
    policy = json.loads((POLICIES / policy_file).read_text())
    allowed: set[str] = set()
    for statement in policy["Statement"]:
        if statement.get("Effect") == "Allow":
            actions = statement["Action"]
            allowed.update(a.lower() for a in ([actions] if isinstance(actions, str) else actions))
    return allowed


def lacking(seen: dict[str, set[str]]) -> dict[str, list[str]]:
    """Per principal, the recorded actions its policy does not allow (wildcards are not used in ours)."""
    return {
        who: sorted(actions - allowed_actions(POLICY_FILES[who]))
        for who, actions in seen.items()
        if actions - allowed_actions(POLICY_FILES[who])
    }
