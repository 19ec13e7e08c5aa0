"""The ``als`` run's settings (``AlsConfig``, with their checks) and its record (``AlsRun``).

The stages (stages.py) read the settings and fill the record in order; ``run_als`` returns the
record, and the metrics document (metrics.py) and the written outputs (datasets.py) are drawn
from it. This module sits under all of them, so none of them imports the orchestrator.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterator

import scipy.sparse

from ..contract import local_path
from .errors import WorkerError
from .ingest import Columns, IngestStats
from .matrix import DEFAULT_ALPHA, DEFAULT_WEIGHTING, Interactions
from .publish import DEFAULT_KEEP_RUNS, new_run_id
from .train import TrainParams, TrainResult
from .tune import DEFAULT_BUDGET, TuneResult

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
    """One run: its settings, what each stage has made so far, and each stage's wall time.

    A field without a default is set by its stage (reading it earlier is a bug, and fails; repr leaves
    those fields out, so a record can be shown at any point).
    Large intermediates (the split's halves, the weighted matrix) are dropped by the stage
    after the last one that needs them, so the record never holds a matrix longer than the
    pipeline did when it kept them in local variables.
    """

    config: AlsConfig
    run_id: str = ""  # the config's, or a new one
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    started: float = field(default_factory=time.monotonic)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, in order (``stage``)
    ingest: IngestStats = field(init=False, repr=False)
    interactions: Interactions = field(init=False, repr=False)
    # The training side of the evaluation split (the whole matrix without one), and the held-out side.
    train_matrix: scipy.sparse.csr_matrix | None = None
    test: scipy.sparse.csr_matrix | None = None
    tuning: TuneResult | None = None
    # As trained: the config's, or the search's choice.
    weighting: str = field(init=False, repr=False)
    alpha: float | None = field(init=False, repr=False)
    train_params: TrainParams = field(init=False, repr=False)
    # What train fits: the confidence matrix, or the raw counts when the native solver weighs them on the GPU.
    weighted: scipy.sparse.csr_matrix | None = None
    weigh_on_gpu: bool = False
    training: TrainResult = field(init=False, repr=False)
    evaluation: dict[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # samples, distributions, job and gpu, for the report
    counts: dict[str, int] = field(default_factory=dict)  # rows of recommendations and similar items
    metrics: dict[str, Any] = field(
        init=False, repr=False
    )  # the document metrics.json holds, the same dict (metrics.py)
    manifest: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.run_id = self.run_id or self.config.run_id or new_run_id()
        self.weighting, self.alpha, self.train_params = self.config.weighting, self.config.alpha, self.config.train

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Adds the block's wall time to stage ``name`` and logs it as the block ends."""
        started = time.monotonic()
        yield
        self.stages[name] = round(self.stages.get(name, 0.0) + time.monotonic() - started, 4)
        log.info("%s: %.2fs", name, self.stages[name])
