"""The run's metrics document (metrics.json, and ``run_als``'s ``AlsRun.metrics``), drawn from the run's record.

The document is assembled once, by ``document``, when everything it reports is known: for a
run that writes, that is inside the publish stage, after the last part is uploaded and before
metrics.json is; so ``stages`` lists every stage but publish itself, whose time only the log
shows (a file cannot hold the time it takes to write it and commit it). The same dict is
written and returned, so what a caller reads is what the report was drawn from.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

from .config import AlsRun
from .ingest import Columns
from .matrix import DEFAULT_ALPHA
from .regularization import AUTO_REGULARIZATION_SHARE
from .tune import TuneResult


def document(run: AlsRun) -> dict[str, Any]:
    """The metrics document of a run whose stages have all ended (publish's own time aside, see above).

    Keys keep the order metrics.json has always had: readers diff documents across runs.
    """
    ingest_figures = run.ingest.as_dict()
    return {
        "run_id": run.run_id,
        "started_at": run.started_at.isoformat(timespec="seconds"),
        "input": run.config.input,
        "output": run.config.output,
        "counts": _counts(run),
        "stages": dict(run.stages),
        "throughput": _throughput(run, ingest_figures),
        "training": _training(run),
        "evaluation": run.evaluation,
        "ingest": _ingest_figures(ingest_figures, run.stages),
        "params": run.config.params(),
        "versions": versions(),
        "tuning": _tuning(run.tuning, run.stages),
        "samples": run.extras["samples"],
        "distributions": run.extras["distributions"],
        "job": run.extras["job"],
        "gpu": run.extras["gpu"],
        "total_seconds": round(time.monotonic() - run.started, 4),
    }


def _counts(run: AlsRun) -> dict[str, Any]:
    ingest, interactions = run.ingest, run.interactions
    matrix = interactions.matrix
    return {
        "objects": ingest.objects,
        "bytes_read": ingest.bytes,
        "rows_read": ingest.rows_read,
        "null_id_rows_dropped": ingest.null_id_rows,
        "invalid_weight_rows_dropped": ingest.invalid_weight_rows,
        "zero_weight_rows_dropped": ingest.zero_weight_rows,
        # rows kept (after the drops above), duplicates included; "pairs" sums duplicates into one.
        "interactions": interactions.rows,
        "duplicates_summed": interactions.duplicates,
        "pairs": int(matrix.nnz),
        "users": interactions.users,
        "items": interactions.items,
        "density": round(matrix.nnz / max(interactions.users * interactions.items, 1), 8),
        "recommendations": run.counts.get("recommendations", 0),
        "similar_items": run.counts.get("similar_items", 0),
    }


def _throughput(run: AlsRun, ingest_figures: dict[str, Any]) -> dict[str, Any]:
    train_seconds = run.stages.get("train", 0.0)
    recommend_seconds = run.stages.get("recommend", 0.0)
    pairs = run.interactions.matrix.nnz
    return {
        "ingest_mb_per_s": ingest_figures["mb_per_s"],
        "ingest_rows_per_s": ingest_figures["rows_per_s"],
        "train_pairs_per_s_per_iteration": round(pairs * run.training.iterations_run / train_seconds)
        if train_seconds
        else None,
        "recommend_users_per_s": round(run.interactions.users / recommend_seconds) if recommend_seconds else None,
    }


def _training(run: AlsRun) -> dict[str, Any]:
    """The training as it ran: the settings asked for beside what they resolved to."""
    asked, training, weighting = run.config.train, run.training, run.weighting
    return {
        "device": training.device,
        "factors": asked.factors,
        "iterations": asked.iterations,  # the maximum
        "iterations_run": training.iterations_run,
        "stop_reason": training.stop_reason,
        "early_stop": asked.early_stop,
        "patience": asked.patience,
        "regularization": training.regularization,  # as trained: auto resolved to a number
        "regularization_auto": asked.regularization is None,
        "weighting": weighting,  # as trained: the search's choice when --tune
        "alpha": run.alpha if run.alpha is not None else DEFAULT_ALPHA.get(weighting),
        "seconds": round(training.seconds, 4),
        "loss": training.loss,
        "iteration_seconds": [round(s, 4) for s in training.iteration_seconds],
        # where the weighting ran ("host": the weighting stage; "gpu": inside train, timed in setup_seconds)
        "weighted_on": training.weighted_on,
        "setup_seconds": training.setup_seconds or None,  # the native solver's GPU steps before iterating
        "regularization_share": (
            run.tuning.choice.share
            if run.tuning is not None
            else AUTO_REGULARIZATION_SHARE
            if asked.regularization is None
            else None
        ),
    }


def _ingest_figures(figures: dict[str, Any], stages: dict[str, float]) -> dict[str, Any]:
    """Ingest's own figures, with the CSR build (the matrix stage) beside its seconds, where readers find it."""
    out = {}
    for key, value in figures.items():
        out[key] = value
        if key == "seconds":
            out["build_seconds"] = stages.get("matrix", 0.0)
    return out


def _tuning(tuning: TuneResult | None, stages: dict[str, float]) -> dict[str, Any] | None:
    """The search's grid, scores and choice, with its cost measured against the final training."""
    if tuning is None:
        return None
    figures = tuning.as_dict()
    train_seconds = stages.get("train")
    figures["share_of_training"] = round(tuning.seconds / train_seconds, 4) if train_seconds else None
    return figures


def versions() -> dict[str, str]:
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


def json_bytes(metrics: dict[str, Any]) -> bytes:
    return json.dumps(metrics, indent=2, default=_json_default).encode()


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Columns):
        return asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
