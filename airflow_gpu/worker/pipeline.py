"""The ``als`` job from input URI to committed manifest: the stages in order, and nothing else.

ingest -> matrix -> split -> tune -> weighting -> train -> evaluate -> extras -> outputs -> publish.
Each stage is a function in ``stages`` over the run's record (``config.AlsRun``); what it
computes lives in its own module.

``run_als(AlsConfig(...))`` is the whole worker pipeline as a function: the CLI calls it,
and so can benchmarks (with ``output=None`` nothing is written, but every stage,
recommendations for every user included, still runs and is timed).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from ..contract import MANIFEST
from . import stages
from .config import AlsConfig, AlsRun

log = logging.getLogger("airflow_gpu.worker")


def run_als(config: AlsConfig) -> AlsRun:
    return asyncio.run(run_als_async(config))


async def run_als_async(config: AlsConfig) -> AlsRun:
    config.check()
    run = AlsRun(config)
    _cancel_on_sigterm(asyncio.get_running_loop())
    log.info(
        "als: run %s, input %s, output %s", run.run_id, config.input, config.output or "(none: nothing is written)"
    )
    async with stages.output_store(run) as out:
        with stages.model_thread() as on_model:
            await stages.read_input(run)  # ingest, matrix
            await stages.split(run, on_model)
            await stages.search(run, on_model)  # tune
            await stages.weigh(run, on_model)
            await stages.train(run, on_model)
            await stages.score(run, on_model)  # evaluate
            await stages.report_extras(run, on_model)
            async with stages.publisher(run, out) as publisher:
                await stages.write_outputs(run, publisher, on_model)  # recommend, similar_items, id_maps, factors
                await stages.publish(run, publisher)
    log.info(
        "als: done in %.1fs%s", time.monotonic() - run.started, f"; manifest {out.uri_of(MANIFEST)}" if out else ""
    )
    return run


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
