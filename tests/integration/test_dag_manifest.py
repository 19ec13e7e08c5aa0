"""The output contract from the Airflow side: the operator's manifest summary, publish's validation, object access.

The outputs here are the real worker's, produced once per module on a small dataset.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException

from airflow_gpu.committed_outputs import ManifestError, read_manifest, summarize, validate
from airflow_gpu.contract import is_marker
from airflow_gpu.demo.synthetic import spark_export, synthetic_interactions
from airflow_gpu.object_store import ObjectStore
from airflow_gpu.operators import GpuBatchOperator
from tests.support.gpu_batch_testing import make_context


@pytest.fixture(scope="module")
def worker_output(tmp_path_factory) -> Path:
    from airflow_gpu.worker.config import AlsConfig
    from airflow_gpu.worker.ingest import Columns
    from airflow_gpu.worker.pipeline import run_als
    from airflow_gpu.worker.train import TrainParams

    root = tmp_path_factory.mktemp("outputs")
    inputs = root / "in"
    inputs.mkdir()
    for name, data in spark_export(synthetic_interactions(30_000, n_users=1_000, n_items=200, seed=3), objects=3):
        (inputs / name).write_bytes(data)
    run_als(
        AlsConfig(
            input=str(inputs),
            output=str(root / "out"),
            columns=Columns(weight="plays"),
            train=TrainParams(factors=16, iterations=5, device="cpu"),
            eval_holdout=0.2,
            progress_interval=60,
        )
    )
    return root / "out"


@pytest.fixture
def output(worker_output, tmp_path) -> Path:
    """A private copy, so a test may damage it."""
    return Path(shutil.copytree(worker_output, tmp_path / "out"))


def manifest_of(output: Path) -> dict:
    return json.loads((output / "manifest.json").read_text())


def test_a_good_output_validates(output):
    manifest = manifest_of(output)
    checked = validate(
        ObjectStore(), str(output), expected_run_id=manifest["run_id"], top_n=10, require_evaluation=True
    )
    assert checked["run_id"] == manifest["run_id"]


def test_summary_for_xcom_is_small_and_says_where_things_are(output):
    manifest = manifest_of(output)
    summary = summarize(manifest, str(output) + "/")
    assert summary["run_id"] == manifest["run_id"]
    assert summary["manifest_uri"] == f"{output}/manifest.json"
    assert summary["summary"]["users"] > 0 and summary["datasets"]["recommendations"]["rows"] > 0
    assert len(json.dumps(summary)) < 4000  # XComs live in the metadata database


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda out, m: (out / m["files"][0]["path"]).unlink(), "is listed but missing"),
        (lambda out, m: (out / m["files"][0]["path"]).write_bytes(b"x"), "bytes, the manifest says"),
        (lambda out, m: (out / "manifest.json").unlink(), "no committed manifest"),
        (lambda out, m: _edit(out, complete=False), "no committed manifest"),
        (lambda out, m: _edit(out, summary={**m["summary"], "recommendations": 0}), "summary.recommendations"),
        (
            lambda out, m: _edit(out, summary={**m["summary"], "recommendations": m["summary"]["recommendations"] + 1}),
            "the recommendations files hold",
        ),
    ],
)
def test_damaged_outputs_fail_validation(output, damage, message):
    damage(output, manifest_of(output))
    with pytest.raises(ManifestError, match=message):
        validate(ObjectStore(), str(output), top_n=10)


def _edit(output: Path, **fields) -> None:
    manifest = manifest_of(output)
    manifest.update(fields)
    (output / "manifest.json").write_text(json.dumps(manifest))


def test_another_runs_manifest_is_refused(output):
    with pytest.raises(ManifestError, match="another run wrote to this prefix"):
        validate(ObjectStore(), str(output), expected_run_id="20260101T000000Z-someone")


def test_the_quality_gate(output):
    quality = manifest_of(output)["summary"]["precision_at_k"]
    assert quality["als"] > quality["popularity"]  # the worker's model does beat popularity on this data
    validate(ObjectStore(), str(output), require_evaluation=True)
    with pytest.raises(ManifestError, match=r"does not beat popularity by 1000x"):
        validate(ObjectStore(), str(output), require_evaluation=True, min_lift=1000)
    _edit(output, summary={**manifest_of(output)["summary"], "precision_at_k": None})
    with pytest.raises(ManifestError, match="no evaluation"):
        validate(ObjectStore(), str(output), require_evaluation=True)


def success_event(job_id: str = "job-1") -> dict:
    return {"job_id": job_id, "job_name": "train", "status": "SUCCEEDED", "attempts": 1, "exit_code": 0}


def test_operator_returns_the_manifest_summary_with_its_result(output):
    op = GpuBatchOperator(task_id="train", job_queue="q", job_definition="d", output_uri=str(output), backend="local")
    result = op.execute_complete(make_context(), success_event())
    assert result["job_id"] == "job-1"
    assert result["manifest"]["run_id"] == manifest_of(output)["run_id"]
    assert result["manifest"]["summary"]["precision_at_k"]["k"] == 10


def test_a_file_uri_output_is_read_where_the_worker_wrote_it(output):
    """The worker writes ``--output file:///x`` to the folder /x (contract.local_path); the operator and
    the DAG's checks read the same URI from that folder, not from a path named "file:"."""
    uri = f"file://{output}"
    op = GpuBatchOperator(task_id="train", job_queue="q", job_definition="d", output_uri=uri, backend="local")
    result = op.execute_complete(make_context(), success_event())
    assert result["manifest"]["run_id"] == manifest_of(output)["run_id"]
    checked = validate(ObjectStore(), uri, top_n=10, require_evaluation=True)
    assert checked["run_id"] == manifest_of(output)["run_id"]


