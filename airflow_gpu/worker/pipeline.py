"""The ``als`` job from input URI to committed manifest, stage by stage, with timings.

``run_als(AlsConfig(...))`` is the whole worker pipeline as a function: the CLI calls it,
and so can benchmarks (with ``output=None`` nothing is written, but every stage,
recommendations for every user included, still runs and is timed).

Every call into the model runs on one dedicated thread: implicit's GPU objects are then
always used from the thread that made them, and the event loop stays free to upload
finished parts while the next batch is computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from .errors import WorkerError
from .evaluate import evaluate, holdout_split
from .ingest import Columns, IngestStats, ingest
from .matrix import DEFAULT_ALPHA, DEFAULT_WEIGHTING, Interactions, confidence
from ..contract import MANIFEST
from .publish import DEFAULT_KEEP_RUNS, Publisher, new_run_id, parquet_bytes, read_manifest
from .recommend import long_table, similar_items, top_n
from .report import render
from .report_data import distributions, sample_users
from .run_info import gpu_info, job_context
from .storage import MiB, open_store
from .train import AUTO_REGULARIZATION_SHARE, TrainParams, TrainResult, fit, largest_singular_value
from .tune import DEFAULT_BUDGET, TuneResult, tune

log = logging.getLogger("airflow_gpu.worker")


@dataclass
class AlsConfig:
    input: str
    output: str | None = None
    format: str = "auto"
    columns: Columns = field(default_factory=Columns)
    endpoint_url: str | None = None
    concurrency: int = 16
    drop_invalid: bool = False
    weighting: str = DEFAULT_WEIGHTING
    alpha: float | None = None  # None: the weighting's default (matrix.DEFAULT_ALPHA)
    train: TrainParams = field(default_factory=TrainParams)
    top_n: int = 10
    similar_n: int = 10
    write_factors: bool = True
    eval_holdout: float = 0.0
    eval_k: int = 10
    eval_users: int = 50_000
    batch_users: int = 100_000
    threads: int | None = None
    progress_interval: float = 5.0
    keep_runs: int = DEFAULT_KEEP_RUNS  # committed runs kept under --output; 0 keeps all
    run_id: str | None = None
    tune: bool = False  # search weighting, alpha and regularization share first (tune.py)
    tune_budget: float = DEFAULT_BUDGET

    def check(self) -> None:
        self.train.check()
        for flag, value, low in (
            ("--top-n", self.top_n, 1),
            ("--similar-n", self.similar_n, 0),
            ("--concurrency", self.concurrency, 1),
            ("--eval-k", self.eval_k, 1),
            ("--eval-users", self.eval_users, 1),
            ("--batch-users", self.batch_users, 1),
        ):
            if value < low:
                raise WorkerError(f"{flag} must be at least {low}, got {value}")
        if not 0 < self.tune_budget <= 1:
            raise WorkerError(f"--tune-budget must be above 0 and at most 1, got {self.tune_budget}")
        if self.eval_holdout and not 0 < self.eval_holdout < 1:
            raise WorkerError(f"--eval-holdout must be between 0 and 1 (exclusive), got {self.eval_holdout}")
        if self.output and _inside(self.output, self.input):
            # A rerun would read the previous run's outputs back in as interactions.
            raise WorkerError(f"--output {self.output} is inside --input {self.input}; write the outputs somewhere else")

    def params(self) -> dict:
        # The iteration callback is code, not a parameter: it stays out of metrics and manifest.
        params = asdict(replace(self, train=replace(self.train, on_iteration=None)))
        del params["train"]["on_iteration"]
        params["alpha"] = self.alpha if self.alpha is not None else DEFAULT_ALPHA.get(self.weighting)
        return params


def _inside(child: str, parent: str) -> bool:
    def norm(uri: str) -> str:
        if not uri.startswith("s3://"):
            from pathlib import Path

            uri = str(Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser().absolute())
        return uri.rstrip("/") + "/"

    return norm(child).startswith(norm(parent))


@dataclass
class AlsRun:
    metrics: dict
    manifest: dict | None
    interactions: Interactions
    training: TrainResult
    tuning: TuneResult | None = None


def run_als(config: AlsConfig) -> AlsRun:
    return asyncio.run(run_als_async(config))


def _cancel_on_sigterm(loop: asyncio.AbstractEventLoop) -> None:
    """Batch stops a job with SIGTERM: cancel the run, so the publisher removes what it uploaded."""
    task = asyncio.current_task()

    def stop() -> None:
        log.warning("als: SIGTERM received; stopping and removing this run's uploads")
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, stop)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        pass


class _Stages:
    """Wall time per stage, in order, logged as each one ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        started = time.monotonic()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - started, 4)
        log.info("%s: %.2fs", name, self.seconds[name])


