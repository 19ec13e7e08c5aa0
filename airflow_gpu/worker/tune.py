"""The settings search, on by default: the confidence weighting, alpha and regularization share on the user's own data.

The defaults (bm25, alpha 0.5, regularization 0.2 x sigma_1) were chosen on a few tuning
sets and transfer unevenly: dense rating data wants less shrinkage, some count data more.
So before the real fit, a small search runs on a validation split carved from the TRAINING
matrix only (the evaluation holdout, when there is one, was removed before this is called
and is never seen here). It is meant to cost at most ``budget`` (25%) of the final fit:

1. a sample of users is drawn: ``budget`` / SAMPLE_FITS of them, and never fewer than it
   takes for MIN_VALIDATION_PAIRS validation pairs (or all of them), so the sample follows
   the data's size and density instead of a fixed count of users; items fewer than two
   sampled users touched are left out (MIN_ITEM_USERS);
2. each sampled user's pairs are split 80/20 (evaluate.holdout_split);
3. points are fitted on the 80% and scored by precision@10 on the 20%, the default first.
   Then the default weighting's neighbouring shares (x0.1, then x0.3, going on in the
   direction that won), then the other weightings at the best share so far (each at its own
   alpha: log 2, none 10), and the shares next to a weighting that won. Every candidate after
   the default starts from the factors of the best so far (a warm start, on the CPU: implicit's
   GPU model takes no initial factors), and stops on its own loss plateau, at a looser
   tolerance than the final fit's (CANDIDATE_TOLERANCE; patience 1 when warm);
4. the time budget, the same rule on the CPU and the GPU: once the default is fitted, the final
   fit's time is estimated from it (its seconds per iteration scaled by the work of the whole
   matrix against the sample's, ``work``, times its iterations). The search starts no
   candidate that its last one's length says would end past ``budget`` x that estimate (or
   MIN_SECONDS, on data so small that a quarter of a fit is less), and says so in the log when
   it stops early, keeping the best so far. The estimate runs high on small samples, whose
   iterations carry a fixed cost that does not scale; the budget is a bound, and the sample
   size and the short warm candidates are what keep the cost well inside it.

Never worse than the default: the default is always scored, and a point replaces the best so
far only when it wins by more than CLEAR_GAIN standard errors of the per-user difference in
precision@10 (the same validation users score both, so the comparison is paired) and by more
than MIN_GAIN of it. With one standard error and no margin, the sample's noise and its unlike
density moved two tuning sets and the demo's 3M to a worse point (benchmarks/README.md, "Tuning").

The winner's share multiplies sigma_1 of the FULL confidence matrix (regularization.auto_regularization's
rule), not of the sample's, because sigma_1 is what carries the scale between the two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse
from numpy.typing import ArrayLike

from .evaluate import holdout_split, ranking_metrics
from .matrix import confidence
from .recommend import top_n
from .regularization import AUTO_REGULARIZATION_SHARE, largest_singular_value
from .train import TrainParams, TrainResult, fit

log = logging.getLogger("airflow_gpu.worker")

ALPHAS = {"bm25": 0.5, "log": 2.0, "none": 10.0}
SHARES = (0.05, 0.1, AUTO_REGULARIZATION_SHARE, 0.3)
DEFAULT_BUDGET = 0.25  # share of the final fit's time the search may cost
SAMPLE_FITS = 8  # the sample holds budget / SAMPLE_FITS of the users: about 5 fits, most of them warm and short
MIN_VALIDATION_PAIRS = 10_000  # fewer, and precision@10's differences between points are mostly noise
MAX_VALIDATION_USERS = 50_000  # scored per candidate: as many as the worker's evaluation scores
MIN_SECONDS = 5.0  # the budget's floor: below this, a share of a tiny fit could not afford even the default
CANDIDATE_TOLERANCE = 5e-3  # a candidate stops once its loss improves by less than 0.5% (x patience)
MIN_ITEM_USERS = 2  # items the sample keeps: those at least this many sampled users touched
CLEAR_GAIN = 2.0  # standard errors of the paired per-user difference a challenger must win by
# ... and the least relative gain: beyond the noise, the sample's choice may still not carry over to the
# whole data (on the demo's 3M, x0.3 won by 2% on the sample and lost 4% on the holdout).
MIN_GAIN = 0.05
# One ALS iteration costs about (pairs + ROW_WORK x rows) x a constant: each row's solve adds
# about factors^2 work to the factors work of each pair. Fitted on the CPU over the demo's data and
# samples of it, 64 factors (benchmarks/README.md, "Tuning"); used only to scale the sample's time.
ROW_WORK_PER_FACTOR = 1 / 25
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
    validation_users: int = 0
    budget: float = DEFAULT_BUDGET
    estimated_fit_seconds: float | None = None  # the final fit's time, as the search estimated it
    budget_seconds: float | None = None  # the time the search allowed itself
    stopped_by_budget: bool = False
    seconds: float = 0.0

    def precision(self, setting: Setting) -> float | None:
        return next((row["precision_at_10"] for row in self.grid if row["setting"] == setting.label), None)

    @property
    def gain_over_default(self) -> float | None:
        """The choice's precision@10 over the default's on the validation users, less one."""
        default, chosen = self.precision(DEFAULT), self.precision(self.choice)
        return None if not default or chosen is None else chosen / default - 1

    def as_dict(self) -> dict[str, Any]:
        gain = self.gain_over_default
        return {
            "choice": asdict(self.choice) | {"label": self.choice.label},
            "default": DEFAULT.label,
            "metric": f"precision_at_{K}",
            "rule": f"a point replaces the best so far only when it wins by more than {CLEAR_GAIN:g} standard errors "
            f"of the paired per-user difference and by more than {MIN_GAIN:.0%}",
            "searched": [row["setting"] for row in self.grid],
            "grid": self.grid,
            "default_precision_at_10": self.precision(DEFAULT),
            "choice_precision_at_10": self.precision(self.choice),
            "gain_over_default": None if gain is None else round(gain, 4),
            "sample_users": self.sample_users,
            "sample_interactions": self.sample_interactions,
            "validation_users": self.validation_users,
            "validation_interactions": self.validation_interactions,
            "budget": self.budget,
            "estimated_fit_seconds": None
            if self.estimated_fit_seconds is None
            else round(self.estimated_fit_seconds, 4),
            "budget_seconds": None if self.budget_seconds is None else round(self.budget_seconds, 4),
            "stopped_by_budget": self.stopped_by_budget,
            "seconds": round(self.seconds, 4),
        }


def sample_users(matrix: scipy.sparse.csr_matrix, budget: float, seed: int) -> np.ndarray:
    """Rows to tune on: budget / SAMPLE_FITS of the users, or enough for MIN_VALIDATION_PAIRS, or all."""
    lengths = np.diff(matrix.indptr)
    active = np.flatnonzero(lengths > 0)
    per_user = VALIDATION_SHARE * matrix.nnz / max(len(active), 1)  # validation pairs a sampled user brings
    wanted = max(
        int(np.ceil(len(active) * budget / SAMPLE_FITS)), int(np.ceil(MIN_VALIDATION_PAIRS / max(per_user, 1e-9)))
    )
    if wanted >= len(active):
        return active.astype(np.int32)
    rng = np.random.default_rng(seed + 7)
    return np.sort(rng.choice(active, size=wanted, replace=False)).astype(np.int32)


def work(matrix: scipy.sparse.spmatrix, factors: int) -> float:
    """One ALS iteration's work on ``matrix``, in pairs (see ROW_WORK_PER_FACTOR)."""
    return float(matrix.nnz + ROW_WORK_PER_FACTOR * factors * sum(matrix.shape))


