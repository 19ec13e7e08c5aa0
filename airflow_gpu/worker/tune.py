"""``--tune``: pick the confidence weighting, alpha and regularization share on the user's own data.

The defaults (bm25, alpha 0.5, regularization 0.2 x sigma_1) were chosen on a few tuning
sets and transfer unevenly: dense rating data wants less shrinkage, some count data wants
log confidence. So before the real fit, a small search runs on a validation split carved
from the TRAINING matrix only (the evaluation holdout, when there is one, was removed
before this is called and is never seen here):

1. a sample of users is drawn, so the search's cost stays a bounded share of one full
   training run whatever the data's size: it is planned at ``budget`` (25%) of the pairs
   over its fits, and measured 0.41 of a fit on the demo's 3M on the CPU, where each fit
   also pays for the items and its start (benchmarks/README.md, "Tuning");
2. each sampled user's pairs are split 80/20 (evaluate.holdout_split);
3. points are fitted on the 80% and scored by precision@10 on the 20%, coarse to fine:
   the three weightings, each at its own alpha, at the default share; then the best
   weighting's other shares: 6 fits.

The alpha is searched only through the weighting, each at one alpha (bm25 the default's,
log the 2 that benchmarks/weighting.py tunes with, none matrix.DEFAULT_ALPHA's): within bm25, alpha 0.25 to 1 moved the mean share of the best by 0.004
at the default share (benchmarks/README.md, "Weighting"), while another stage of alphas
would cost a third more fits.

A point replaces the best so far only when it beats it by more than one standard error of
the per-user difference in precision@10 (the same validation users score both, so the
comparison is paired): with a sample of a few thousand users, smaller gains are mostly the
sample's noise, and the default, chosen on several tuning sets, deserves the benefit of the doubt.

The winner's share multiplies sigma_1 of the FULL confidence matrix (train.auto_regularization's
rule), not of the sample's, because sigma_1 is what carries the scale between the two.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np
import scipy.sparse
from numpy.typing import ArrayLike

from .evaluate import holdout_split, ranking_metrics
from .matrix import confidence
from .recommend import top_n
from .train import AUTO_REGULARIZATION_SHARE, TrainParams, fit, largest_singular_value

log = logging.getLogger("airflow_gpu.worker")

ALPHAS = {"bm25": 0.5, "log": 2.0, "none": 10.0}
SHARES = (0.05, 0.1, AUTO_REGULARIZATION_SHARE, 0.3)
POINTS = len(ALPHAS) + len(SHARES) - 1  # the fits one search makes (see the module docstring)
DEFAULT_BUDGET = 0.25  # share of one full training run the search may cost
MIN_USERS = 3_000  # fewer sampled users: noisy scores, and a sample too sparse to stand for the data
VALIDATION_SHARE = 0.2
K = 10


@dataclass(frozen=True)
class Setting:
    weighting: str
    alpha: float
    share: float  # regularization = share x sigma_1 of the confidence matrix

    @property
    def label(self) -> str:
        return f"{self.weighting}:{self.alpha:g}:x{self.share:g}"


DEFAULT = Setting("bm25", ALPHAS["bm25"], AUTO_REGULARIZATION_SHARE)


@dataclass
class TuneResult:
    choice: Setting
    grid: list[dict[str, Any]] = field(default_factory=list)  # one row per fitted point, in search order
    sample_users: int = 0
    sample_interactions: int = 0
    validation_interactions: int = 0
    budget: float = DEFAULT_BUDGET
    planned_share: float = 0.0  # the sample's share of the training pairs x POINTS
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "choice": asdict(self.choice) | {"label": self.choice.label},
            "default": DEFAULT.label,
            "metric": f"precision_at_{K}",
            "grid": self.grid,
            "sample_users": self.sample_users,
            "sample_interactions": self.sample_interactions,
            "validation_interactions": self.validation_interactions,
            "budget": self.budget,
            "planned_share_of_training": round(self.planned_share, 4),
            "seconds": round(self.seconds, 4),
        }


def sample_users(matrix: scipy.sparse.csr_matrix, budget: float, seed: int) -> np.ndarray:
    """Rows to tune on: about budget / POINTS of the pairs, never fewer than MIN_USERS users.

    One ALS iteration costs about the same per stored pair, so a sample holding a share f of
    the pairs makes POINTS fits cost about POINTS x f of one full fit.
    """
    active = np.flatnonzero(np.diff(matrix.indptr) > 0)
    wanted = max(MIN_USERS, int(np.ceil(len(active) * budget / POINTS)))
    if wanted >= len(active):
        return active.astype(np.int32)
    rng = np.random.default_rng(seed + 7)
    return np.sort(rng.choice(active, size=wanted, replace=False)).astype(np.int32)


def search_points(best: Setting | None = None, stage: int = 1) -> list[Setting]:
    """The points of one stage of the coarse-to-fine search, given the best so far."""
    if stage == 1:
        return [DEFAULT] + [Setting(w, a, AUTO_REGULARIZATION_SHARE) for w, a in ALPHAS.items() if w != DEFAULT.weighting]
    assert best is not None  # the later stages start from the best so far
    return [replace(best, share=s) for s in SHARES if s != best.share]


def beats(challenger: ArrayLike, incumbent: ArrayLike) -> bool:
    """Whether per-user precisions ``challenger`` beat ``incumbent`` (same users, same order) by more
    than one standard error of their paired difference; plain numbers compare as they are."""
    difference = np.atleast_1d(np.asarray(challenger, dtype=np.float64) - np.asarray(incumbent, dtype=np.float64))
    error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
    return bool(difference.mean() > error)


def search(score: Callable[[Setting], ArrayLike]) -> Setting:
    """The best point of the coarse-to-fine search; ``score(setting)`` gives each point's per-user precision.

    Each stage starts from the best so far, and a point must beat it (``beats``), so the
    default stays unless something is clearly better.
    """
    best = DEFAULT
    scores = {DEFAULT: score(DEFAULT)}
    for stage in (1, 2):
        for point in search_points(best, stage):
            if point not in scores:
                scores[point] = score(point)
            if beats(scores[point], scores[best]):
                best = point
    return best


def tune(train: scipy.sparse.csr_matrix, params: TrainParams, budget: float = DEFAULT_BUDGET) -> TuneResult:
    """Search the settings on a validation split of ``train`` (raw counts, users x items)."""
    started = time.monotonic()
    rows = sample_users(train, budget, params.seed)
    sample = train[rows]
    # Items no sampled user touched would only add solves for factors nobody is scored on.
    sample = sample[:, np.flatnonzero(np.bincount(sample.indices, minlength=sample.shape[1]))]
    fit_part, validation = holdout_split(sample, VALIDATION_SHARE, seed=params.seed + 11)
    result = TuneResult(choice=DEFAULT, sample_users=len(rows), sample_interactions=int(fit_part.nnz),
                        validation_interactions=int(validation.nnz), budget=budget,
                        planned_share=POINTS * sample.nnz / max(train.nnz, 1))
    log.info("tune: %s sampled users, %s pairs to fit, %s to validate; %d points (planned cost %.0f%% of one "
             "full training run)", f"{len(rows):,}", f"{fit_part.nnz:,}", f"{validation.nnz:,}", POINTS,
             100 * result.planned_share)
    if validation.nnz == 0:
        log.warning("tune: no user has two or more items to validate on; keeping the defaults (%s)", DEFAULT.label)
        result.seconds = time.monotonic() - started
        return result
    scores: dict[Setting, float] = {}
    users = np.flatnonzero(np.diff(validation.indptr) > 0).astype(np.int32)
    truth = validation[users]
    weighted_by: dict[tuple[str, float], tuple[scipy.sparse.csr_matrix, float]] = {}  # (confidence, sigma_1)
    quiet = replace(params, on_iteration=None)

    def score(point: Setting) -> np.ndarray:
        key = (point.weighting, point.alpha)
        if key not in weighted_by:
            weighted = confidence(fit_part, point.weighting, point.alpha)
            weighted_by[key] = weighted, largest_singular_value(weighted, seed=params.seed)
        weighted, sigma = weighted_by[key]
        point_started = time.monotonic()
        trained = fit(weighted, replace(quiet, regularization=point.share * sigma))
        ids, _ = top_n(trained.model, fit_part, users, K)
        per_user = ranking_metrics(ids, truth, K)["precision"]
        value = round(float(per_user.mean()), 6)
        scores[point] = value
        result.grid.append({"setting": point.label, **asdict(point), "precision_at_10": value,
                            "iterations": trained.iterations_run,
                            "seconds": round(time.monotonic() - point_started, 4)})
        log.info("tune: %-16s precision@%d %.4f", point.label, K, value)
        return per_user

    best = search(score)
    result.choice = best
    result.seconds = time.monotonic() - started
    log.info("tune: chose %s (precision@%d %.4f; the default %s %.4f) in %.1fs", best.label, K, scores[best],
             DEFAULT.label, scores[DEFAULT], result.seconds)
    return result