async def run_als_async(config: AlsConfig) -> AlsRun:
    config.check()
    started_at = datetime.now(timezone.utc)
    started = time.monotonic()
    stages = _Stages()
    loop = asyncio.get_running_loop()
    run_id = config.run_id or new_run_id()
    _cancel_on_sigterm(loop)
    log.info("als: run %s, input %s, output %s", run_id, config.input, config.output or "(none: nothing is written)")

    async with contextlib.AsyncExitStack() as stack:
        out = None
        if config.output:
            out = await stack.enter_async_context(
                open_store(config.output, endpoint_url=config.endpoint_url, concurrency=config.concurrency)
            )
            # Fails fast on a missing bucket or a denied prefix, before any training time is spent.
            previous = await read_manifest(out)
            if previous:
                log.info("als: %s holds run %s; it stays current until this run commits", config.output, previous.get("run_id"))
        compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        # On failure or cancellation, do not wait here for a model call still running.
        stack.callback(compute.shutdown, wait=False, cancel_futures=True)

        async def on_model(fn, *args, **kwargs):
            return await loop.run_in_executor(compute, lambda: fn(*args, **kwargs))

        interactions, ingest_stats = await ingest(
            config.input,
            config.columns,
            fmt=config.format,
            endpoint_url=config.endpoint_url,
            concurrency=config.concurrency,
            drop_invalid=config.drop_invalid,
            threads=config.threads,
            progress_interval=config.progress_interval,
        )
        stages.seconds["ingest"] = round(ingest_stats.seconds, 4)
        stages.seconds["matrix"] = round(ingest_stats.build_seconds, 4)
        matrix = interactions.matrix

        test = None
        train_matrix = matrix
        if config.eval_holdout:
            with stages("split"):
                train_matrix, test = await on_model(holdout_split, matrix, config.eval_holdout, config.train.seed)
        tuning, weighting, alpha, train_params = None, config.weighting, config.alpha, config.train
        if config.tune:
            with stages("tune"):
                # On the training matrix only: the evaluation holdout was split off above.
                tuning = await on_model(tune, train_matrix, config.train, config.tune_budget)
            weighting, alpha = tuning.choice.weighting, tuning.choice.alpha
        with stages("weighting"):
            weighted = await on_model(confidence, train_matrix, weighting, alpha)
            if tuning is not None:
                sigma = await on_model(largest_singular_value, weighted, seed=config.train.seed)
                train_params = replace(config.train, regularization=tuning.choice.share * sigma)
        with stages("train"):
            training = await on_model(fit, weighted, train_params)
        del weighted
        evaluation = None
        if test is not None:
            with stages("evaluate"):
                evaluation = await on_model(
                    evaluate, training.model, train_matrix, test, k=config.eval_k, max_users=config.eval_users,
                    seed=config.train.seed, holdout=config.eval_holdout,
                )
        del test, train_matrix
        samples = await on_model(sample_users, training.model, matrix, interactions.user_ids, interactions.item_ids,
                                 n=config.top_n, seed=config.train.seed)

        publisher = Publisher(out, run_id) if out is not None else None
        try:
            counts = await _write_outputs(config, interactions, training, publisher, stages, on_model)
            metrics = _metrics(config, run_id, started_at, ingest_stats, interactions, training, evaluation, stages, counts)
            metrics["training"]["weighting"], metrics["training"]["alpha"] = weighting, _alpha(weighting, alpha)
            metrics["training"]["regularization_share"] = (
                tuning.choice.share if tuning is not None
                else AUTO_REGULARIZATION_SHARE if config.train.regularization is None else None
            )
            metrics["tuning"] = _tuning_metrics(tuning, stages)
            metrics["samples"] = samples
            metrics["distributions"] = distributions(matrix)
            metrics["job"] = job_context(started_at)
            metrics["gpu"] = gpu_info() if training.device == "gpu" else None
            manifest = None
            if publisher is not None:
                with stages("publish"):
                    await publisher.drain()
                    metrics["stages"] = dict(stages.seconds)
                    metrics["total_seconds"] = round(time.monotonic() - started, 4)
                    await publisher.put("metrics.json", _json_bytes(metrics), kind="metrics")
                    await publisher.put("report.html", render(metrics).encode(), kind="report")
                    manifest = await publisher.commit(_manifest_fields(config, metrics, publisher))
        except BaseException:
            if publisher is not None:
                await publisher.abort()
            raise
        if publisher is not None:
            await publisher.prune(config.keep_runs)
    metrics["stages"] = dict(stages.seconds)
    metrics["total_seconds"] = round(time.monotonic() - started, 4)
    log.info("als: done in %.1fs%s", metrics["total_seconds"], f"; manifest {out.uri_of(MANIFEST)}" if out else "")
    return AlsRun(metrics, manifest, interactions, training, tuning)


