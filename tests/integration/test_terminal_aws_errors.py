"""The terminal's answer to the commonest AWS mistakes: one line naming the fix, exit code 2, no
traceback. Run as real processes against the moto server, or with the credential chain emptied
(no environment, no config files, no instance metadata)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).with_name("airflow-gpu")
pytestmark = pytest.mark.timeout(180)

JOB = "00000000-0000-0000-0000-000000000000"


def empty_chain(tmp_path: Path, **more: str) -> dict[str, str]:
    """No credentials anywhere: no AWS_* variables, empty config files, no metadata service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW"))}
    empty = tmp_path / "empty"
    empty.write_text("")
    env.update(
        AWS_CONFIG_FILE=str(empty),
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        AWS_EC2_METADATA_DISABLED="true",
        HOME=str(tmp_path),
        AIRFLOW_HOME="/nonexistent/airflow-home",
    )
    env.update(more)
    return env


def with_keys(tmp_path: Path) -> dict[str, str]:
    return empty_chain(tmp_path, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=120)


def one_line_error(done: subprocess.CompletedProcess, command: str) -> str:
    """The error line, after checking that it ends stderr, no traceback came before it, and the exit code is 2.
    (A retry's warning may come before it: the backend's log lines still reach stderr.)"""
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and sum("error:" in line for line in lines) == 1, done.stderr
    assert lines[-1].startswith(f"airflow-gpu {command}: error: "), lines[-1]
    assert done.returncode == 2, (done.returncode, done.stderr)
    return lines[-1]


def moto(moto_aws) -> tuple[str, ...]:
    return ("--endpoint-url", moto_aws.endpoint_url, "--region", moto_aws.region)


COMMANDS = {
    "submit": ("--queue", "q", "--definition", "d", "--detach", "--", "python", "train.py"),
    "status": (JOB,),
    "logs": (JOB,),
    "cancel": (JOB,),
    "jobs": ("--queue", "q"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_credentials_names_the_ways_to_provide_them(command, tmp_path, moto_aws):
    line = one_line_error(cli(empty_chain(tmp_path), command, *moto(moto_aws), *COMMANDS[command]), command)
    assert "no AWS credentials" in line
    assert "aws sso login" in line and "--profile" in line and "AWS_ACCESS_KEY_ID" in line


@pytest.mark.parametrize("region", [(), ("--region", "eu-west-1")], ids=["without-region", "with-region"])
def test_a_missing_profile_is_named(region, tmp_path):
    line = one_line_error(
        cli(empty_chain(tmp_path, AWS_REGION="us-east-1"), "status", JOB, "--profile", "nope", *region), "status"
    )
    assert "'nope'" in line and "--profile" in line


def test_an_expired_token_says_to_log_in_again(tmp_path, moto_aws, gpu_batch):
    moto_aws.batch.refuse("describejobs", "ExpiredTokenException")
    line = one_line_error(cli(with_keys(tmp_path), "status", JOB, *moto(moto_aws)), "status")
    assert "expired" in line and "aws sso login" in line


@pytest.mark.parametrize("command, action", [("submit", "batch:SubmitJob"), ("status", "batch:DescribeJobs")])
def test_access_denied_names_the_action_and_the_policy_file(command, action, tmp_path, moto_aws, gpu_batch):
    moto_aws.batch.refuse(
        command.replace("status", "describejobs").replace("submit", "submitjob"), "AccessDeniedException"
    )
    args = (
        COMMANDS[command]
        if command == "status"
        else (
            "--queue",
            gpu_batch["job_queue"],
            "--definition",
            gpu_batch["job_definition"],
            "--detach",
            "--",
            "python",
            "train.py",
        )
    )
    line = one_line_error(cli(with_keys(tmp_path), command, *moto(moto_aws), *args), command)
    assert action in line and "container/iam/airflow.json" in line


def test_an_unknown_queue_lists_the_queues_that_exist(tmp_path, moto_aws, gpu_batch):
    done = cli(
        with_keys(tmp_path),
        "submit",
        "--queue",
        "gpu-queu",
        "--definition",
        gpu_batch["job_definition"],
        "--detach",
        *moto(moto_aws),
        "--",
        "python",
        "train.py",
    )
    line = one_line_error(done, "submit")
    assert "'gpu-queu'" in line and "--queue" in line and "gpu-queue" in line.split("one of:")[1]
    assert not moto_aws.batch.jobs()


def test_an_unknown_job_definition_lists_the_definitions_that_exist(tmp_path, moto_aws, gpu_batch):
    done = cli(
        with_keys(tmp_path),
        "submit",
        "--queue",
        gpu_batch["job_queue"],
        "--definition",
        "gpu-alss",
        "--detach",
        *moto(moto_aws),
        "--",
        "python",
        "train.py",
    )
    line = one_line_error(done, "submit")
    assert "'gpu-alss'" in line and "--definition" in line and "gpu-als:1" in line


def test_with_nothing_set_up_the_error_names_batch_setup(tmp_path, moto_aws):
    done = cli(
        with_keys(tmp_path),
        "submit",
        "--queue",
        "gpu-queue",
        "--definition",
        "gpu-als",
        "--detach",
        *moto(moto_aws),
        "--",
        "python",
        "train.py",
    )
    line = one_line_error(done, "submit")
    assert "batch-setup" in line


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.mark.parametrize("command", ["status", "logs", "cancel", "jobs", "submit"])
def test_an_unreachable_endpoint_gives_up_in_one_line_in_a_terminal(command, tmp_path):
    """In a pseudo-terminal, as a person runs it: the command ends by itself with one line."""
    import pty

    endpoint = f"http://127.0.0.1:{closed_port()}"
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [
            str(CLI),
            command,
            "--endpoint-url",
            endpoint,
            "--region",
            "us-east-1",
            "--give-up-after",
            "2",
            *COMMANDS[command],
        ],
        env=with_keys(tmp_path),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    seen = b""
    try:
        while True:  # bounded by the process's end (EIO) and the test's timeout
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        code = process.wait(timeout=60)
    finally:
        process.kill()
        os.close(controller)
    text = seen.decode(errors="replace")
    assert "Traceback" not in text, text
    last = [line for line in text.splitlines() if line.strip()][-1]
    assert last.startswith(f"airflow-gpu {command}: error: no answer from {endpoint} in 2 s"), text
    assert "--give-up-after" in last
    assert code == 2
