"""A new user's first hour on the local backend, as real processes: a plain command runs through the
image's entrypoint, relative paths mean what a shell means, a bad output fails before any input is
read, the local defaults need no S3, and ids and the default backend carry between commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.local_jobs_testing import job_record, kill_leftover_local_jobs

BIN = Path(sys.executable).parent
CLI, WORKER = BIN / "airflow-gpu", BIN / "airflow-gpu-worker"
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def home(tmp_path):
    """A clean environment whose local jobs run through the real entrypoint (airflow-gpu-worker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow-home"), AIRFLOW_GPU_LOCAL_JOBS_DIR=str(tmp_path / "jobs"))
    work = tmp_path / "project"
    work.mkdir()
    yield env, work
    kill_leftover_local_jobs(tmp_path / "jobs")


def run(env, cwd, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def job_id_in(out: str) -> str:
    return re.search(r"Submitted job (\S+)", out).group(1)


# -- 3: a plain command runs on every backend -------------------------------------------------------


def test_submit_python_train_py_runs_through_the_workers_entrypoint(home):
    env, work = home
    (work / "train.py").write_text("import sys\nprint('trained with', sys.argv[1:])\nraise SystemExit(4)\n")
    done = run(
        env,
        work,
        CLI,
        "submit",
        "--backend",
        "local",
        "--poll-interval",
        "0.2",
        "--",
        "python",
        "train.py",
        "--epochs",
        "1",
    )
    assert "trained with ['--epochs', '1']" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 4  # the program's own exit code, passed through by the entrypoint
    record = job_record(env["AIRFLOW_GPU_LOCAL_JOBS_DIR"], job_id_in(done.stdout))["job.json"]
    assert record["command"][:3] == ["airflow-gpu-worker", "python", "train.py"]


def test_the_worker_runs_a_plain_command_as_itself(tmp_path):
    done = run(None, tmp_path, WORKER, "echo", "hello", "from", "the", "image")
    assert done.returncode == 0 and done.stdout == "hello from the image\n"
    missing = run(None, tmp_path, WORKER, "no-such-program-here", "x")
    assert missing.returncode == 127 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [
        "airflow-gpu-worker: error: 'no-such-program-here' is neither a worker command (als, run-script, run-function) "
        "nor a program on PATH; check the job's command"
    ]


def test_the_entrypoint_knows_every_worker_subcommand():
    from airflow_gpu.worker.__main__ import build_parser
    from airflow_gpu.worker.entrypoint import SUBCOMMANDS

    [commands] = [a for a in build_parser()._actions if a.dest == "command"]
    assert set(commands.choices) == set(SUBCOMMANDS)


# -- 4: local paths mean what a shell means ---------------------------------------------------------


def test_relative_input_output_and_staging_are_the_submitters_folder(home):
    env, work = home
    (work / "data").mkdir()
    (work / "data" / "rows.csv").write_text("a,b\n1,2\n")
    (work / "count.py").write_text(
        "import os\nnames = sorted(os.listdir(os.environ['INPUT_DIR']))\n"
        "open(os.path.join(os.environ['OUTPUT_DIR'], 'seen.txt'), 'w').write(','.join(names))\nprint('inputs', names)\n"
    )
    done = run(
        env,
        work,
        CLI,
        "submit",
        "--backend",
        "local",
        "--poll-interval",
        "0.2",
        "--script",
        "count.py",
        "--input",
        "./data/",
        "--output",
        "relout/",
        "--staging-prefix",
        "stage/",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "inputs ['rows.csv']" in done.stdout
    command = job_record(env["AIRFLOW_GPU_LOCAL_JOBS_DIR"], job_id_in(done.stdout))["job.json"]["command"]
    assert command[command.index("--input") + 1] == f"{work}/data/"
    assert command[command.index("--output") + 1] == f"{work}/relout/"
    assert command[command.index("--script") + 1].startswith(f"{work}/stage/")
    assert list((work / "relout").glob("runs/*/output/seen.txt"))[0].read_text() == "rows.csv"


# -- 5: the output is proven writable before any input is read -------------------------------------


@pytest.mark.parametrize("command", ["als", "run-script", "run-function"])
def test_an_unwritable_local_output_fails_before_the_input_is_read(command, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = f"{blocker}/out/"
    missing = str(tmp_path / "no-such-input")
    argv = {
        "als": ["als", "--input", missing, "--output", out],
        "run-script": ["run-script", "--script", str(tmp_path / "s.py"), "--input", missing, "--output", out],
        "run-function": ["run-function", "--payload", f"{missing}/p.json", "--sha256", "0" * 64, "--result", out],
    }[command]
    (tmp_path / "s.py").write_text("print('ran')\n")
    done = run(None, tmp_path, WORKER, *argv)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "cannot write there" in errors[0] and str(blocker) in errors[0], done.stderr
    assert done.returncode == 2
    assert "ran" not in done.stdout


# -- 6: local defaults that fit a laptop -----------------------------------------------------------


def test_a_local_script_needs_no_staging_prefix(home):
    env, work = home
    (work / "hello.py").write_text("print('hello from a staged script')\n")
    done = run(
        env,
        work,
        CLI,
        "submit",
        "--backend",
        "local",
        "--poll-interval",
        "0.2",
        "--script",
        "hello.py",
        "--output",
        "out/",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hello from a staged script" in done.stdout
    staged = Path(env["AIRFLOW_GPU_LOCAL_JOBS_DIR"]) / "staging" / "scripts"
    assert [p.name for p in staged.glob("*/*")] == ["hello.py"]


def test_without_a_staging_prefix_on_batch_the_error_names_a_local_folder_too(home):
    env, work = home
    (work / "hello.py").write_text("print('x')\n")
    done = run(
        env, work, CLI, "submit", "--queue", "q", "--definition", "d", "--script", "hello.py", "--output", "s3://b/o/"
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "or a local folder" in done.stderr


def test_the_operators_poll_interval_fits_the_backend():
    from airflow_gpu.operators import GpuBatchOperator

    local = GpuBatchOperator(task_id="local", command=["echo", "hi"], backend="local")
    batch = GpuBatchOperator(task_id="batch", command=["echo", "hi"], job_queue="q", job_definition="d")
    chosen = GpuBatchOperator(task_id="chosen", command=["echo", "hi"], backend="local", poll_interval=7)
    assert (local.poll_interval, batch.poll_interval, chosen.poll_interval) == (2.0, 30.0, 7.0)


# -- 8: ids and the default backend carry ----------------------------------------------------------


def test_airflow_gpu_backend_sets_the_default_backend(home):
    env, work = home
    env = {**env, "AIRFLOW_GPU_BACKEND": "local"}
    done = run(env, work, CLI, "submit", "--detach", "--", "python", "-c", "print('ok')")
    assert done.returncode == 0, done.stderr
    job_id = job_id_in(done.stdout)
    assert f"airflow-gpu logs {job_id} --follow --backend local" in done.stdout  # pasteable in any shell
    for command in ("status", "logs"):
        shown = run(env, work, CLI, command, job_id)
        assert shown.returncode == 0, shown.stderr


def test_a_local_job_not_found_names_where_it_looked_and_how_to_look_elsewhere(home):
    env, work = home
    done = run(env, work, CLI, "status", "abc-20260101T000000-000000", "--backend", "local")
    assert done.returncode == 2
    assert env["AIRFLOW_GPU_LOCAL_JOBS_DIR"] in done.stderr and "AIRFLOW_GPU_LOCAL_JOBS_DIR" in done.stderr
    assert "AIRFLOW_HOME" in done.stderr


def test_the_demo_keeps_its_local_jobs_where_the_terminal_looks(tmp_path):
    """The demo sets its own Airflow home; its local jobs still go to the terminal's folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["HOME"] = str(tmp_path)
    probe = (
        "import os; from pathlib import Path; from airflow_gpu.demo.command import configure_airflow; "
        "configure_airflow(Path('demo-home'), Path('dags'), False); "
        "from airflow_gpu.jobs.local.backend import default_state_dir; print(default_state_dir())"
    )
    shown = run(env, tmp_path, sys.executable, "-c", probe)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == str(tmp_path / "airflow" / "airflow-gpu" / "local-jobs")


# -- 10: an installation without the worker's dependencies ---------------------------------------


def test_a_worker_without_its_dependencies_names_the_extra(tmp_path):
    blocked = ("numpy", "scipy", "pyarrow", "implicit")
    program = (
        "import sys\n"
        "class Missing:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Missing())\n"
        "from airflow_gpu.worker.__main__ import main\n"
        f"sys.exit(main(['als', '--input', {str(tmp_path / 'in')!r}, '--output', {str(tmp_path / 'out')!r}]))\n"
    )
    done = run(None, tmp_path, sys.executable, "-c", program)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2
    assert "worker extra" in done.stderr and "'.[worker]'" in done.stderr