# The operator bills every ended job (DescribeJobs): aws_conn points that call at the moto server.
def test_operator_fails_a_success_without_a_manifest(tmp_path, aws_conn):
    op = GpuBatchOperator(task_id="train", job_queue="q", job_definition="d", output_uri=str(tmp_path / "nothing"))
    with pytest.raises(AirflowException, match="committed no manifest"):
        op.execute_complete(make_context(), success_event())


def test_operator_without_output_uri_reads_nothing(monkeypatch, aws_conn):
    touched: list[str] = []
    for method in ("__init__", "list", "read", "size", "write"):
        real = getattr(ObjectStore, method)

        def spy(self, *args, _name=method, _real=real, **kwargs):
            touched.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(ObjectStore, method, spy)
    op = GpuBatchOperator(task_id="train", job_queue="q", job_definition="d")
    assert "manifest" not in op.execute_complete(make_context(), success_event())
    assert touched == []
    # The spy does see a read where there is an output to read.
    op = GpuBatchOperator(task_id="train", job_queue="q", job_definition="d", output_uri="/nonexistent/airflow-gpu/out")
    with pytest.raises(AirflowException, match="committed no manifest"):
        op.execute_complete(make_context(), success_event())
    assert touched == ["__init__", "read"]


def test_templated_backend_and_poll_interval_are_checked_after_rendering():
    from airflow_gpu.jobs.spec import JobSpecError

    op = GpuBatchOperator(
        task_id="t", job_queue="q", job_definition="d", backend="{{ params.b }}", poll_interval="{{ params.p }}"
    )
    op.render_template_fields({"params": {"b": "local", "p": 2}})
    op._check_fields(skip_templates=False)
    assert (op.backend, op.poll_interval) == ("local", 2.0)
    op = GpuBatchOperator(task_id="t", job_queue="q", job_definition="d", backend="{{ params.b }}")
    op.render_template_fields({"params": {"b": "slurm"}})
    with pytest.raises(JobSpecError, match="backend"):
        op._check_fields(skip_templates=False)


def test_object_store_on_s3(moto_aws, aws_conn, output):
    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="out")
    for path in sorted(p for p in output.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "out", f"run/{path.relative_to(output).as_posix()}")
    store = ObjectStore("aws_default")
    listed = list(store.list("s3://out/run"))
    assert {o.name for o in listed} == {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}
    assert store.read("s3://out/run/absent.json") is None and store.size("s3://out/run/absent.json") is None
    manifest = read_manifest(store, "s3://out/run/")
    assert manifest["run_id"] == manifest_of(output)["run_id"]
    validate(store, "s3://out/run/", top_n=10, require_evaluation=True)
    store.write("s3://out/latest.json", b'{"run_prefix": "s3://out/run/"}')
    assert json.loads(store.read("s3://out/latest.json"))["run_prefix"] == "s3://out/run/"


def test_markers_are_not_data():
    assert is_marker("_SUCCESS") and is_marker("part/.part-0.crc") and is_marker("folder/")
    assert not is_marker("part-00000-1b2c-c000.snappy.orc")