def paired_gain(challenger: ArrayLike, incumbent: ArrayLike) -> tuple[float, float]:
    """(relative gain, z): the mean per-user difference over the incumbent's mean, and over its standard
    error; ``challenger`` and ``incumbent`` are the same users' precisions, in the same order."""
    challenger = np.atleast_1d(np.asarray(challenger, dtype=np.float64))
    incumbent = np.atleast_1d(np.asarray(incumbent, dtype=np.float64))
    difference = challenger - incumbent
    error = difference.std(ddof=1) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
    base = incumbent.mean()
    relative = difference.mean() / base if base > 0 else (np.inf if difference.mean() > 0 else 0.0)
    z = difference.mean() / error if error > 0 else (np.inf if difference.mean() > 0 else 0.0)
    return float(relative), float(z)


def beats(challenger: ArrayLike, incumbent: ArrayLike, clear: float = CLEAR_GAIN, least: float = MIN_GAIN) -> bool:
    """Whether per-user precisions ``challenger`` beat ``incumbent`` (same users, same order) clearly: by more
    than ``clear`` standard errors of their paired difference, and by more than ``least`` of the incumbent's."""
    return beats_rule(*paired_gain(challenger, incumbent), clear=clear, least=least)


def beats_rule(relative: float, z: float, clear: float = CLEAR_GAIN, least: float = MIN_GAIN) -> bool:
    return relative > least and z > clear


