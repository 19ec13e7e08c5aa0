"""``airflow-gpu-worker run-function`` on its own: what it refuses (nothing run), what it records."""

from __future__ import annotations

import hashlib
import json
import pickle
import textwrap
from pathlib import Path

from airflow_gpu.contract import INLINE_RESULT_BYTES
from airflow_gpu.shipping import function_payload, read_error, read_result, stage
from tests.support.container_testing import run_worker


class FolderStore:
    """The Store protocol over plain paths (what ObjectStore does for a local staging prefix)."""

    def read(self, uri: str) -> bytes | None:
        path = Path(uri)
        return path.read_bytes() if path.exists() else None

    def write(self, uri: str, data: bytes, content_type: str = "") -> None:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_bytes(data)


SOURCE = textwrap.dedent(
    """
    def job(marker, n, big=False, odd=False):
        import pathlib
        pathlib.Path(marker).write_text("ran")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if odd:
            return {1, 2, 3}
        return {"square": n * n, "blob": "x" * (200_000 if big else 1)}
    """
)


def staged(tmp_path: Path, *args, multiple_outputs=False, **kwargs):
    payload = function_payload(
        SOURCE, "job", [str(tmp_path / "ran.txt"), *args], kwargs, multiple_outputs=multiple_outputs
    )
    return stage(FolderStore(), str(tmp_path / "staging"), "functions", payload, "function.json")


def run(s, results: Path):
    return run_worker(["run-function", "--payload", s.uri, "--sha256", s.sha256, "--result", str(results)])


def test_the_function_runs_and_its_value_comes_back(tmp_path):
    s = staged(tmp_path, 7)
    done = run(s, tmp_path / "results")
    assert done.returncode == 0, done.stderr
    assert read_result(FolderStore(), str(tmp_path / "results"), None) == {"square": 49, "blob": "x"}


def test_multiple_outputs_store_a_large_value_apart_and_return_its_uri(tmp_path):
    s = staged(tmp_path, 3, big=True, multiple_outputs=True)
    assert run(s, tmp_path / "results").returncode == 0
    value = read_result(FolderStore(), str(tmp_path / "results"), None)
    assert value["square"] == 9
    assert isinstance(value["blob"], str) and value["blob"].endswith(".json")
    assert len(json.loads(Path(value["blob"]).read_text())) == 200_000 > INLINE_RESULT_BYTES


def test_a_value_that_is_not_json_is_pickled_apart(tmp_path):
    s = staged(tmp_path, 3, odd=True)
    assert run(s, tmp_path / "results").returncode == 0
    uri = read_result(FolderStore(), str(tmp_path / "results"), None)
    assert uri.endswith(".pickle") and pickle.loads(Path(uri).read_bytes()) == {1, 2, 3}


def test_a_tampered_payload_is_refused_and_nothing_runs(tmp_path):
    s = staged(tmp_path, 2)
    path = Path(s.uri)
    path.write_bytes(path.read_bytes().replace(b'"args": [', b'"args": ["/tmp/elsewhere", '))
    done = run(s, tmp_path / "results")
    assert done.returncode == 2
    assert "payload digest mismatch" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "ran.txt").exists()  # nothing ran
    error = read_error(FolderStore(), str(tmp_path / "results"), None)
    assert error["stage"] == "refused" and s.sha256 in error["error"]


def test_a_python_version_mismatch_is_refused_before_the_function_runs(tmp_path):
    payload = json.loads(function_payload(SOURCE, "job", [str(tmp_path / "ran.txt"), 1], {}, multiple_outputs=False))
    payload["python"] = "2.7"
    data = json.dumps(payload).encode()
    s = stage(FolderStore(), str(tmp_path / "staging"), "functions", data, "function.json")
    done = run(s, tmp_path / "results")
    assert done.returncode == 2
    assert "Python version mismatch: the DAG runs Python 2.7" in done.stderr
    assert not (tmp_path / "ran.txt").exists()


def test_a_function_that_raises_records_its_traceback(tmp_path):
    s = staged(tmp_path, -1)
    done = run(s, tmp_path / "results")
    assert done.returncode == 1
    error = read_error(FolderStore(), str(tmp_path / "results"), None)
    assert error["stage"] == "run" and error["error"] == "ValueError: n must be >= 0, got -1"
    # The remote traceback quotes the function's own line.
    assert 'raise ValueError(f"n must be >= 0, got {n}")' in error["traceback"]
    assert "ValueError: n must be >= 0" in done.stderr  # the live log shows it too


def test_the_digest_is_of_the_exact_bytes_staged(tmp_path):
    s = staged(tmp_path, 1)
    assert hashlib.sha256(Path(s.uri).read_bytes()).hexdigest() == s.sha256
    assert f"/functions/{s.sha256}/function.json" in s.uri
