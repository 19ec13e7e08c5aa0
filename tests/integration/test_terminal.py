"""`airflow-gpu submit | logs | status | cancel | jobs`, run as real processes, against the local
backend and against the moto server (the test plays the container there). No Airflow home,
database or connection is given to any of them."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.container_testing import play_container
from tests.support.local_jobs_testing import kill_leftover_local_jobs

CLI = Path(sys.executable).with_name("airflow-gpu")
pytestmark = pytest.mark.timeout(300)


def clean_env(**more: str) -> dict[str, str]:
    # Nothing Airflow-shaped: the terminal path must not need it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = "/nonexistent/airflow-home"  # would fail loudly if anything tried to use it
    env.update(more)
    return env


@pytest.fixture
def local_jobs(tmp_path):
    state = tmp_path / "jobs"
    # These jobs are plain programs, so `env` stands in for the image's entrypoint (airflow-gpu-worker):
    # the local backend puts it in front of each command, as Batch puts the image's ENTRYPOINT.
    yield clean_env(AIRFLOW_GPU_LOCAL_JOBS_DIR=str(state), AIRFLOW_GPU_LOCAL_ENTRYPOINT="env")
    kill_leftover_local_jobs(state)


def cli(env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=timeout)


def job_id_in(out: str) -> str:
    return re.search(r"Submitted job (\S+)", out).group(1)


LOCAL = ("--backend", "local", "--poll-interval", "0.2")
PRINTS_AND_EXITS_3 = ["python", "-c", "print('epoch 1 loss 0.5'); print('epoch 2 loss 0.25'); raise SystemExit(3)"]


# -- local backend ------------------------------------------------------------------------------


def test_local_submit_streams_the_log_and_exits_with_the_jobs_code(local_jobs, tmp_path):
    go = tmp_path / "go"
    program = (
        f"import os, time\nprint('epoch 1 loss 0.5'); print('epoch 2 loss 0.25', flush=True)\n"
        f"for _ in range(600):\n    if os.path.exists({str(go)!r}): break\n    time.sleep(0.1)\nraise SystemExit(3)\n"
    )
    process = subprocess.Popen(
        [str(CLI), "submit", *LOCAL, "--", "python", "-c", program],
        env=local_jobs,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = ""
        for _ in range(100):  # bounded
            line = process.stdout.readline()
            seen += line
            if not line or line.startswith("epoch 2"):
                break
        go.touch()  # the lines were streamed while the job ran; now it may exit
        rest, err = process.communicate(timeout=60)
    finally:
        process.kill()
    out = seen + rest
    assert process.returncode == 3, err
    assert "epoch 1 loss 0.5\nepoch 2 loss 0.25" in out
    assert re.search(r"==\s+[\d.]+s  RUNNING", out) and re.search(r"==\s+[\d.]+s  FAILED, exit code 3", out)
    assert out.index("RUNNING") < out.index("epoch 1") < out.index("FAILED")
    assert not Path("/nonexistent/airflow-home").exists()


def test_local_detach_status_cancel_and_jobs(local_jobs):
    done = cli(local_jobs, "submit", *LOCAL, "--detach", "--name", "long one", "--", "sleep", "60")
    assert done.returncode == 0, done.stderr
    job_id = job_id_in(done.stdout)
    status = cli(local_jobs, "status", job_id, "--backend", "local")
    assert status.returncode == 0 and re.search(r"status: RUNNING", status.stdout), status.stdout
    assert "from: terminal (" in status.stdout
    listing = cli(local_jobs, "jobs", "--backend", "local", "--status", "RUNNING")
    assert job_id in listing.stdout and "long_one-" in listing.stdout

    cancel = cli(local_jobs, "cancel", job_id, "--backend", "local", "--reason", "wrong data")
    assert cancel.returncode == 0 and f"Terminating job {job_id}: wrong data" in cancel.stdout
    status = cli(local_jobs, "status", job_id, "--backend", "local")
    assert "status: FAILED" in status.stdout and "reason: wrong data" in status.stdout
    again = cli(local_jobs, "cancel", job_id, "--backend", "local")
    assert again.returncode == 0 and "already ended FAILED; nothing to cancel" in again.stdout
    assert job_id not in cli(local_jobs, "jobs", "--backend", "local", "--status", "RUNNING").stdout


def test_local_logs_whole_tail_and_follow(local_jobs):
    done = cli(local_jobs, "submit", *LOCAL, "--", "python", "-c", "for i in range(5): print('line', i)")
    assert done.returncode == 0, done.stderr
    job_id = job_id_in(done.stdout)
    whole = cli(local_jobs, "logs", job_id, "--backend", "local")
    assert whole.returncode == 0 and whole.stdout.splitlines() == [f"line {i}" for i in range(5)]
    tail = cli(local_jobs, "logs", job_id, "--backend", "local", "--tail", "2")
    assert tail.stdout.splitlines() == ["line 3", "line 4"]
    follow = cli(local_jobs, "logs", job_id, "--backend", "local", "--follow")  # already ended: the whole log
    assert follow.returncode == 0 and "line 4" in follow.stdout


def test_local_logs_follow_with_tail_prints_the_end_then_what_comes(local_jobs, tmp_path):
    go = tmp_path / "go"
    program = (
        f"import os, time\nfor i in range(5): print('line', i, flush=True)\n"
        f"for _ in range(600):\n    if os.path.exists({str(go)!r}): break\n    time.sleep(0.1)\nprint('end', flush=True)\n"
    )
    done = cli(local_jobs, "submit", *LOCAL, "--detach", "--", "python", "-c", program)
    job_id = job_id_in(done.stdout)
    process = subprocess.Popen(
        [str(CLI), "logs", job_id, *LOCAL, "--follow", "--tail", "2"],
        env=local_jobs,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        for _ in range(100):  # bounded
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line.rstrip("\n"))
            if line.startswith("line 4"):
                break
        go.touch()  # only now may the job print its last line
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    lines = [line for line in seen + out.splitlines() if not line.startswith("==")]
    assert process.returncode == 0, err
    assert lines == ["line 3", "line 4", "end"]


def test_local_ctrl_c_with_terminate_on_interrupt_terminates_the_job(local_jobs):
    process = subprocess.Popen(
        [
            str(CLI),
            "submit",
            *LOCAL,
            "--terminate-on-interrupt",
            "--",
            "python",
            "-u",
            "-c",
            "import time; print('started', flush=True); time.sleep(120)",
        ],
        env=local_jobs,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = ""
        for _ in range(200):  # bounded: the job prints within seconds
            line = process.stdout.readline()
            seen += line
            if "started" in line or not line:
                break
        assert "started" in seen, seen
        job_id = job_id_in(seen)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert f"Terminated job {job_id}." in out
    status = cli(local_jobs, "status", job_id, "--backend", "local")
    assert "status: FAILED" in status.stdout and "(Ctrl-C)" in status.stdout


@pytest.mark.parametrize("answer", ["y", "second ctrl-c", "n"])
def test_local_ctrl_c_asks_before_terminating(local_jobs, answer):
    import pty

    master, slave = pty.openpty()  # a terminal on stdin, so the question can be asked
    process = subprocess.Popen(
        [
            str(CLI),
            "submit",
            *LOCAL,
            "--",
            "python",
            "-u",
            "-c",
            "import time; print('started', flush=True); time.sleep(120)",
        ],
        env=local_jobs,
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(slave)
    try:
        seen = ""
        for _ in range(200):  # bounded
            line = process.stdout.readline()
            seen += line
            if "started" in line or not line:
                break
        job_id = job_id_in(seen)
        process.send_signal(signal.SIGINT)
        prompt = ""
        while "[y/N]" not in prompt:  # input() writes the question without a newline
            char = process.stdout.read(1)
            assert char, prompt
            prompt += char
        if answer == "second ctrl-c":
            # A person presses it long after the question; a signal that lands before input()'s read()
            # starts is only acted on once that read returns (how Python handles signals), so give it a moment.
            time.sleep(0.5)
            process.send_signal(signal.SIGINT)
        else:
            os.write(master, (answer + "\n").encode())
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        os.close(master)
    assert process.returncode == 130, err
    status = cli(local_jobs, "status", job_id, "--backend", "local").stdout
    if answer == "n":
        assert "status: RUNNING" in status
        # Every hint is a command that works when pasted (here: with --backend local in it).
        hints = re.findall(r"`(airflow-gpu [^`]+)`", out.split("keeps running")[1])
        assert [h.split()[1] for h in hints] == ["cancel", "logs"], out
        env = {k: v for k, v in local_jobs.items() if k != "AIRFLOW_GPU_BACKEND"}
        cancel = subprocess.run(
            shlex.split(hints[0].replace("airflow-gpu", str(CLI), 1)),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cancel.returncode == 0 and f"Terminating job {job_id}" in cancel.stdout, cancel.stderr
    else:
        assert f"Terminated job {job_id}." in out and "status: FAILED" in status


def test_local_script_is_staged_and_run_by_run_script(local_jobs, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import os, sys\nprint('args', sys.argv[1:])\nopen(os.path.join(os.environ['OUTPUT_DIR'], 'model.txt'), 'w').write('ok')\n"
    )
    worker_image = {k: v for k, v in local_jobs.items() if k != "AIRFLOW_GPU_LOCAL_ENTRYPOINT"}  # airflow-gpu-worker
    done = cli(
        worker_image,
        "submit",
        *LOCAL,
        "--script",
        str(script),
        "--output",
        str(tmp_path / "out"),
        "--staging-prefix",
        str(tmp_path / "staging"),
        "--",
        "--epochs",
        "2",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "args ['--epochs', '2']" in done.stdout
    [staged] = (tmp_path / "staging" / "scripts").glob("*/train.py")
    assert staged.read_bytes() == script.read_bytes()
    assert list((tmp_path / "out").rglob("model.txt"))


def test_a_script_changed_after_staging_is_refused_and_not_run(tmp_path):
    from tests.support.container_testing import run_worker

    script = tmp_path / "train.py"
    script.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\n")
    digest = __import__("hashlib").sha256(script.read_bytes()).hexdigest()
    script.write_text(script.read_text() + "print('tampered')\n")
    done = run_worker(["run-script", "--script", str(script), "--sha256", digest, "--output", str(tmp_path / "out")])
    assert done.returncode == 2 and "script digest mismatch" in done.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("command", ["logs", "status", "cancel"])
def test_an_unknown_job_id_is_a_clear_error(local_jobs, command):
    done = cli(local_jobs, command, "no-such-job", "--backend", "local")
    assert done.returncode == 2
    assert f"airflow-gpu {command}: error: no job 'no-such-job' in local processes" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_arguments_are_refused_before_anything_is_submitted(local_jobs, tmp_path):
    done = cli(local_jobs, "submit", *LOCAL, "--gpus", "99", "--", "true")
    assert done.returncode == 2 and "gpus" in done.stderr and "Traceback" not in done.stderr
    done = cli(local_jobs, "submit", *LOCAL, "--script", str(tmp_path / "x.py"), "--output", str(tmp_path))
    assert done.returncode == 2 and "no such file" in done.stderr
    (tmp_path / "x.py").write_text("print(1)\n")
    env = {k: v for k, v in local_jobs.items() if k != "AIRFLOW_GPU_STAGING_PREFIX"}
    # On Batch the staging prefix must be named (a local job stages beside its records without one).
    done = cli(
        env, "submit", "--queue", "q", "--definition", "d", "--script", str(tmp_path / "x.py"), "--output", "s3://b/o/"
    )
    assert done.returncode == 2 and "No staging prefix" in done.stderr and "--staging-prefix" in done.stderr
    assert not (tmp_path / "jobs").exists()  # nothing was submitted


# -- moto: AWS Batch, CloudWatch Logs and S3 through the standard credential chain --------------


def moto_args(moto_aws) -> tuple[str, ...]:
    return ("--endpoint-url", moto_aws.endpoint_url, "--region", moto_aws.region)


WAITING = "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - no g5 instance free"


def seen_by_a_describe(moto_aws, job_id: str) -> bool:
    with moto_aws.log.lock:
        return any(job_id in ids for _, ids in moto_aws.log.describe_batches)


def play_next_job(moto_aws, entrypoint: bool = False) -> list[int]:
    """Once the CLI has seen the job RUNNABLE (waiting for capacity), run it as the container would."""
    codes: list[int] = []

    def play():
        [job_id] = moto_aws.batch.wait_for_jobs(1, timeout=60)
        moto_aws.batch.job(job_id).job_stopped_reason = WAITING  # moto's statusReason
        for _ in range(600):  # bounded: the CLI polls every 0.2 s
            if seen_by_a_describe(moto_aws, job_id):
                break
            time.sleep(0.05)
        time.sleep(0.3)  # one more poll, so the reason set above is the one seen
        moto_aws.batch.job(job_id).job_stopped_reason = None
        command = moto_aws.log.submitted[-1]["containerOverrides"]["command"]
        codes.append(play_container(moto_aws, job_id, command, entrypoint=entrypoint))

    threading.Thread(target=play, daemon=True).start()
    return codes


def test_moto_submit_streams_the_log_and_propagates_a_non_zero_exit(moto_aws, gpu_batch):
    moto_aws.batch.hold("RUNNABLE")
    codes = play_next_job(moto_aws)
    done = cli(
        clean_env(),
        "submit",
        "--queue",
        gpu_batch["job_queue"],
        "--definition",
        gpu_batch["job_definition"],
        "--gpus",
        "1",
        "--env",
        "EPOCHS=2",
        "--tag",
        "team=ds",
        "--poll-interval",
        "0.2",
        *moto_args(moto_aws),
        "--",
        *PRINTS_AND_EXITS_3,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert codes == [3]
    out = done.stdout
    assert "https://console.aws.amazon.com/batch/home?region=us-east-1#jobs/detail/" in out
    assert "log: https://console.aws.amazon.com/cloudwatch/home?region=us-east-1#logsV2:log-groups/log-group/" in out
    assert "epoch 1 loss 0.5\nepoch 2 loss 0.25" in out
    assert re.search(r"RUNNABLE.*\n(.*\n)*.*RUNNING.*\n(.*\n)*.*FAILED, exit code 3", out), out
    assert f"RUNNABLE  ({WAITING})" in out
    sent = moto_aws.log.submitted[-1]
    assert sent["containerOverrides"]["command"] == PRINTS_AND_EXITS_3
    assert sent["tags"]["team"] == "ds" and sent["tags"]["airflow:dag_id"] == "airflow-gpu-submit"


def test_moto_cancel_status_and_jobs_listing(moto_aws, gpu_batch):
    moto_aws.batch.hold("RUNNING")
    target = ("--queue", gpu_batch["job_queue"], "--definition", gpu_batch["job_definition"])
    done = cli(
        clean_env(),
        "submit",
        *target,
        "--detach",
        "--name",
        "nightly",
        *moto_args(moto_aws),
        "--",
        "python",
        "train.py",
    )
    assert done.returncode == 0, done.stderr
    job_id = job_id_in(done.stdout)
    # A job an Airflow task submitted is listed with its dag, task and run.
    from airflow_gpu.jobs.spec import TaskIdentity

    identity = TaskIdentity("recsys", "train", "scheduled__2026-01-01", -1)
    other = moto_aws.client("batch").submit_job(
        jobName="recsys-train-x",
        jobQueue=gpu_batch["job_queue"],
        jobDefinition=gpu_batch["job_definition"],
        tags=identity.tags(),
    )["jobId"]
    foreign = moto_aws.client("batch").submit_job(
        jobName="not-ours", jobQueue=gpu_batch["job_queue"], jobDefinition=gpu_batch["job_definition"]
    )["jobId"]
    listing = cli(clean_env(), "jobs", "--queue", gpu_batch["job_queue"], *moto_args(moto_aws))
    assert listing.returncode == 0, listing.stderr
    assert job_id in listing.stdout and "nightly-" in listing.stdout
    # (DURATION, GPU-H and COST stay "-" while a job runs.)
    assert re.search(
        rf"{other}\s+RUNNING\s+recsys-train-x\s+-\s+-\s+-\s+recsys.train run scheduled__2026-01-01", listing.stdout
    )
    assert foreign not in listing.stdout  # not submitted by airflow-gpu

    cancel = cli(clean_env(), "cancel", job_id, "--reason", "wrong data", *moto_args(moto_aws))
    assert cancel.returncode == 0, cancel.stderr
    assert (job_id, "wrong data") in moto_aws.log.terminated
    status = cli(clean_env(), "status", job_id, *moto_args(moto_aws))
    assert "status: FAILED" in status.stdout and "wrong data" in status.stdout
    assert "airflow-gpu:cancelled" in moto_aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]["tags"]


@pytest.mark.parametrize("command", ["logs", "status", "cancel"])
def test_moto_unknown_job_id_is_a_clear_error(moto_aws, gpu_batch, command):
    done = cli(clean_env(), command, "00000000-0000-0000-0000-000000000000", *moto_args(moto_aws))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no job '00000000-0000-0000-0000-000000000000' in AWS Batch in us-east-1" in done.stderr
    assert "Traceback" not in done.stderr


def test_moto_script_is_uploaded_to_the_staging_prefix_and_run_by_run_script(moto_aws, gpu_batch, tmp_path):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="ds-data")
    s3.put_object(Bucket="ds-data", Key="in/data.csv", Body=b"a,b\n1,2\n")
    script = tmp_path / "train.py"
    script.write_text(
        "import os\nprint('inputs', sorted(os.listdir(os.environ['INPUT_DIR'])))\n"
        "open(os.path.join(os.environ['OUTPUT_DIR'], 'm.txt'), 'w').write('ok')\n"
    )
    moto_aws.batch.hold("RUNNABLE")
    codes = play_next_job(moto_aws, entrypoint=True)
    done = cli(
        clean_env(),
        "submit",
        "--queue",
        gpu_batch["job_queue"],
        "--definition",
        gpu_batch["job_definition"],
        "--script",
        str(script),
        "--input",
        "s3://ds-data/in/",
        "--output",
        "s3://ds-data/out/",
        "--staging-prefix",
        "s3://ds-data/staging/",
        "--poll-interval",
        "0.2",
        *moto_args(moto_aws),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert codes == [0]
    command = moto_aws.log.submitted[-1]["containerOverrides"]["command"]
    assert command[:2] == ["run-script", "--script"] and re.fullmatch(
        r"s3://ds-data/staging/scripts/[0-9a-f]{64}/train\.py", command[2]
    )
    assert command[3:5] == ["--sha256", command[2].split("/")[-2]]  # the worker runs only those bytes
    assert "inputs ['data.csv']" in done.stdout
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="ds-data", Prefix="out/")["Contents"]]
    assert any(k.endswith("/output/m.txt") for k in keys) and any(k.endswith("manifest.json") for k in keys)