class OutOfTime(Exception):
    """Raised by the search's clock before a candidate that would end past the budget."""


def search(
    score: Callable[[Setting, Setting | None], ArrayLike],
    before_each: Callable[[], None] = lambda: None,
    compared: Callable[[Setting, Setting, float, float], None] = lambda *_: None,
) -> Setting:
    """The best point of the search; ``score(point, start)`` gives a point's per-user precision, fitted
    from ``start``'s factors when it is given (a warm start from the best so far).

    ``before_each`` runs before every candidate after the default and may raise OutOfTime: the
    search then ends, and the best so far stands (``search`` returns it). ``compared(point, best,
    relative gain, z)`` hears how each candidate fared against the best it was measured against.
    """
    scores = {DEFAULT: score(DEFAULT, None)}
    best = DEFAULT

    def attempt(point: Setting) -> bool:
        nonlocal best
        if point in scores:
            return False
        before_each()
        scores[point] = score(point, best)
        compared(point, best, *paired_gain(scores[point], scores[best]))
        if beats(scores[point], scores[best]):
            best = point
            return True
        return False

    def climb() -> None:
        """Walk the best weighting's shares from the best one: down first, then up, on while each step wins."""
        for step in (-1, 1):
            moved = False
            index = SHARES.index(best.share) + step
            while 0 <= index < len(SHARES) and attempt(replace(best, share=SHARES[index])):
                moved = True
                index += step
            if moved:
                return

    try:
        climb()
        for weighting, alpha in ALPHAS.items():
            if weighting != best.weighting and attempt(Setting(weighting, alpha, best.share)):
                climb()
    except OutOfTime:
        pass
    return best


def _candidate_params(params: TrainParams) -> TrainParams:
    """The final fit's settings, quiet, with the loss on and the candidates' looser plateau."""
    return replace(
        params,
        on_iteration=None,
        loss=True,
        early_stop=max(params.early_stop, CANDIDATE_TOLERANCE),
        patience=params.patience,
    )


