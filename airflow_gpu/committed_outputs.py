"""What a job committed under its output prefix, as the Airflow wing reads it: the manifest, its summary
for XCom and Asset events, and the DAG's validation of the outputs it names.

The worker writes ``manifest.json`` last under its ``--output`` prefix: a prefix without
one is absent. The operator reads it when a job succeeds (``output_uri=``) and returns
its summary as XCom; the DAG's publish step validates it before it points the "latest"
marker at the run. The names and rules both wings share are in :mod:`airflow_gpu.contract`;
this module imports nothing from the worker, so the two wings stay apart. The objects are
read through :class:`~airflow_gpu.object_store.ObjectStore`.
"""

from __future__ import annotations

from typing import Any, Mapping

from airflow_gpu.contract import MANIFEST, MANIFEST_FORMAT, committed_manifest, join, local_path
from airflow_gpu.object_store import ObjectStore


class ManifestError(ValueError):
    """The outputs are missing, incomplete or fail validation; the message says which check and why."""


def manifest_uri(output_uri: str) -> str:
    return join(output_uri, MANIFEST)


def read_manifest(store: ObjectStore, output_uri: str) -> dict | None:
    """The committed manifest under ``output_uri``, or None when there is none (or it is not complete)."""
    return parse_manifest(store.read(manifest_uri(output_uri)), output_uri)


def parse_manifest(data: bytes | None, output_uri: str) -> dict | None:
    """The committed manifest in ``data`` (the bytes of ``manifest.json``, None when absent), or None."""
    if data is None:
        return None
    try:
        return committed_manifest(data)
    except ValueError as exc:
        raise ManifestError(
            f"{manifest_uri(output_uri)} is not valid JSON ({exc}); rerun the job to rewrite it"
        ) from exc


def job_output_summary(data: bytes | None, output_uri: str, job_id: str) -> dict[str, Any]:
    """What a job that SUCCEEDED committed under ``output_uri``, given the bytes of its ``manifest.json``.

    A success without a complete manifest is no success for its readers: ManifestError says so.
    One rule for the worker's resume (sync) and the trigger's end (async), whoever fetched the bytes.
    """
    try:
        manifest = parse_manifest(data, output_uri)
    except ManifestError as exc:
        raise ManifestError(f"Job {job_id} SUCCEEDED but its output is unreadable: {exc}") from exc
    if manifest is None:
        raise ManifestError(
            f"Job {job_id} SUCCEEDED but committed no manifest at {manifest_uri(output_uri)}; readers "
            f"treat the output as absent. Check that the job's command writes to output_uri={output_uri!r}."
        )
    return summarize(manifest, output_uri)


async def read_job_output_summary(
    aws_conn_id: str | None, region_name: str | None, output_uri: str, job_id: str
) -> dict[str, Any]:
    """:func:`job_output_summary`, fetched without blocking the event loop (for the triggerer).

    S3 goes through aiobotocore with the loop's resolved AWS connection (the one the job
    watcher uses); a local folder is read in a thread.
    """
    uri = manifest_uri(output_uri)
    if uri.startswith("s3://"):
        from airflow_gpu.jobs.aws.objects import read_s3_object

        data = await read_s3_object(aws_conn_id, region_name, uri)
    else:
        import asyncio

        data = await asyncio.to_thread(_read_local, uri)
    return job_output_summary(data, output_uri, job_id)


def _read_local(path: str) -> bytes | None:
    try:
        return local_path(path).read_bytes()
    except FileNotFoundError:
        return None