def _alpha(weighting: str, alpha: float | None) -> float | None:
    return alpha if alpha is not None else DEFAULT_ALPHA.get(weighting)


def _tuning_metrics(tuning: TuneResult | None, stages: _Stages) -> dict | None:
    """The search's grid, scores and choice, with its cost measured against the final training."""
    if tuning is None:
        return None
    document = tuning.as_dict()
    train_seconds = stages.seconds.get("train")
    document["share_of_training"] = round(tuning.seconds / train_seconds, 4) if train_seconds else None
    return document


async def _write_outputs(config: AlsConfig, interactions: Interactions, training: TrainResult, publisher, stages, on_model) -> dict:
    """Recommendations, similar items and factors, batch by batch: computing one batch while the last uploads."""
    counts = {"recommendations": 0, "similar_items": 0}
    users, items = interactions.users, interactions.items
    matrix = interactions.matrix
    user_ids, item_ids = interactions.user_ids, interactions.item_ids

    async def emit(dataset: str, build, *args) -> int:
        table = await asyncio.to_thread(build, *args)
        if publisher is None:
            return table.num_rows
        data = await asyncio.to_thread(parquet_bytes, table)
        await publisher.submit(publisher.next_part(dataset), data, kind=dataset, rows=table.num_rows)
        return table.num_rows

    async def batched(dataset: str, total: int, batch: int, compute, build) -> int:
        rows, pending, done, last_log = 0, None, 0, time.monotonic()
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
            "recommendations", users, config.batch_users,
            lambda idx: top_n(training.model, matrix, idx, config.top_n),
            lambda idx, ids, scores: long_table(user_ids, idx, item_ids, ids, scores, ("user_id", "item_id")),
        )
        log.info("recommend: %s rows for %s users", f"{counts['recommendations']:,}", f"{users:,}")
    if config.similar_n:
        with stages("similar_items"):
            counts["similar_items"] = await batched(
                "similar_items", items, config.batch_users,
                lambda idx: similar_items(training.model, idx, config.similar_n),
                lambda idx, ids, scores: long_table(item_ids, idx, item_ids, ids, scores, ("item_id", "similar_item_id")),
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


_ID_MAP_PART_ROWS = 4_000_000


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


def _versions() -> dict:
    import aiobotocore
    import botocore
    import implicit
    import scipy

    from .. import __version__

    return {
        "airflow_gpu": __version__,
        "python": platform.python_version(),
        "implicit": implicit.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pyarrow": pa.__version__,
        "aiobotocore": aiobotocore.__version__,
        "botocore": botocore.__version__,
        "platform": f"{sys.platform}-{platform.machine()}",
    }


def _metrics(config, run_id, started_at, ingest_stats: IngestStats, interactions: Interactions, training: TrainResult,
             evaluation, stages: _Stages, counts: dict) -> dict:
    matrix = interactions.matrix
    train_seconds = stages.seconds.get("train", 0.0)
    recommend_seconds = stages.seconds.get("recommend", 0.0)
    return {
        "run_id": run_id,
        "started_at": started_at.isoformat(timespec="seconds"),
        "input": config.input,
        "output": config.output,
        "counts": {
            "objects": ingest_stats.objects,
            "bytes_read": ingest_stats.bytes,
            "rows_read": ingest_stats.rows_read,
            "null_id_rows_dropped": ingest_stats.null_id_rows,
            "invalid_weight_rows_dropped": ingest_stats.invalid_weight_rows,
            "zero_weight_rows_dropped": ingest_stats.zero_weight_rows,
            # rows kept (after the drops above), duplicates included; "pairs" sums duplicates into one.
            "interactions": interactions.rows,
            "duplicates_summed": interactions.duplicates,
            "pairs": int(matrix.nnz),
            "users": interactions.users,
            "items": interactions.items,
            "density": round(matrix.nnz / max(interactions.users * interactions.items, 1), 8),
            "recommendations": counts.get("recommendations", 0),
            "similar_items": counts.get("similar_items", 0),
        },
        "stages": dict(stages.seconds),
        "throughput": {
            "ingest_mb_per_s": ingest_stats.as_dict()["mb_per_s"],
            "ingest_rows_per_s": ingest_stats.as_dict()["rows_per_s"],
            "train_pairs_per_s_per_iteration": round(matrix.nnz * training.iterations_run / train_seconds) if train_seconds else None,
            "recommend_users_per_s": round(interactions.users / recommend_seconds) if recommend_seconds else None,
        },
        "training": {
            "device": training.device,
            "factors": config.train.factors,
            "iterations": config.train.iterations,  # the maximum
            "iterations_run": training.iterations_run,
            "stop_reason": training.stop_reason,
            "early_stop": config.train.early_stop,
            "patience": config.train.patience,
            "regularization": training.regularization,  # as trained: auto resolved to a number
            "regularization_auto": config.train.regularization is None,
            "weighting": config.weighting,
            "alpha": config.params()["alpha"],
            "seconds": round(training.seconds, 4),
            "loss": training.loss,
            "iteration_seconds": [round(s, 4) for s in training.iteration_seconds],
        },
        "evaluation": evaluation,
        "ingest": ingest_stats.as_dict(),
        "params": config.params(),
        "versions": _versions(),
    }


def _manifest_fields(config: AlsConfig, metrics: dict, publisher: Publisher) -> dict:
    datasets: dict[str, dict] = {}
    for entry in publisher.files:
        if entry["kind"] in ("metrics", "report"):
            continue
        summary = datasets.setdefault(entry["kind"], {"path": publisher.root + entry["kind"] + "/", "files": 0, "rows": 0, "bytes": 0})
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
            "tuned": {
                "choice": metrics["tuning"]["choice"]["label"],
                "precision_at_10": max(row["precision_at_10"] for row in metrics["tuning"]["grid"]) if metrics["tuning"]["grid"] else None,
                "points": len(metrics["tuning"]["grid"]),
                "seconds": metrics["tuning"]["seconds"],
            }
            if metrics.get("tuning")
            else None,
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


def _json_bytes(document: dict) -> bytes:
    import json

    return json.dumps(document, indent=2, default=_json_default).encode()


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Columns):
        return asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