def tune(
    train: scipy.sparse.csr_matrix,
    params: TrainParams,
    budget: float = DEFAULT_BUDGET,
    clock: Callable[[], float] = time.monotonic,
) -> TuneResult:
    """Search the settings on a validation split of ``train`` (raw counts, users x items)."""
    started = clock()
    rows = sample_users(train, budget, params.seed)
    sample = train[rows]
    # Items fewer than two sampled users touched: no sampled user's taste reaches another through them,
    # yet each costs a solve per iteration (a third of the demo sample's rows).
    sample = sample[:, np.flatnonzero(np.bincount(sample.indices, minlength=sample.shape[1]) >= MIN_ITEM_USERS)]
    fit_part, validation = holdout_split(sample, VALIDATION_SHARE, seed=params.seed + 11)
    users = np.flatnonzero(np.diff(validation.indptr) > 0).astype(np.int32)
    if len(users) > MAX_VALIDATION_USERS:  # at 1e9 pairs the sample's users would make ranking cost more than fitting
        users = np.sort(np.random.default_rng(params.seed + 13).choice(users, MAX_VALIDATION_USERS, replace=False))
    result = TuneResult(
        choice=DEFAULT,
        sample_users=len(rows),
        sample_interactions=int(fit_part.nnz),
        validation_interactions=int(validation.nnz),
        validation_users=len(users),
        budget=budget,
    )
    log.info(
        "tune: %s sampled users, %s pairs to fit, %s to validate; the default first, then its neighbours while "
        "the budget (%.0f%% of the final fit) lasts",
        f"{len(rows):,}",
        f"{fit_part.nnz:,}",
        f"{validation.nnz:,}",
        100 * budget,
    )
    if validation.nnz == 0:
        log.warning("tune: no user has two or more items to validate on; keeping the defaults (%s)", DEFAULT.label)
        result.seconds = clock() - started
        return result
    truth = validation[users]
    weighted_by: dict[tuple[str, float], tuple[scipy.sparse.csr_matrix, float]] = {}  # (confidence, sigma_1)
    fitted: dict[Setting, TrainResult] = {}
    quiet = _candidate_params(params)
    scale = work(train, params.factors) / work(fit_part, params.factors)
    durations: list[float] = []

    def score(point: Setting, start: Setting | None) -> np.ndarray:
        point_started = clock()
        key = (point.weighting, point.alpha)
        if key not in weighted_by:
            weighted = confidence(fit_part, point.weighting, point.alpha)
            weighted_by[key] = weighted, largest_singular_value(weighted, seed=params.seed)
        weighted, sigma = weighted_by[key]
        warm = fitted[start] if start is not None else None
        # A warm start begins near its plateau, past ALS's early uneven steps: one small step ends it.
        trained = fit(
            weighted,
            replace(quiet, regularization=point.share * sigma, patience=1 if warm else quiet.patience),
            start=warm,
        )
        fitted[point] = trained
        ids, _ = top_n(trained.model, fit_part, users, K)
        per_user = ranking_metrics(ids, truth, K)["precision"]
        value = round(float(per_user.mean()), 6)
        seconds = clock() - point_started
        durations.append(seconds)
        result.grid.append(
            {
                "setting": point.label,
                **asdict(point),
                "precision_at_10": value,
                "iterations": trained.iterations_run,
                "warm_start": trained.warm_start,
                "stop_reason": trained.stop_reason,
                "seconds": round(seconds, 4),
            }
        )
        log.info(
            "tune: %-16s precision@%d %.4f (%d iterations%s, %.2fs)",
            point.label,
            K,
            value,
            trained.iterations_run,
            ", warm" if trained.warm_start else "",
            seconds,
        )
        if point == DEFAULT:
            per_iteration = trained.seconds / max(trained.iterations_run, 1)
            result.estimated_fit_seconds = per_iteration * scale * trained.iterations_run
            result.budget_seconds = max(budget * result.estimated_fit_seconds, MIN_SECONDS)
        return per_user

    def before_each() -> None:
        # The next candidate is expected to take as long as the last one (each starts warm from the best).
        if clock() - started + durations[-1] > (result.budget_seconds or 0.0):
            result.stopped_by_budget = True
            raise OutOfTime

    def compared(point: Setting, against: Setting, relative: float, z: float) -> None:
        row = next(row for row in reversed(result.grid) if row["setting"] == point.label)
        row.update(against=against.label, gain=round(relative, 4), z=round(z, 2))
        log.info(
            "tune: %-16s against %s: %+.1f%%, %.1f standard errors%s",
            point.label,
            against.label,
            100 * relative,
            z,
            "" if beats_rule(relative, z) else " (not clear: kept the best so far)",
        )

    best = search(score, before_each, compared)
    result.choice = best
    result.seconds = clock() - started
    if result.stopped_by_budget:
        log.info(
            "tune: stopped after %d fit(s): the next would pass the budget of %.1fs (%.0f%% of the final fit, "
            "estimated at %.1fs); keeping the best so far",
            len(result.grid),
            result.budget_seconds,
            100 * budget,
            result.estimated_fit_seconds,
        )
    gain = result.gain_over_default
    log.info(
        "tune: chose %s (precision@%d %.4f; the default %s %.4f, %+.1f%%) in %.1fs",
        best.label,
        K,
        result.precision(best),
        DEFAULT.label,
        result.precision(DEFAULT),
        100 * (gain or 0.0),
        result.seconds,
    )
    return result