def asset_extra(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The extra of the output's Asset event: which run committed what, and how good it is."""
    counts = summary.get("summary") or {}
    return {
        "run_id": summary.get("run_id"),
        "output_uri": summary.get("output_uri"),
        "manifest_uri": summary.get("manifest_uri"),
        "finished_at": summary.get("finished_at"),
        "counts": {key: counts.get(key) for key in ("users", "items", "interactions", "recommendations")},
        "precision_at_k": counts.get("precision_at_k"),
    }


def summarize(manifest: Mapping[str, Any], output_uri: str) -> dict[str, Any]:
    """The small part of a manifest worth an XCom: ids, where things are, counts and quality."""
    return {
        "output_uri": output_uri,
        "manifest_uri": manifest_uri(output_uri),
        "run_id": manifest.get("run_id"),
        "root": join(output_uri, manifest.get("root") or ""),
        "finished_at": manifest.get("finished_at"),
        "summary": manifest.get("summary") or {},
        "datasets": {
            name: {key: info.get(key) for key in ("files", "rows", "bytes")}
            for name, info in (manifest.get("datasets") or {}).items()
        },
    }


def validate(
    store: ObjectStore,
    output_uri: str,
    *,
    expected_run_id: str | None = None,
    top_n: int | None = None,
    require_evaluation: bool = False,
    min_lift: float = 1.0,
) -> dict[str, Any]:
    """Check the committed outputs under ``output_uri``; return the manifest, or raise ManifestError.

    Checks: the manifest is complete and is the one the job wrote (``expected_run_id``);
    counts are positive and consistent (dataset rows add up to the summary, at most
    ``top_n`` recommendations per user); every listed file exists with its listed size;
    and, with ``require_evaluation``, ALS precision@k beats popularity by more than ``min_lift``.
    """
    where = manifest_uri(output_uri)
    manifest = read_manifest(store, output_uri)
    if manifest is None:
        raise ManifestError(f"no committed manifest at {where}: the job wrote no complete output there")
    problems: list[str] = []
    if manifest.get("format") != MANIFEST_FORMAT:
        problems.append(f"format is {manifest.get('format')!r}, not {MANIFEST_FORMAT!r}")
    if expected_run_id and manifest.get("run_id") != expected_run_id:
        problems.append(
            f"it now belongs to worker run {manifest.get('run_id')!r}, not {expected_run_id!r} that the train task "
            f"produced: another run wrote to this prefix"
        )
    summary = manifest.get("summary") or {}
    for count in ("users", "items", "interactions", "recommendations"):
        value = summary.get(count)
        if not isinstance(value, int) or value <= 0:
            problems.append(f"summary.{count} is {value!r}, expected a positive count")
    datasets = manifest.get("datasets") or {}
    files = manifest.get("files") or []
    recommendations = datasets.get("recommendations") or {}
    if recommendations.get("rows") != summary.get("recommendations"):
        problems.append(
            f"the recommendations files hold {recommendations.get('rows')!r} rows but the summary says "
            f"{summary.get('recommendations')!r}"
        )
    if top_n and isinstance(summary.get("users"), int) and isinstance(summary.get("recommendations"), int):
        if summary["recommendations"] > summary["users"] * top_n:
            problems.append(
                f"{summary['recommendations']} recommendations for {summary['users']} users exceed top_n={top_n}"
            )
    for name, info in datasets.items():
        listed = [f for f in files if f.get("kind") == name]
        if sum(f.get("rows") or 0 for f in listed) != info.get("rows") or len(listed) != info.get("files"):
            problems.append(
                f"dataset {name}: the file list does not add up to its {info.get('files')} files / {info.get('rows')} rows"
            )
    if not files:
        problems.append("it lists no files")
    for entry in files:
        uri = join(output_uri, entry.get("path", ""))
        size = store.size(uri)
        if size is None:
            problems.append(f"{uri} is listed but missing")
        elif size != entry.get("bytes"):
            problems.append(f"{uri} has {size} bytes, the manifest says {entry.get('bytes')}")
    if require_evaluation:
        quality = summary.get("precision_at_k")
        if not quality:
            problems.append("it has no evaluation (precision_at_k); run the worker with --eval-holdout")
        else:
            als, popularity, k = quality.get("als"), quality.get("popularity"), quality.get("k")
            if not isinstance(als, (int, float)) or not isinstance(popularity, (int, float)):
                problems.append(f"precision_at_k is incomplete: {quality!r}")
            elif not als > popularity * min_lift:
                needed = "beat popularity" if min_lift == 1.0 else f"beat popularity by {min_lift:g}x"
                problems.append(f"ALS precision@{k} {als:.4f} does not {needed} ({popularity:.4f})")
    if problems:
        raise ManifestError(f"{where} failed validation: " + "; ".join(problems))
    return manifest
