"""The three ways to run a project's code bundle: ``airflow-gpu submit --code`` (local backend and a
moto server, where a second submit of the same content PUTs nothing), and ``@task.gpu_batch(code=...)``
whose function imports a helper from its bundle (moto server; the test plays the container)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_gpu.decorators import GpuBatchDecoratedOperator
from tests.support.code_bundles import two_module_project
from tests.support.container_testing import play_container
from tests.support.gpu_batch_testing import FakeTaskInstance, fire, make_context
from tests.support.local_jobs_testing import kill_leftover_local_jobs

CLI = Path(sys.executable).with_name("airflow-gpu")
pytestmark = pytest.mark.timeout(300)


def clean_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = "/nonexistent/airflow-home"  # the terminal path must not need one
    env.update(more)
    return env


def cli(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=120)


def test_local_submit_runs_a_module_of_a_checkout_stages_it_once_and_names_what_git_left_out(tmp_path):
    project = two_module_project(tmp_path / "proj")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "add", "."], check=True)
    (project / "scratch.py").write_text("print('never added')\n")
    env = clean_env(AIRFLOW_GPU_LOCAL_JOBS_DIR=str(tmp_path / "jobs"))
    staging = tmp_path / "staging"
    try:
        runs = [
            cli(
                env,
                "submit",
                "--backend",
                "local",
                "--poll-interval",
                "0.2",
                "--code",
                str(project),
                "--module",
                "pkg.train",
                "--output",
                str(tmp_path / f"out{i}"),
                "--staging-prefix",
                str(staging),
                "--",
                "--epochs",
                "2",
            )
            for i in (1, 2)
        ]
    finally:
        kill_leftover_local_jobs(tmp_path / "jobs")
    for done in runs:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "hello module from helper ['--epochs', '2']" in done.stdout
    assert re.search(r"Uploaded 4 files of .*proj as .*/code/[0-9a-f]{64}\.tar\.gz", runs[0].stdout)
    assert (
        f"Note: left out of the bundle (not tracked by git in {project}): scratch.py; `git add` them" in runs[0].stdout
    )
    assert "Already staged: 4 files" in runs[1].stdout
    assert len(list((staging / "code").iterdir())) == 1


def test_submit_refuses_a_script_that_is_not_in_the_folder(tmp_path):
    project = two_module_project(tmp_path / "proj")
    done = cli(
        clean_env(),
        "submit",
        "--backend",
        "local",
        "--code",
        str(project),
        "--script",
        "missing.py",
        "--output",
        str(tmp_path / "out"),
        "--staging-prefix",
        str(tmp_path / "staging"),
    )
    assert done.returncode == 2 and "--script missing.py is not among the files of --code" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "staging").exists()


def test_submit_refuses_a_folder_over_the_size_limit_naming_its_largest_file(tmp_path):
    project = two_module_project(tmp_path / "proj")
    (project / "checkpoint.pt").write_bytes(b"c" * 5000)
    done = cli(
        clean_env(),
        "submit",
        "--backend",
        "local",
        "--code",
        str(project),
        "--script",
        "train.py",
        "--max-code-size",
        "4kB",
        "--output",
        str(tmp_path / "out"),
        "--staging-prefix",
        str(tmp_path / "staging"),
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "over the 4.0 kB limit; largest files: checkpoint.pt (5.0 kB)" in done.stderr
    assert not (tmp_path / "staging").exists()


def test_moto_submit_uploads_a_bundle_once_and_the_job_runs_it(moto_aws, gpu_batch, tmp_path):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="ds-data")
    project = two_module_project(tmp_path / "proj")
    moto_aws.batch.hold("RUNNABLE")
    target = (
        "--queue",
        gpu_batch["job_queue"],
        "--definition",
        gpu_batch["job_definition"],
        "--endpoint-url",
        moto_aws.endpoint_url,
        "--region",
        moto_aws.region,
    )
    submit = (
        "submit",
        *target,
        "--detach",
        "--code",
        str(project),
        "--script",
        "train.py",
        "--output",
        "s3://ds-data/out/",
        "--staging-prefix",
        "s3://ds-data/staging/",
    )
    puts_before = moto_aws.log.aws_calls["s3:putobject"]
    first = cli(clean_env(), *submit)
    assert first.returncode == 0, first.stdout + first.stderr
    assert moto_aws.log.aws_calls["s3:putobject"] == puts_before + 1
    second = cli(clean_env(), *submit)
    assert second.returncode == 0, second.stdout + second.stderr
    assert moto_aws.log.aws_calls["s3:putobject"] == puts_before + 1  # the same content: no second PUT
    assert "Already staged" in second.stdout

    commands = [job["containerOverrides"]["command"] for job in moto_aws.log.submitted[-2:]]
    assert commands[0] == commands[1]
    command = commands[0]
    assert command[:2] == ["run-script", "--code"]
    assert re.fullmatch(r"s3://ds-data/staging/code/([0-9a-f]{64})\.tar\.gz", command[2])
    assert command[3:5] == ["--sha256", command[2].rsplit("/", 1)[1].split(".")[0]]
    job_id = re.search(r"Submitted job (\S+)", first.stdout).group(1)
    assert play_container(moto_aws, job_id, command) == 0
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="ds-data", Prefix="out/")["Contents"]]
    [greeting] = [k for k in keys if k.endswith("/output/greeting.txt")]
    assert s3.get_object(Bucket="ds-data", Key=greeting)["Body"].read() == b"hello script from helper"


# -- @task.gpu_batch(code=...) -------------------------------------------------------------------

STAGING = "s3://staging/airflow-gpu/"


def greets_with_the_bundles_helper(who: str) -> str:
    from pkg.helper import greet  # only in the code bundle, not in this test's environment

    return greet(who)


def test_a_decorated_function_imports_a_helper_from_its_code_bundle(moto_aws, gpu_batch, aws_conn, tmp_path):
    moto_aws.client("s3").create_bucket(Bucket="staging")
    project = two_module_project(tmp_path / "proj")
    assert "pkg" not in sys.modules

    def make() -> GpuBatchDecoratedOperator:
        return GpuBatchDecoratedOperator(
            task_id="greet",
            python_callable=greets_with_the_bundles_helper,
            op_args=["decorator"],
            job_queue=gpu_batch["job_queue"],
            job_definition=gpu_batch["job_definition"],
            staging_prefix=STAGING,
            code=str(project),
            poll_interval=0.1,
            deferrable=True,
        )

    context = make_context(FakeTaskInstance(task_id="greet"))
    moto_aws.batch.hold("RUNNABLE")
    with pytest.raises(TaskDeferred) as deferred:
        make().execute(context)
    command = moto_aws.log.submitted[-1]["containerOverrides"]["command"]
    code_uri = command[command.index("--code") + 1]
    assert code_uri.startswith(STAGING + "code/") and code_uri.endswith(".tar.gz")
    assert command[command.index("--code-sha256") + 1] in code_uri
    codes: list[int] = []
    job_id = deferred.value.trigger.job_id
    player = threading.Thread(target=lambda: codes.append(play_container(moto_aws, job_id, command)), daemon=True)
    player.start()
    event = fire(deferred.value.trigger, timeout=120)
    player.join(60)
    assert codes == [0] and event["status"] == "SUCCEEDED"
    puts = moto_aws.log.aws_calls["s3:putobject"]
    assert make().execute_complete(context, event) == "hello decorator from helper"
    # Resuming derives the command again; the bundle is already staged, so only nothing new is written.
    assert moto_aws.log.aws_calls["s3:putobject"] == puts + 1  # the function document, rewritten as before
