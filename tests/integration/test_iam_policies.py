"""The IAM policies in container/iam/ allow every AWS action the code calls, principal by principal.

Each test runs one principal's code paths against moto while tests/support/aws_actions.py records
the IAM action of every call the package makes, then compares them with the shipped policy.
A new call in the code without a matching policy change fails here.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from airflow.exceptions import AirflowException
from airflow.sdk.exceptions import TaskDeferred

from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards
from airflow_gpu.exceptions import GpuJobFailed
from airflow_gpu.jobs.blocking import run_blocking
from airflow_gpu.operators import GpuBatchOperator
from airflow_gpu.worker import storage
from airflow_gpu.worker.__main__ import main as worker_main
from tests.support.aws_actions import allowed_actions, iam_actions, lacking, recording_actions
from tests.support.gpu_batch_testing import FakeTaskInstance, fire, make_context, put_log_lines
from tests.support.provision_testing import config, run

MiB = 1024 * 1024


def _operator(gpu_batch, task_id: str, **kwargs) -> GpuBatchOperator:
    return GpuBatchOperator(
        task_id=task_id,
        job_queue=gpu_batch["job_queue"],
        job_definition=gpu_batch["job_definition"],
        command=["als"],
        gpus=1,
        poll_interval=0.1,
        deferrable=True,
        tags={"team": "recs"},
        **kwargs,
    )


def _defer(op, context) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return deferred.value


def _stream(moto_aws, job_id: str) -> str:
    return moto_aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]["container"]["logStreamName"]


def test_the_airflow_policy_allows_every_call_of_the_operator_trigger_and_log_follower(moto_aws, gpu_batch, aws_conn):
    moto_aws.batch.hold("RUNNING")
    moto_aws.client("s3").create_bucket(Bucket="out")
    with recording_actions() as seen:
        # Submit, watch with live logs, resume and read the committed output.
        context = make_context()
        op = _operator(gpu_batch, "train", output_uri="s3://out/als/")
        deferred = _defer(op, context)
        # On an instance, so the bill looks up its type (ECS) and market (the compute environment).
        moto_aws.batch.place(
            deferred.trigger.job_id, moto_aws.register_container_instance(gpu_batch["compute_environment"], "g5.xlarge")
        )
        put_log_lines(moto_aws, "/aws/batch/job", _stream(moto_aws, deferred.trigger.job_id), ["epoch 1", "epoch 2"])
        moto_aws.batch.set_status(deferred.trigger.job_id, "SUCCEEDED")
        event = fire(deferred.trigger)
        with pytest.raises(AirflowException, match="committed no manifest"):
            op.execute_complete(context, event)
        # A failure: the error quotes the log's last lines.
        failing = _operator(gpu_batch, "score")
        failing_context = make_context(FakeTaskInstance(task_id="score"))
        deferred = _defer(failing, failing_context)
        put_log_lines(moto_aws, "/aws/batch/job", _stream(moto_aws, deferred.trigger.job_id), ["CUDA error"])
        moto_aws.batch.set_status(deferred.trigger.job_id, "FAILED", exit_code=3)
        with pytest.raises(GpuJobFailed, match="CUDA error"):
            failing.execute_complete(failing_context, fire(deferred.trigger))
        # A clear: the trigger's on_kill stops the job.
        deferred = _defer(_operator(gpu_batch, "export"), make_context(FakeTaskInstance(task_id="export")))
        run_blocking(deferred.trigger.on_kill)
    recorded = seen["airflow"]
    assert {
        "batch:submitjob",
        "batch:listjobs",
        "batch:describejobs",
        "batch:terminatejob",
        "batch:tagresource",
        "logs:filterlogevents",
        "logs:getlogevents",
        "s3:getobject",
        "ecs:describecontainerinstances",
        "batch:describecomputeenvironments",
    } <= recorded  # the paths above did run
    assert lacking(seen) == {}


def test_the_job_role_policy_allows_every_call_of_the_worker(moto_aws, tmp_path, monkeypatch, capsys):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="lake")
    s3.create_bucket(Bucket="out")
    for path in write_shards(
        synthetic_interactions(4_000, n_users=300, n_items=80, seed=2), tmp_path / "in", "parquet", objects=2
    ):
        s3.put_object(Bucket="lake", Key=f"interactions/{path.name}", Body=path.read_bytes())
    monkeypatch.setattr(storage, "PART_SIZE", 5 * MiB)
    with recording_actions() as seen:
        code = worker_main(
            [
                "als",
                "--input",
                "s3://lake/interactions/",
                "--output",
                "s3://out/als/",
                "--endpoint-url",
                moto_aws.endpoint_url,
                "--factors",
                "8",
                "--iterations",
                "2",
            ]
        )
        assert code == 0, capsys.readouterr().err

        async def multipart_then_cleanup() -> None:
            async with storage.open_store("s3://out/als/", endpoint_url=moto_aws.endpoint_url) as store:
                await store.write("big.bin", os.urandom(11 * MiB))  # multipart
                upload_part = store._client.upload_part

                async def failing(**kwargs):
                    if kwargs["PartNumber"] == 2:
                        raise ConnectionResetError("reset")
                    return await upload_part(**kwargs)

                store._client.upload_part = failing
                with pytest.raises(ConnectionResetError):
                    await store.write("torn.bin", os.urandom(11 * MiB))  # aborted
                await store.delete(["big.bin"])

        asyncio.run(multipart_then_cleanup())
    recorded = seen["job"]
    assert {"s3:listbucket", "s3:getobject", "s3:putobject", "s3:abortmultipartupload", "s3:deleteobject"} <= recorded
    assert set(seen) == {"job"}  # the worker makes no call as anyone else
    assert lacking(seen) == {}


def test_the_batch_setup_policy_allows_every_call_of_create_update_dry_run_and_delete(moto_aws, ids, tmp_path, capsys):
    with recording_actions() as seen:
        assert run(moto_aws, tmp_path, capsys, config(ids), "--dry-run")[0] == 0
        assert run(moto_aws, tmp_path, capsys, config(ids))[0] == 0
        changed = config(ids, compute={"max_vcpus": 128}, logs={"retention_days": 30}, tags={"team": "ml"})
        assert run(moto_aws, tmp_path, capsys, changed)[0] == 0
        assert run(moto_aws, tmp_path, capsys, changed, "--delete", "--delete-logs")[0] == 0
    recorded = seen["batch-setup"]
    assert {
        "batch:createcomputeenvironment",
        "batch:deletejobqueue",
        "logs:createloggroup",
        "iam:getrole",
        "ec2:describesubnets",
        "ecr:describeimages",
    } <= recorded
    assert lacking(seen) == {}


def test_a_policy_without_an_action_the_code_calls_is_caught(tmp_path, monkeypatch):
    import tests.support.aws_actions as aws_actions

    policy = json.loads((aws_actions.POLICIES / "airflow.json").read_text())
    for statement in policy["Statement"]:
        if isinstance(statement["Action"], list):
            statement["Action"] = [a for a in statement["Action"] if a != "logs:FilterLogEvents"]
    (tmp_path / "airflow.json").write_text(json.dumps(policy))
    monkeypatch.setattr(aws_actions, "POLICIES", tmp_path)
    assert lacking({"airflow": {"logs:filterlogevents", "batch:submitjob"}}) == {"airflow": ["logs:filterlogevents"]}


def test_s3_operations_map_to_their_iam_actions_and_tagging_on_create_needs_tag_resource():
    assert iam_actions("s3", "ListObjectsV2", {}) == ["s3:ListBucket"]
    assert iam_actions("s3", "UploadPart", {}) == ["s3:PutObject"]
    assert iam_actions("batch", "SubmitJob", {"tags": {"a": "b"}}) == ["batch:SubmitJob", "batch:TagResource"]
    assert iam_actions("batch", "SubmitJob", {}) == ["batch:SubmitJob"]
    # The policies never allow more than their principal needs to do its work: no wildcards.
    for name in ("airflow.json", "job-role.json", "batch-setup.json"):
        assert not any("*" in a for a in allowed_actions(name)), name
