"""The ``als`` job from input URI to committed manifest: its settings, and the stages in order, timed.

ingest -> matrix -> split -> tune -> weighting -> train -> evaluate -> outputs -> publish.
What each stage does lives in its module; how the outputs are laid out in ``outputs``, and
the metrics document in ``metrics``.

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
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, ParamSpec, TypeVar

from ..contract import MANIFEST, local_path
from . import metrics as run_metrics
from . import outputs
from .errors import WorkerError
from .evaluate import evaluate, holdout_split
from .ingest import Columns, ingest
from .matrix import DEFAULT_ALPHA, DEFAULT_WEIGHTING, Interactions, MatrixBuilder, confidence
from .publish import DEFAULT_KEEP_RUNS, Publisher, new_run_id, read_manifest
from .report_data import distributions, sample_users
from .run_info import gpu_info, job_context
from .storage import open_store
from .train import TrainParams, TrainResult, fit, largest_singular_value
from .tune import DEFAULT_BUDGET, TuneResult, tune

log = logging.getLogger("airflow_gpu.worker")

P = ParamSpec("P")
R = TypeVar("R")


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
    tune: bool = False  # search weighting, alpha and regularization share first (tune.py); the CLI's default is on
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
            raise WorkerError(
                f"--output {self.output} is inside --input {self.input}; write the outputs somewhere else"
            )

    def params(self) -> dict[str, Any]:
        # The iteration callback is code, not a parameter: it stays out of metrics and manifest.
        params = asdict(replace(self, train=replace(self.train, on_iteration=None)))
        del params["train"]["on_iteration"]
        params["alpha"] = self.alpha if self.alpha is not None else DEFAULT_ALPHA.get(self.weighting)
        return params


def _inside(child: str, parent: str) -> bool:
    def norm(uri: str) -> str:
        if not uri.startswith("s3://"):
            uri = str(local_path(uri).absolute())
        return uri.rstrip("/") + "/"

    return norm(child).startswith(norm(parent))


@dataclass
class AlsRun:
    metrics: dict[str, Any]  # the document metrics.json holds, the same dict (metrics.py)
    manifest: dict[str, Any] | None
    interactions: Interactions
    training: TrainResult
    tuning: TuneResult | None = None


def run_als(config: AlsConfig) -> AlsRun:
    return asyncio.run(run_als_async(config))


def _cancel_on_sigterm(loop: asyncio.AbstractEventLoop) -> None:
    """Batch stops a job with SIGTERM: cancel the run, so the publisher removes what it uploaded."""
    task = asyncio.current_task()
    assert task is not None  # called from the run's own task

    def stop() -> None:
        log.warning("als: SIGTERM received; stopping and removing this run's uploads")
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, stop)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        pass


async def run_als_async(config: AlsConfig) -> AlsRun:
    config.check()
    started_at = datetime.now(timezone.utc)
    started = time.monotonic()
    stages = run_metrics.Stages()
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
            # Fails fast on a missing bucket, a denied prefix or a folder that cannot be written,
            # before any input is read or training time spent.
            from .writable import prove_writable

            await prove_writable(out)
            previous = await read_manifest(out)
            if previous:
                log.info(
                    "als: %s holds run %s; it stays current until this run commits",
                    config.output,
                    previous.get("run_id"),
                )
        compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        # On failure or cancellation, do not wait here for a model call still running.
        stack.callback(compute.shutdown, wait=False, cancel_futures=True)

        async def on_model(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
            return await loop.run_in_executor(compute, lambda: fn(*args, **kwargs))

        # The builder encodes each object's ids as ingest decodes the next ones (the low peak);
        # the matrix stage then builds the CSR from what it holds.
        builder = MatrixBuilder(config.columns.user, config.columns.item)
        with stages("ingest"):
            ingest_stats = await ingest(
                config.input,
                config.columns,
                builder,
                fmt=config.format,
                endpoint_url=config.endpoint_url,
                concurrency=config.concurrency,
                drop_invalid=config.drop_invalid,
                threads=config.threads,
                progress_interval=config.progress_interval,
            )
        with stages("matrix"):
            interactions = await asyncio.to_thread(builder.build)
        del builder
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
        # The native solver weighs the raw counts on the GPU inside train (no host weighting stage;
        # metrics' training.setup_seconds has its time); the search's regularization needs them here.
        on_gpu: dict[str, Any] = (
            {"weighting": weighting, "alpha": alpha} if config.train.solver == "native" and tuning is None else {}
        )
        weighted = train_matrix
        if not on_gpu:
            with stages("weighting"):
                weighted = await on_model(confidence, train_matrix, weighting, alpha)
                if tuning is not None:
                    sigma = await on_model(largest_singular_value, weighted, seed=config.train.seed)
                    train_params = replace(config.train, regularization=tuning.choice.share * sigma)
        with stages("train"):
            training = await on_model(fit, weighted, train_params, **on_gpu)
        del weighted
        evaluation = None
        if test is not None:
            with stages("evaluate"):
                evaluation = await on_model(
                    evaluate,
                    training.model,
                    train_matrix,
                    test,
                    k=config.eval_k,
                    max_users=config.eval_users,
                    seed=config.train.seed,
                    holdout=config.eval_holdout,
                )
        del test, train_matrix
        extras = {
            "samples": await on_model(
                sample_users,
                training.model,
                matrix,
                interactions.user_ids,
                interactions.item_ids,
                n=config.top_n,
                seed=config.train.seed,
            ),
            "distributions": distributions(matrix),
            "job": job_context(started_at),
            "gpu": gpu_info() if training.device == "gpu" else None,
        }

        def assemble(counts: dict[str, int]) -> dict[str, Any]:
            # Called once, when every stage it reports has ended: see metrics.py on publish's own time.
            return run_metrics.document(
                config,
                run_id=run_id,
                started_at=started_at,
                ingest=ingest_stats,
                interactions=interactions,
                training=training,
                weighting=weighting,
                alpha=alpha,
                evaluation=evaluation,
                tuning=tuning,
                counts=counts,
                extras=extras,
                stages=stages.seconds,
                total_seconds=time.monotonic() - started,
            )

        publisher = Publisher(out, run_id) if out is not None else None
        manifest = None
        try:
            counts = await outputs.write_datasets(config, interactions, training, publisher, stages, on_model)
            if publisher is None:
                metrics = assemble(counts)
            else:
                with stages("publish"):
                    await publisher.drain()
                    metrics = assemble(counts)
                    manifest = await outputs.commit(config, metrics, publisher)
        except BaseException:
            if publisher is not None:
                await publisher.abort()
            raise
        if publisher is not None:
            await publisher.prune(config.keep_runs)
    log.info("als: done in %.1fs%s", time.monotonic() - started, f"; manifest {out.uri_of(MANIFEST)}" if out else "")
    return AlsRun(metrics, manifest, interactions, training, tuning)
