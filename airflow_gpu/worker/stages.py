"""The ``als`` run's stages, each a function over the run's record (config.AlsRun), in the order pipeline.py runs them.

A stage reads what earlier stages left on the record, timed under its name (``AlsRun.stage``),
and leaves its own product there. What each one computes lives in its module (ingest, matrix,
evaluate, tune, train, recommend, datasets, metrics, publish); here is only the wiring: which
inputs, which settings, and when a large intermediate can be dropped.

Every call into the model runs on one dedicated thread (``model_thread``): implicit's GPU
objects are then always used from the thread that made them, and the event loop stays free to
upload finished parts while the next batch is computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, AsyncIterator, Callable, Iterator, ParamSpec, TypeVar

import scipy.sparse

from . import metrics
from .config import AlsRun
from .datasets import OnModel, commit, write_datasets
from .evaluate import evaluate, holdout_split
from .ingest import ingest
from .matrix import MatrixBuilder, confidence
from .publish import Publisher, read_manifest
from .regularization import largest_singular_value
from .report_data import distributions, sample_users
from .run_info import gpu_info, job_context
from .storage import Store, open_store
from .train import fit
from .tune import tune

log = logging.getLogger("airflow_gpu.worker")

P = ParamSpec("P")
R = TypeVar("R")


@contextlib.asynccontextmanager
async def output_store(run: AlsRun) -> AsyncIterator[Store | None]:
    """The --output store, proven writable before any input is read (None: nothing is written)."""
    config = run.config
    if not config.output:
        yield None
        return
    async with open_store(config.output, endpoint_url=config.endpoint_url, concurrency=config.concurrency) as out:
        # Fails fast on a missing bucket, a denied prefix or a folder that cannot be written,
        # before any input is read or training time spent.
        from .writable import prove_writable

        await prove_writable(out)
        previous = await read_manifest(out)
        if previous:
            log.info(
                "als: %s holds run %s; it stays current until this run commits", config.output, previous.get("run_id")
            )
        yield out


@contextlib.contextmanager
def model_thread() -> Iterator[OnModel]:
    """``on_model(fn, *args)``: runs fn on the one thread that owns the model."""
    loop = asyncio.get_running_loop()
    compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def on_model(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await loop.run_in_executor(compute, lambda: fn(*args, **kwargs))

    try:
        yield on_model
    finally:
        # On failure or cancellation, do not wait here for a model call still running.
        compute.shutdown(wait=False, cancel_futures=True)


async def read_input(run: AlsRun) -> None:
    """The ``ingest`` and ``matrix`` stages: objects -> encoded ids -> the interaction matrix."""
    config = run.config
    # The builder encodes each object's ids as ingest decodes the next ones (the low peak);
    # the matrix stage then builds the CSR from what it holds.
    builder = MatrixBuilder(config.columns.user, config.columns.item)
    with run.stage("ingest"):
        run.ingest = await ingest(
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
    with run.stage("matrix"):
        run.interactions = await asyncio.to_thread(builder.build)
    run.train_matrix = run.interactions.matrix


async def split(run: AlsRun, on_model: OnModel) -> None:
    """With --eval-holdout: a share of each user's items held out; training sees the rest."""
    if run.config.eval_holdout:
        with run.stage("split"):
            run.train_matrix, run.test = await on_model(
                holdout_split, run.interactions.matrix, run.config.eval_holdout, run.config.train.seed
            )


async def search(run: AlsRun, on_model: OnModel) -> None:
    """With --tune: the weighting, alpha and regularization share to train with."""
    config = run.config
    if not config.tune:
        return
    with run.stage("tune"):
        # On the training matrix only: the evaluation holdout was split off before.
        run.tuning = await on_model(tune, _training_side(run), config.train, config.tune_budget)
    run.weighting, run.alpha = run.tuning.choice.weighting, run.tuning.choice.alpha


async def weigh(run: AlsRun, on_model: OnModel) -> None:
    """The confidence matrix train fits, on the host, unless the native solver weighs on the GPU."""
    # The native solver weighs the raw counts on the GPU inside train (no host weighting stage;
    # metrics' training.setup_seconds has its time); the search's regularization needs them here.
    run.weigh_on_gpu = run.config.train.solver == "native" and run.tuning is None
    if run.weigh_on_gpu:
        run.weighted = _training_side(run)
        return
    with run.stage("weighting"):
        run.weighted = await on_model(confidence, _training_side(run), run.weighting, run.alpha)
        if run.tuning is not None:
            sigma = await on_model(largest_singular_value, run.weighted, seed=run.config.train.seed)
            run.train_params = replace(run.config.train, regularization=run.tuning.choice.share * sigma)


async def train(run: AlsRun, on_model: OnModel) -> None:
    weighted, run.weighted = run.weighted, None  # the training holds it no longer than the fit does
    assert weighted is not None  # the weighting stage's
    on_gpu: dict[str, Any] = {"weighting": run.weighting, "alpha": run.alpha} if run.weigh_on_gpu else {}
    with run.stage("train"):
        run.training = await on_model(fit, weighted, run.train_params, **on_gpu)


async def score(run: AlsRun, on_model: OnModel) -> None:
    """With --eval-holdout: ALS against popularity on the held-out items; then the split's halves go."""
    config = run.config
    if run.test is not None:
        with run.stage("evaluate"):
            run.evaluation = await on_model(
                evaluate,
                run.training.model,
                _training_side(run),
                run.test,
                k=config.eval_k,
                max_users=config.eval_users,
                seed=config.train.seed,
                holdout=config.eval_holdout,
            )
    run.test = run.train_matrix = None


async def report_extras(run: AlsRun, on_model: OnModel) -> None:
    """What the report shows beside the metrics: sample users, distributions, the job and its GPU."""
    matrix = run.interactions.matrix
    run.extras = {
        "samples": await on_model(
            sample_users,
            run.training.model,
            matrix,
            run.interactions.user_ids,
            run.interactions.item_ids,
            n=run.config.top_n,
            seed=run.config.train.seed,
        ),
        "distributions": distributions(matrix),
        "job": job_context(run.started_at),
        "gpu": gpu_info() if run.training.device == "gpu" else None,
    }


@contextlib.asynccontextmanager
async def publisher(run: AlsRun, out: Store | None) -> AsyncIterator[Publisher | None]:
    """The run's publisher: its uploads removed if anything fails, older runs pruned once it commits."""
    if out is None:
        yield None
        return
    publisher = Publisher(out, run.run_id)
    try:
        yield publisher
    except BaseException:
        await publisher.abort()
        raise
    await publisher.prune(run.config.keep_runs)


async def write_outputs(run: AlsRun, publisher: Publisher | None, on_model: OnModel) -> None:
    """Recommendations, similar items, id maps and factors, uploaded part by part (computed even without --output)."""
    run.counts = await write_datasets(run, publisher, on_model)


async def publish(run: AlsRun, publisher: Publisher | None) -> None:
    """The metrics document, then (with --output) metrics.json, report.html and the manifest, the commit point."""
    if publisher is None:
        run.metrics = metrics.document(run)
        return
    with run.stage("publish"):
        await publisher.drain()
        # Assembled here, once every stage it reports has ended: see metrics.py on publish's own time.
        run.metrics = metrics.document(run)
        run.manifest = await commit(run, publisher)


def _training_side(run: AlsRun) -> scipy.sparse.csr_matrix:
    assert run.train_matrix is not None  # read_input's, until score drops it
    return run.train_matrix
