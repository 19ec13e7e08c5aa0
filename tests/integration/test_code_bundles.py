"""Code bundles end to end on this machine: packed deterministically (git-tracked files, size limit),
unpacked by ``airflow-gpu-worker run-script --code`` as a subprocess (sibling imports, ``--module``),
hostile bundles refused before anything runs, and requirements installed once per host from a
wheel the test builds (``--no-index --find-links``: no network)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from airflow_gpu.bundles import BundleError, pack, stage_bundle
from airflow_gpu.object_store import ObjectStore
from tests.support.code_bundles import build_wheel, hostile_entry, tar_gz, two_module_project
from tests.support.container_testing import run_worker

pytestmark = pytest.mark.timeout(300)


def greeting(out: Path) -> str:
    [file] = out.rglob("greeting.txt")
    return file.read_text()


# -- packing ------------------------------------------------------------------------------------


def test_the_same_files_pack_to_the_same_bytes_wherever_and_whenever(tmp_path):
    first = pack(two_module_project(tmp_path / "a"))
    copy = two_module_project(tmp_path / "b")
    os.utime(copy / "train.py", (1_000_000, 1_000_000))  # another checkout's times
    (copy / "pkg" / "__pycache__").mkdir()
    (copy / "pkg" / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"\0cache")
    second = pack(copy)
    assert first.sha256 == second.sha256 and first.data == second.data
    assert second.files == ("pkg/__init__.py", "pkg/helper.py", "pkg/train.py", "train.py")
    (copy / "pkg" / "helper.py").write_text("changed = True\n")
    assert pack(copy).sha256 != first.sha256


def test_an_ignore_file_leaves_files_out_outside_git(tmp_path):
    project = two_module_project(tmp_path / "p")
    (project / "data").mkdir()
    (project / "data" / "big.parquet").write_bytes(b"x" * 10)
    (project / "notes.log").write_text("log")
    (project / ".airflowgpuignore").write_text("# data stays out\ndata/\n*.log\n")
    assert pack(project).files == ("pkg/__init__.py", "pkg/helper.py", "pkg/train.py", "train.py")


def test_a_git_checkout_ships_tracked_files_and_names_the_untracked_ones(tmp_path):
    project = two_module_project(tmp_path / "repo")
    (project / "scratch.py").write_text("print('not added')\n")
    (project / ".gitignore").write_text("*.ckpt\n")
    (project / "model.ckpt").write_bytes(b"weights")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "add", "pkg", "train.py", ".gitignore"], check=True)
    bundle = pack(project)
    assert bundle.files == (".gitignore", "pkg/__init__.py", "pkg/helper.py", "pkg/train.py", "train.py")
    assert bundle.left_out == ("scratch.py",)  # an ignored file is left out on purpose, so not reported


def test_a_bundle_over_the_limit_is_refused_naming_its_largest_files(tmp_path):
    project = two_module_project(tmp_path / "p")
    (project / "weights.bin").write_bytes(b"w" * 3000)
    (project / "vocab.txt").write_bytes(b"v" * 2000)
    with pytest.raises(BundleError) as refused:
        pack(project, max_bytes=4000)
    message = str(refused.value)
    assert "over the 4.0 kB limit; largest files: weights.bin (3.0 kB), vocab.txt (2.0 kB)" in message
    assert "\n" not in message


def test_a_link_out_of_the_folder_is_refused_at_packing(tmp_path):
    project = two_module_project(tmp_path / "p")
    (tmp_path / "secret.txt").write_text("secret")
    (project / "config.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(BundleError, match="config.txt in .* is a link to .*outside the folder"):
        pack(project)


def test_a_bundle_already_staged_is_not_written_again(tmp_path):
    bundle = pack(two_module_project(tmp_path / "p"))
    writes: list[str] = []

    class CountingStore(ObjectStore):
        def write(self, uri, data, content_type="application/json"):
            writes.append(uri)
            super().write(uri, data, content_type)

    store = CountingStore(client=None)
    first = stage_bundle(store, str(tmp_path / "staging"), bundle)
    second = stage_bundle(store, str(tmp_path / "staging"), bundle)
    assert first.uploaded and not second.uploaded and first.uri == second.uri
    assert writes == [str(tmp_path / "staging" / "code" / f"{bundle.sha256}.tar.gz")]


# -- running ------------------------------------------------------------------------------------


def staged_bundle(tmp_path: Path, project: Path) -> Path:
    bundle = pack(project)
    path = tmp_path / "staging" / "code" / bundle.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bundle.data)
    return path


def test_a_script_imports_its_sibling_module_from_the_bundle(tmp_path):
    bundle = staged_bundle(tmp_path, two_module_project(tmp_path / "p"))
    sha = bundle.name.split(".")[0]
    done = run_worker(
        [
            "run-script",
            "--code",
            str(bundle),
            "--sha256",
            sha,
            "--script",
            "train.py",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert "hello script from helper" in done.stdout
    assert greeting(tmp_path / "out") == "hello script from helper"


def test_a_module_runs_with_dash_m_and_its_arguments(tmp_path):
    done = run_worker(
        [
            "run-script",
            "--code",
            str(two_module_project(tmp_path / "p")),
            "--module",
            "pkg.train",
            "--output",
            str(tmp_path / "out"),
            "--",
            "--epochs",
            "2",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert "hello module from helper ['--epochs', '2']" in done.stdout
    assert greeting(tmp_path / "out") == "hello module from helper"


RAN = "import pathlib, os; pathlib.Path(os.environ['MARK']).write_text('ran')\n"


def hostile(tmp_path: Path, kind: str) -> Path:
    """A bundle staged under the name of its own digest (so only its contents are wrong), or one that is not."""
    import hashlib

    run = ("run.py", RAN.encode())
    members = {
        "dotdot": [run, ("../escaped.py", b"x")],
        "absolute": [run, ("/tmp/airflow-gpu-absolute.py", b"x")],
        "symlink": [run, hostile_entry("passwd", tarfile.SYMTYPE, "/etc/passwd")],
        "hardlink": [run, hostile_entry("passwd", tarfile.LNKTYPE, "/etc/passwd")],
        "device": [run, hostile_entry("null", tarfile.CHRTYPE)],
        "mismatch": [run],
    }[kind]
    data = tar_gz(members)
    digest = hashlib.sha256(data).hexdigest()
    if kind == "mismatch":
        data = tar_gz([run, ("extra.py", b"added after staging")])
    path = tmp_path / "staging" / "code" / f"{digest}.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "kind, says",
    [
        ("dotdot", "'..' segment"),
        ("absolute", "absolute path"),
        ("symlink", "is a link"),
        ("hardlink", "is a link"),
        ("device", "device file"),
        ("mismatch", "does not match its name"),
    ],
)
def test_a_hostile_bundle_is_refused_before_anything_runs(tmp_path, kind, says):
    bundle = hostile(tmp_path, kind)
    mark = tmp_path / "ran"
    workdir = tmp_path / "work"
    done = run_worker(
        [
            "run-script",
            "--code",
            str(bundle),
            "--script",
            "run.py",
            "--output",
            str(tmp_path / "out"),
            "--workdir",
            str(workdir),
        ],
        env={"MARK": str(mark)},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = [line for line in done.stderr.splitlines() if "error:" in line]
    assert says in line and "Traceback" not in done.stderr
    assert not mark.exists()
    assert not (workdir / "code").exists() or not any((workdir / "code").iterdir())  # nothing unpacked
    assert not (tmp_path / "escaped.py").exists() and not (tmp_path / "out" / "manifest.json").exists()


def test_a_pinned_sha256_refuses_another_bundle(tmp_path):
    bundle = staged_bundle(tmp_path, two_module_project(tmp_path / "p"))
    done = run_worker(
        [
            "run-script",
            "--code",
            str(bundle),
            "--sha256",
            "0" * 64,
            "--script",
            "train.py",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert done.returncode == 2 and "does not match --sha256" in done.stderr
    assert not list(tmp_path.glob("out/**/greeting.txt"))


def test_a_local_folder_with_a_link_out_is_refused_before_anything_runs(tmp_path):
    project = two_module_project(tmp_path / "p")
    (tmp_path / "secret").write_text("s")
    (project / "secret").symlink_to(tmp_path / "secret")
    done = run_worker(["run-script", "--code", str(project), "--script", "train.py", "--output", str(tmp_path / "out")])
    assert done.returncode == 2 and "secret is a link that leads outside it" in done.stderr
    assert not list(tmp_path.glob("out/**/greeting.txt"))


def test_a_script_outside_the_bundle_is_refused(tmp_path):
    done = run_worker(
        [
            "run-script",
            "--code",
            str(two_module_project(tmp_path / "p")),
            "--script",
            "../p/train.py",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert done.returncode == 2 and "--script ../p/train.py" in done.stderr and "'..' segment" in done.stderr


# -- requirements -------------------------------------------------------------------------------


def project_with_requirements(tmp_path: Path, wheels: Path, *lines: str) -> Path:
    project = tmp_path / "p"
    project.mkdir()
    (project / "requirements.txt").write_text("\n".join(["--no-index", f"--find-links {wheels}", *lines]) + "\n")
    (project / "run.py").write_text(
        "import numpy, tinydep\nprint('tinydep', tinydep.VALUE, 'from', tinydep.__file__)\nprint('numpy from', numpy.__file__)\n"
    )
    return project


def test_requirements_are_installed_once_for_two_jobs_and_the_images_packages_are_not(tmp_path):
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "tinydep", "1.0", "VALUE = 42\n")
    bundle = staged_bundle(tmp_path, project_with_requirements(tmp_path, wheels, "tinydep==1.0", "numpy"))
    cache = tmp_path / "cache"
    env = {"AIRFLOW_GPU_REQUIREMENTS_CACHE": str(cache)}
    command = ["run-script", "--code", str(bundle), "--script", "run.py", "--output", str(tmp_path / "out")]

    first = run_worker(command, env=env)
    assert first.returncode == 0, first.stderr
    assert re.search(
        r"requirements: installed tinydep==1\.0 \(1 packages; the image had the rest\) in [\d.]+ s", first.stderr
    )
    [installed] = cache.iterdir()
    assert "tinydep 42 from " + str(installed) in first.stdout
    import numpy

    assert f"numpy from {numpy.__file__}" in first.stdout  # the image's numpy, not a second copy
    assert not list(installed.glob("numpy*"))

    shutil.rmtree(wheels)  # the second job could not install it again even if it tried
    second = run_worker(command, env=env)
    assert second.returncode == 0, second.stderr
    assert "already installed on this host" in second.stderr and "requirements: installed" not in second.stderr
    assert "tinydep 42" in second.stdout
    assert list(cache.iterdir()) == [installed]


def test_a_requirement_that_cannot_be_installed_is_one_line_naming_it(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    project = project_with_requirements(tmp_path, wheels, "no-such-package-xyz==9.9")
    mark = tmp_path / "ran"
    (project / "run.py").write_text(RAN)
    done = run_worker(
        ["run-script", "--code", str(project), "--script", "run.py", "--output", str(tmp_path / "out")],
        env={"AIRFLOW_GPU_REQUIREMENTS_CACHE": str(tmp_path / "cache"), "MARK": str(mark)},
    )
    assert done.returncode == 2
    [line] = [line for line in done.stderr.splitlines() if "error:" in line]
    assert "could not install no-such-package-xyz==9.9" in line and "Traceback" not in done.stderr
    assert not mark.exists() and not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]


def test_the_worker_imports_no_airflow_while_running_a_bundle(tmp_path):
    """The worker wing unpacks bundles without the Airflow wing's packer (the image has no Airflow)."""
    code = "import sys, airflow_gpu.worker.bundle, airflow_gpu.worker.requirements; print(sorted(m for m in sys.modules if m.startswith('airflow')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "airflow_gpu.bundles" not in done.stdout and "'airflow'" not in done.stdout
