"""``airflow-gpu-worker als``: its options, each ``dest`` the name of the setting it fills, and its handler.

A dest names a field of ``AlsConfig``, of its ``Columns`` or of its ``TrainParams`` (the three
share no field name but ``threads``, which --threads fills in both), so ``config`` builds the
run's settings in one expression, and a new setting is one option here and one field there.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from typing import Any

from ..config import AlsConfig
from ..ingest import FORMATS, Columns
from ..matrix import DEFAULT_ALPHA, DEFAULT_WEIGHTING, WEIGHTINGS
from ..models import DEVICES, FACTOR_DTYPES, SOLVERS
from ..regularization import AUTO_REGULARIZATION_SHARE
from ..train import TrainParams
from ..tune import DEFAULT_BUDGET
from .options import DefaultsHelpFormatter, add_keep_runs, positive_int, regularization

log = logging.getLogger("airflow_gpu.worker")

# Whether `als` tunes unless told --no-tune: see benchmarks/README.md, "Tuning", for its cost and gain.
TUNE_BY_DEFAULT = True

# The settings the search picks: giving one leaves it nothing to pick (a numeric --regularization only).
SEARCHED = (("--weighting", "weighting"), ("--alpha", "alpha"), ("--regularization", "regularization"))


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    als = commands.add_parser(
        "als",
        help="train implicit ALS on interactions and publish recommendations",
        description=(
            "Stream interactions (user, item[, weight]) from S3 or local files, train implicit ALS on the GPU "
            "(or the CPU), and publish recommendations, similar items, factors, metrics.json and report.html "
            "under --output. manifest.json is written last: a prefix without one is incomplete."
        ),
        formatter_class=DefaultsHelpFormatter,
        parents=parents,
    )
    _input_and_output(als.add_argument_group("input and output"))
    _model(als.add_argument_group("model"))
    _outputs(als.add_argument_group("outputs"))
    als.set_defaults(handler=run)


def _input_and_output(io: argparse._ArgumentGroup) -> None:
    io.add_argument("--input", required=True, metavar="URI", help="s3://bucket/prefix/, or a local file or folder")
    io.add_argument(
        "--output", required=True, metavar="URI", help="s3://bucket/prefix/ or a local folder for the outputs"
    )
    io.add_argument(
        "--format", default="auto", choices=FORMATS, help="input format; auto goes by extension, then magic bytes"
    )
    io.add_argument(
        "--user-col",
        dest="user",
        metavar="USER_COL",
        default="user_id",
        help="column with user ids (strings or integers)",
    )
    io.add_argument(
        "--item-col",
        dest="item",
        metavar="ITEM_COL",
        default="item_id",
        help="column with item ids (strings or integers)",
    )
    io.add_argument(
        "--weight-col",
        dest="weight",
        metavar="WEIGHT_COL",
        default=None,
        help="column with counts/plays/views; without it each row counts once",
    )
    io.add_argument(
        "--drop-invalid",
        action="store_true",
        help="skip rows with a negative, NaN or non-numeric weight instead of failing",
    )


def _model(model: argparse._ArgumentGroup) -> None:
    defaults = TrainParams()
    model.add_argument(
        "--weighting",
        default=None,
        choices=WEIGHTINGS,
        help=f"confidence = 1 + alpha * f(weight): {', '.join(WEIGHTINGS)} (log is log1p; none is binary); "
        f"default {DEFAULT_WEIGHTING}, or what --tune picks",
    )
    model.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="confidence scale; default per weighting: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_ALPHA.items()),
    )
    model.add_argument("--factors", type=positive_int, default=defaults.factors, help="latent factors")
    model.add_argument(
        "--iterations",
        type=positive_int,
        default=defaults.iterations,
        help="the most ALS iterations; training stops sooner once the loss stops improving (--early-stop)",
    )
    model.add_argument(
        "--early-stop",
        type=float,
        default=defaults.early_stop,
        metavar="TOL",
        help="stop once the loss improved by less than this share for --patience iterations in a row; 0 runs "
        "every iteration",
    )
    model.add_argument(
        "--patience",
        type=positive_int,
        default=defaults.patience,
        help="iterations in a row below --early-stop that end training",
    )
    model.add_argument(
        "--tune",
        action=argparse.BooleanOptionalAction,
        default=TUNE_BY_DEFAULT,
        help="first pick weighting, alpha and regularization share on a validation split of the training "
        "data (sampled users, the defaults kept unless clearly beaten; see --tune-budget); skipped "
        "when --weighting, --alpha or a numeric --regularization is given",
    )
    model.add_argument(
        "--tune-budget",
        type=float,
        default=DEFAULT_BUDGET,
        metavar="SHARE",
        help="the search's time budget as a share of the final training run (estimated; at least a few "
        "seconds): it stops there and keeps the best so far",
    )
    model.add_argument(
        "--regularization",
        type=regularization,
        default="auto",
        metavar="auto|X",
        help=f"L2 regularization: auto = {AUTO_REGULARIZATION_SHARE:g} x the largest singular value of the "
        "confidence matrix (it scales with the data), or a number, used as given",
    )
    model.add_argument("--seed", type=int, default=defaults.seed, help="random seed (factors, holdout split)")
    model.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help="auto uses the GPU when implicit sees CUDA, else all CPU cores",
    )
    model.add_argument(
        "--solver",
        default=defaults.solver,
        choices=SOLVERS,
        help="implicit (GPU or CPU), or native: our own CUDA solver (GPU only, needs CuPy)",
    )
    model.add_argument(
        "--factor-dtype",
        default=defaults.factor_dtype,
        choices=FACTOR_DTYPES,
        help="how --solver native stores the factors on the GPU: bfloat16 halves their memory (the arithmetic "
        "stays float32); the factors written out are float32 either way",
    )
    model.add_argument("--threads", type=int, default=0, help="CPU threads for training and decoding; 0 = every core")
    model.add_argument(
        "--no-loss",
        dest="loss",
        action="store_false",
        help="skip computing the training loss each iteration (a little faster)",
    )


def _outputs(out: argparse._ArgumentGroup) -> None:
    out.add_argument("--top-n", type=positive_int, default=10, help="recommendations per user (seen items left out)")
    out.add_argument("--similar-n", type=int, default=10, help="similar items per item; 0 skips similar_items")
    out.add_argument(
        "--no-factors", dest="write_factors", action="store_false", help="do not write user_factors and item_factors"
    )
    out.add_argument("--batch-users", type=positive_int, default=100_000, help="users (or items) per output part")
    out.add_argument(
        "--eval-holdout",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this share of each user's items and report precision/MAP/NDCG@k against popularity",
    )
    out.add_argument("--eval-k", type=positive_int, default=10, help="k of the evaluation metrics")
    out.add_argument(
        "--eval-users", type=positive_int, default=50_000, help="evaluate on at most this many users (sampled)"
    )
    out.add_argument(
        "--progress-interval", type=float, default=5.0, metavar="SECONDS", help="seconds between progress lines"
    )
    add_keep_runs(out)


# Settings that are not one option each, derived in `config`.
_DERIVED = ("weighting", "tune", "threads")


def config(args: argparse.Namespace) -> AlsConfig:
    """The run's settings: each option into the field its dest names, and three derived ones."""
    given = vars(args)
    fixed = [flag for flag, dest in SEARCHED if given[dest] is not None]
    if args.tune and fixed:
        log.info("tune: skipped: %s given, and used as given", ", ".join(fixed))
    return AlsConfig(
        **_fields(AlsConfig, given, but=_DERIVED),
        columns=Columns(**_fields(Columns, given)),
        train=TrainParams(**_fields(TrainParams, given)),
        weighting=args.weighting or DEFAULT_WEIGHTING,  # None: not given, so the search may pick it
        tune=args.tune and not fixed,  # a setting given leaves the search nothing to pick
        threads=args.threads or None,  # decoding's "every core" is None, training's 0
    )


def _fields(cls: Any, given: dict[str, Any], but: tuple[str, ...] = ()) -> dict[str, Any]:
    """The values of ``cls``'s fields among the parsed options (a dataclass's fields no option fills keep their defaults)."""
    return {f.name: given[f.name] for f in fields(cls) if f.name in given and f.name not in but}


def run(args: argparse.Namespace) -> int:
    from ..pipeline import run_als

    run_als(config(args))
    return 0
