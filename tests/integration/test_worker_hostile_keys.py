"""run-script against keys chosen by an attacker: nothing lands outside input/, no link leads out of output/."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from airflow_gpu.worker.__main__ import main
from airflow_gpu.worker.errors import WorkerError
from airflow_gpu.worker.safe_paths import path_inside

SCRIPT = b"""
import os, pathlib
(pathlib.Path(os.environ["OUTPUT_DIR"]) / "ran.txt").write_text("the user's script ran")
"""
EVIL = b"""
import os, pathlib
(pathlib.Path(os.environ["OUTPUT_DIR"]) / "ran.txt").write_text("the attacker's script ran")
"""


def _bucket(moto_aws):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="jobs")
    s3.put_object(Bucket="jobs", Key="code/copy.py", Body=SCRIPT)
    s3.put_object(Bucket="jobs", Key="in/ok.csv", Body=b"a\n1\n")
    return s3


def _run(moto_aws, workdir: Path, *extra: str) -> int:
    return main(
        [
            "run-script",
            "--script",
            "s3://jobs/code/copy.py",
            "--input",
            "s3://jobs/in/",
            "--output",
            "s3://jobs/out/",
            "--endpoint-url",
            moto_aws.endpoint_url,
            "--workdir",
            str(workdir),
            *extra,
        ]
    )


@pytest.mark.parametrize(
    "key, why",
    [
        ("in/../copy.py", "'..' segment"),
        ("in/sub/../../../../x", "'..' segment"),
        ("in//tmp/airflow-gpu-hostile-x", "absolute path"),
        ("in/a//b.csv", "empty path segment"),
        ("in/" + "n" * 300 + ".csv", "longer than 255 bytes"),
    ],
)
def test_a_key_that_would_leave_input_is_refused_before_anything_runs(moto_aws, tmp_path, capsys, key, why):
    s3 = _bucket(moto_aws)
    s3.put_object(Bucket="jobs", Key=key, Body=EVIL)
    workdir = tmp_path / "work"
    code = _run(moto_aws, workdir)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"refusing object key {key[3:]!r}" in err and why in err
    # Nothing ran, nothing was written outside input/ (nor inside it), nothing was published.
    assert s3.list_objects_v2(Bucket="jobs", Prefix="out/").get("KeyCount") == 0
    assert not Path("/tmp/airflow-gpu-hostile-x").exists()
    assert sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*") if p.is_file()) == ["copy.py"]
    assert (workdir / "copy.py").read_bytes() == SCRIPT


def test_path_inside_refuses_nul_and_absolute_and_accepts_clean_keys(tmp_path):
    assert path_inside(tmp_path, "a/b.csv") == tmp_path / "a" / "b.csv"
    for key in ("a\x00b", "/etc/passwd", "", "a/./b", "a/"):
        with pytest.raises(WorkerError, match="refusing object key"):
            path_inside(tmp_path, key)


def test_a_clean_key_under_a_planted_link_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "input"
    folder.mkdir()
    os.symlink(outside, folder / "sub")
    with pytest.raises(WorkerError, match="link that leads outside"):
        path_inside(folder, "sub/x.csv")


LINKER = b"""
import os, pathlib
out = pathlib.Path(os.environ["OUTPUT_DIR"])
(out / "real.txt").write_text("inside")
os.symlink(out / "real.txt", out / "alias.txt")
os.symlink("/etc/passwd", out / "stolen.txt")
"""


def test_a_link_in_output_that_points_outside_is_refused_not_uploaded(moto_aws, tmp_path, capsys):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="jobs")
    s3.put_object(Bucket="jobs", Key="code/link.py", Body=LINKER)
    code = main(
        [
            "run-script",
            "--script",
            "s3://jobs/code/link.py",
            "--output",
            "s3://jobs/out/",
            "--endpoint-url",
            moto_aws.endpoint_url,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "output/stolen.txt is a link to /etc/passwd, outside output/" in err
    assert s3.list_objects_v2(Bucket="jobs", Prefix="out/").get("KeyCount") == 0


def test_a_link_in_output_that_stays_inside_is_published_as_its_file(moto_aws, tmp_path, capsys):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="jobs")
    s3.put_object(
        Bucket="jobs", Key="code/link.py", Body=LINKER.replace(b'os.symlink("/etc/passwd", out / "stolen.txt")', b"")
    )
    code = main(
        [
            "run-script",
            "--script",
            "s3://jobs/code/link.py",
            "--output",
            "s3://jobs/out/",
            "--endpoint-url",
            moto_aws.endpoint_url,
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = json.loads(s3.get_object(Bucket="jobs", Key="out/manifest.json")["Body"].read())
    names = sorted(f["path"].split("/output/", 1)[1] for f in manifest["files"] if f["kind"] == "output")
    assert names == ["alias.txt", "real.txt"]
