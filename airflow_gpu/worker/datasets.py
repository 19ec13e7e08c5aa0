"""What an ``als`` run writes: which datasets, in which parts, and what the manifest says of them.

(The worker's side; the Airflow wing's airflow_gpu/committed_outputs.py reads what this writes.)

``write_datasets`` computes recommendations and similar items batch by batch (computing one
batch while the last one uploads) and writes the id maps and factors; ``commit`` writes
metrics.json and report.html and then the manifest, through ``publish.Publisher``, which
owns the run folder and the commit point. Without a publisher (``--output`` unset) every
batch is still computed and counted, and nothing is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, ParamSpec, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from .config import AlsConfig, AlsRun
from .metrics import json_bytes
from .profile import PROFILE_FILE, current_document, summary_lines
from .publish import Publisher, parquet_bytes
from .recommend import long_table, similar_items, top_n
from .report import render
from .run_cost import run_cost
from .storage import MiB

log = logging.getLogger("airflow_gpu.worker")

P = ParamSpec("P")
R = TypeVar("R")


class OnModel(Protocol):
    """Runs ``fn(*args, **kwargs)`` on the thread that owns the model (the pipeline's ``on_model``)."""

    def __call__(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]: ...


# Rows per part of the id maps: an int32 and an id each, so parts stay tens of MB.
_ID_MAP_PART_ROWS = 4_000_000


async def write_datasets(run: AlsRun, publisher: Publisher | None, on_model: OnModel) -> dict[str, int]:
    """Recommendations, similar items, id maps and factors; returns the rows of the first two."""
    config, interactions, training, stages = run.config, run.interactions, run.training, run.stage
    counts = {"recommendations": 0, "similar_items": 0}
    users, items = interactions.users, interactions.items
    matrix = interactions.matrix
    user_ids, item_ids = interactions.user_ids, interactions.item_ids

    async def emit(dataset: str, build: Callable[..., pa.Table], *args: Any) -> int:
        table = await asyncio.to_thread(build, *args)
        if publisher is None:
            return int(table.num_rows)
        data = await asyncio.to_thread(parquet_bytes, table)
        await publisher.submit(publisher.next_part(dataset), data, kind=dataset, rows=table.num_rows)
        return int(table.num_rows)

    async def batched(
        dataset: str,
        total: int,
        batch: int,
        compute: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        build: Callable[..., pa.Table],
    ) -> int:
        rows, done, last_log = 0, 0, time.monotonic()
        pending: asyncio.Future[int] | None = None
        for start in range(0, total, batch):
            index = np.arange(start, min(start + batch, total), dtype=np.int32)
            result = await on_model(compute, index)
            if pending is not None:
                rows += await pending
            pending = asyncio.ensure_future(emit(dataset, build, index, *result))
            done = index[-1] + 1
            if time.monotonic() - last_log >= config.progress_interval:
                log.info("%s: %s/%s done", dataset, f"{done:,}", f"{total:,}")
                last_log = time.monotonic()
        if pending is not None:
            rows += await pending
        return rows

    with stages("recommend"):
        counts["recommendations"] = await batched(
            "recommendations",
            users,
            config.batch_users,
            lambda idx: top_n(training.model, matrix, idx, config.top_n),
            lambda idx, ids, scores: long_table(user_ids, idx, item_ids, ids, scores, ("user_id", "item_id")),
        )
        log.info("recommend: %s rows for %s users", f"{counts['recommendations']:,}", f"{users:,}")
    if config.similar_n:
        with stages("similar_items"):
            counts["similar_items"] = await batched(
                "similar_items",
                items,
                config.batch_users,
                lambda idx: similar_items(training.model, idx, config.similar_n),
                lambda idx, ids, scores: long_table(
                    item_ids, idx, item_ids, ids, scores, ("item_id", "similar_item_id")
                ),
            )
    if publisher is not None:
        with stages("id_maps"):
            # Dense index -> original id, the row order of the factor matrices.
            for dataset, column, ids in (("user_ids", "user_id", user_ids), ("item_ids", "item_id", item_ids)):
                for start in range(0, len(ids), _ID_MAP_PART_ROWS):
                    await emit(dataset, _id_map_table, column, ids, start, start + _ID_MAP_PART_ROWS)
    if config.write_factors and publisher is not None:
        with stages("factors"):
            for dataset, column, ids, factors in (
                ("user_factors", "user_id", user_ids, await on_model(training.user_factors)),
                ("item_factors", "item_id", item_ids, await on_model(training.item_factors)),
            ):
                per_part = max(1, (64 * MiB) // max(factors.shape[1] * 4, 1))
                for start in range(0, len(factors), per_part):
                    await emit(dataset, _factor_table, column, ids, factors, start, start + per_part)
    return counts


def _id_map_table(name: str, ids: pa.Array, start: int, end: int) -> pa.Table:
    column = ids.slice(start, end - start)
    if pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    return pa.table({"index": pa.array(np.arange(start, start + len(column), dtype=np.int32)), name: column})


def _factor_table(name: str, ids: pa.Array, factors: np.ndarray, start: int, end: int) -> pa.Table:
    """Rows of (original id, vector): row i of the factor matrix belongs to ids[i]."""
    block = np.ascontiguousarray(factors[start:end], dtype=np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), factors.shape[1])
    column = ids.slice(start, end - start)
    if pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    return pa.table({name: column, "factors": vectors})


async def commit(run: AlsRun, publisher: Publisher) -> dict[str, Any]:
    """metrics.json and report.html, then the manifest (the commit point); the parts must be drained first."""
    config, metrics = run.config, run.metrics
    document = current_document()
    # The run's estimated cost, for the headline and the manifest (may ask the instance metadata: off the loop);
    # part of the run's metrics, which the caller returns as metrics.json holds them.
    metrics["cost"] = await asyncio.to_thread(run_cost, document, run_s=metrics.get("total_seconds"))
    if document is not None:  # the GPU profile's summary, for the report's headline (its samples go to profile.json)
        metrics = {**metrics, "profile": {"summary": summary_lines(document), "file": publisher.root + PROFILE_FILE}}
    await publisher.put("metrics.json", json_bytes(metrics), kind="metrics")
    await publisher.put("report.html", render(metrics).encode(), kind="report")
    return await publisher.commit({**_manifest_fields(config, metrics, publisher), "cost": metrics["cost"]})


def _manifest_fields(config: AlsConfig, metrics: dict[str, Any], publisher: Publisher) -> dict[str, Any]:
    datasets: dict[str, dict[str, Any]] = {}
    for entry in publisher.files:
        if entry["kind"] in ("metrics", "report"):
            continue
        summary = datasets.setdefault(
            entry["kind"], {"path": publisher.root + entry["kind"] + "/", "files": 0, "rows": 0, "bytes": 0}
        )
        summary["files"] += 1
        summary["rows"] += entry["rows"] or 0
        summary["bytes"] += entry["bytes"]
    evaluation = metrics.get("evaluation") or {}
    k = evaluation.get("k")
    return {
        "command": "als",
        "created_at": metrics["started_at"],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": config.input,
        "params": config.params(),
        "summary": {
            "users": metrics["counts"]["users"],
            "items": metrics["counts"]["items"],
            "interactions": metrics["counts"]["interactions"],
            "pairs": metrics["counts"]["pairs"],
            "recommendations": metrics["counts"]["recommendations"],
            "device": metrics["training"]["device"],
            "train_seconds": metrics["training"]["seconds"],
            "iterations_run": metrics["training"]["iterations_run"],
            "stop_reason": metrics["training"]["stop_reason"],
            "tuned": _tuned(metrics["tuning"]) if metrics.get("tuning") else None,
            "final_loss": next((x for x in reversed(metrics["training"]["loss"]) if x is not None), None),
            "precision_at_k": {
                "k": k,
                "als": evaluation["als"][f"precision_at_{k}"],
                "popularity": evaluation["popularity"][f"precision_at_{k}"],
            }
            if evaluation
            else None,
        },
        "datasets": datasets,
        "metrics": publisher.root + "metrics.json",
        "report": publisher.root + "report.html",
    }


def _tuned(tuning: dict[str, Any]) -> dict[str, Any]:
    """The search in brief: what it tried, what it chose, what that gains on its validation users, what it cost."""
    return {
        "choice": tuning["choice"]["label"],
        "default": tuning["default"],
        "precision_at_10": tuning["choice_precision_at_10"],  # on the search's validation users
        "default_precision_at_10": tuning["default_precision_at_10"],
        "gain_over_default": tuning["gain_over_default"],
        "searched": tuning["searched"],
        "points": len(tuning["grid"]),
        "stopped_by_budget": tuning["stopped_by_budget"],
        "seconds": tuning["seconds"],
        "share_of_training": tuning.get("share_of_training"),
    }
