"""``airflow-gpu-worker``: the command the GPU container runs.

    airflow-gpu-worker als --input s3://bucket/interactions/ --output s3://bucket/als/run-1/
    airflow-gpu-worker run-script --script s3://bucket/jobs/train.py --input ... --output ...
    airflow-gpu-worker run-script --code s3://.../code/SHA.tar.gz --script train.py --output ...
    airflow-gpu-worker run-function --payload s3://.../functions/SHA.json --sha256 SHA --result s3://.../
    airflow-gpu-worker python train.py      (any other command: run as it is, see entrypoint.py)

A user's mistake ends with one line on stderr, ``airflow-gpu-worker: error: ...``, and
exit code 2; progress goes to stderr as timestamped lines, which Batch sends to
CloudWatch Logs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings
from typing import TYPE_CHECKING, TextIO

from .errors import WorkerError

PROG = "airflow-gpu-worker"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _regularization(text: str) -> float | None:
    """``auto`` (None: scaled to the data, see train.auto_regularization) or a number >= 0."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be auto or a number >= 0, got {text!r}")
    return value


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it has one: never "(default: None)" on a required
    option, nor on one whose absence the help text already explains."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None:
            return action.help
        return super()._get_help_string(action)


def package_version() -> str:
    """The installed distribution's version (the image installs the package with --no-deps, so it has one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("airflow-gpu")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from .ingest import FORMATS
    from .matrix import DEFAULT_ALPHA, DEFAULT_WEIGHTING, WEIGHTINGS
    from .models import DEVICES, SOLVERS
    from .publish import DEFAULT_KEEP_RUNS
    from .regularization import AUTO_REGULARIZATION_SHARE
    from .train import TrainParams
    from .tune import DEFAULT_BUDGET

    defaults = TrainParams()
    # Options every command takes, written once. -q works before or after the command; SUPPRESS
    # keeps a subcommand that was not given -q from resetting the top level's value (absent = not quiet).
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="log warnings and errors only"
    )
    s3 = argparse.ArgumentParser(add_help=False)
    s3.add_argument(
        "--endpoint-url", default=None, help="S3 endpoint (else the standard AWS settings, AWS_ENDPOINT_URL included)"
    )
    s3.add_argument("--concurrency", type=_positive_int, default=16, help="S3 requests in flight")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The airflow-gpu container worker: built-in ALS collaborative filtering, or your own script.",
        parents=[quiet],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    als = commands.add_parser(
        "als",
        help="train implicit ALS on interactions and publish recommendations",
        description=(
            "Stream interactions (user, item[, weight]) from S3 or local files, train implicit ALS on the GPU "
            "(or the CPU), and publish recommendations, similar items, factors, metrics.json and report.html "
            "under --output. manifest.json is written last: a prefix without one is incomplete."
        ),
        formatter_class=_DefaultsHelpFormatter,
        parents=[quiet, s3],
    )
    io = als.add_argument_group("input and output")
    io.add_argument("--input", required=True, metavar="URI", help="s3://bucket/prefix/, or a local file or folder")
    io.add_argument(
        "--output", required=True, metavar="URI", help="s3://bucket/prefix/ or a local folder for the outputs"
    )
    io.add_argument(
        "--format", default="auto", choices=FORMATS, help="input format; auto goes by extension, then magic bytes"
    )
    io.add_argument("--user-col", default="user_id", help="column with user ids (strings or integers)")
    io.add_argument("--item-col", default="item_id", help="column with item ids (strings or integers)")
    io.add_argument(
        "--weight-col", default=None, help="column with counts/plays/views; without it each row counts once"
    )
    io.add_argument(
        "--drop-invalid",
        action="store_true",
        help="skip rows with a negative, NaN or non-numeric weight instead of failing",
    )

    model = als.add_argument_group("model")
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
    model.add_argument("--factors", type=_positive_int, default=defaults.factors, help="latent factors")
    model.add_argument(
        "--iterations",
        type=_positive_int,
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
        type=_positive_int,
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
        type=_regularization,
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
    model.add_argument("--threads", type=int, default=0, help="CPU threads for training and decoding; 0 = every core")
    model.add_argument(
        "--no-loss", action="store_true", help="skip computing the training loss each iteration (a little faster)"
    )

    out = als.add_argument_group("outputs")
    out.add_argument("--top-n", type=_positive_int, default=10, help="recommendations per user (seen items left out)")
    out.add_argument("--similar-n", type=int, default=10, help="similar items per item; 0 skips similar_items")
    out.add_argument("--no-factors", action="store_true", help="do not write user_factors and item_factors")
    out.add_argument("--batch-users", type=_positive_int, default=100_000, help="users (or items) per output part")
    out.add_argument(
        "--eval-holdout",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this share of each user's items and report precision/MAP/NDCG@k against popularity",
    )
    out.add_argument("--eval-k", type=_positive_int, default=10, help="k of the evaluation metrics")
    out.add_argument(
        "--eval-users", type=_positive_int, default=50_000, help="evaluate on at most this many users (sampled)"
    )
    out.add_argument(
        "--progress-interval", type=float, default=5.0, metavar="SECONDS", help="seconds between progress lines"
    )
    out.add_argument(
        "--keep-runs",
        type=_non_negative_int,
        default=DEFAULT_KEEP_RUNS,
        metavar="N",
        help="after committing, delete committed runs/<id>/ folders older than the N newest; 0 keeps all",
    )
    als.set_defaults(handler=_run_als)

    script = commands.add_parser(
        "run-script",
        help="run your own Python script with input/ and output/ folders",
        description=(
            "Fetch --script and every object under --input into a fresh folder, run `python SCRIPT [ARGS...]` there "
            "with input/ and output/ beside it ($INPUT_DIR, $OUTPUT_DIR), then upload output/ and write manifest.json "
            "last. The script's exit code is the job's; a failed script publishes nothing."
        ),
        formatter_class=_DefaultsHelpFormatter,
        parents=[quiet, s3],
    )
    script.add_argument(
        "--script",
        default=None,
        metavar="URI",
        help="s3://bucket/path/script.py or a local .py file; with --code, a path inside the code",
    )
    _add_code_arguments(script)
    script.add_argument(
        "--module",
        default=None,
        metavar="PKG.MODULE",
        help="with --code: run `python -m PKG.MODULE` instead of a script",
    )
    script.add_argument("--input", default=None, metavar="URI", help="s3:// prefix or local folder copied into input/")
    script.add_argument("--output", required=True, metavar="URI", help="where output/ and manifest.json go")
    script.add_argument(
        "--sha256", default=None, help="refuse the script (or the --code bundle) unless its bytes have this digest"
    )
    script.add_argument(
        "--workdir", default=None, help="working folder (default: a fresh temporary folder, removed after)"
    )
    script.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temporary working folder, inputs included, even on failure",
    )
    script.add_argument(
        "--keep-runs",
        type=_non_negative_int,
        default=DEFAULT_KEEP_RUNS,
        metavar="N",
        help="after committing, delete committed runs/<id>/ folders older than the N newest; 0 keeps all",
    )
    script.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script, after --")
    script.set_defaults(handler=_run_script)

    function = commands.add_parser(
        "run-function",
        help="run a function shipped by @task.gpu_batch",
        description=(
            "Fetch the payload @task.gpu_batch staged, refuse it unless its sha256 and Python version match, run "
            "the function, and write result.json (or error.json with the traceback) under --result."
        ),
        parents=[quiet, s3],
    )
    function.add_argument("--payload", required=True, metavar="URI", help="the staged function document")
    function.add_argument("--sha256", required=True, help="the payload's digest, as the DAG computed it")
    function.add_argument("--result", required=True, metavar="URI", help="prefix for result.json or error.json")
    _add_code_arguments(function)
    function.add_argument(
        "--code-sha256", default=None, help="refuse the --code bundle unless its bytes have this digest"
    )
    function.set_defaults(handler=_run_function)
    return parser


def _add_code_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--code",
        default=None,
        metavar="URI",
        help="the project to run from: a staged bundle (.../code/SHA256.tar.gz), an s3:// prefix or a local "
        "folder; unpacked into the working folder, its root on PYTHONPATH",
    )
    parser.add_argument(
        "--requirements",
        default=None,
        metavar="PATH",
        help="with --code: the requirements file inside it to install first (default: its requirements.txt, if any)",
    )


# Whether `als` tunes unless told --no-tune: see benchmarks/README.md, "Tuning", for its cost and gain.
TUNE_BY_DEFAULT = True


def _run_als(args: argparse.Namespace) -> int:
    from .config import AlsConfig
    from .ingest import Columns
    from .matrix import DEFAULT_WEIGHTING
    from .pipeline import run_als
    from .train import TrainParams

    fixed = [
        flag
        for flag, value in (
            ("--weighting", args.weighting),
            ("--alpha", args.alpha),
            ("--regularization", args.regularization),
        )
        if value is not None
    ]
    if args.tune and fixed:
        logging.getLogger("airflow_gpu.worker").info("tune: skipped: %s given, and used as given", ", ".join(fixed))

    config = AlsConfig(
        input=args.input,
        output=args.output,
        format=args.format,
        columns=Columns(args.user_col, args.item_col, args.weight_col),
        endpoint_url=args.endpoint_url,
        concurrency=args.concurrency,
        drop_invalid=args.drop_invalid,
        weighting=args.weighting or DEFAULT_WEIGHTING,
        alpha=args.alpha,
        tune=args.tune and not fixed,
        tune_budget=args.tune_budget,
        train=TrainParams(
            factors=args.factors,
            iterations=args.iterations,
            regularization=args.regularization,
            seed=args.seed,
            device=args.device,
            solver=args.solver,
            threads=args.threads,
            loss=not args.no_loss,
            early_stop=args.early_stop,
            patience=args.patience,
        ),
        top_n=args.top_n,
        similar_n=args.similar_n,
        write_factors=not args.no_factors,
        eval_holdout=args.eval_holdout,
        eval_k=args.eval_k,
        eval_users=args.eval_users,
        batch_users=args.batch_users,
        threads=args.threads or None,
        progress_interval=args.progress_interval,
        keep_runs=args.keep_runs,
    )
    run_als(config)
    return 0


def _run_script(args: argparse.Namespace) -> int:
    from .script import run_script_async

    extra = args.args[1:] if args.args[:1] == ["--"] else args.args
    return asyncio.run(
        run_script_async(
            args.script,
            args.input,
            args.output,
            extra,
            endpoint_url=args.endpoint_url,
            concurrency=args.concurrency,
            workdir=args.workdir,
            sha256=args.sha256,
            keep_workdir=args.keep_workdir,
            keep_runs=args.keep_runs,
            code=args.code,
            module=args.module,
            requirements=args.requirements,
        )
    )


def _run_function(args: argparse.Namespace) -> int:
    from .function import run_function_async

    return asyncio.run(
        run_function_async(
            args.payload,
            args.sha256,
            args.result,
            endpoint_url=args.endpoint_url,
            code=args.code,
            code_sha256=args.code_sha256,
            requirements=args.requirements,
        )
    )


if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[TextIO]
else:  # StreamHandler takes a type argument at run time only from Python 3.11
    _StreamHandler = logging.StreamHandler


class _StderrHandler(_StreamHandler):
    """Writes to whatever sys.stderr is at the time, never to a stream that was replaced and closed."""

    _worker_cli: bool  # set on the handler _configure_logging installs

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _configure_logging(level: int) -> None:
    """Timestamped lines on stderr for the worker's own logger (replacing any set by an earlier call)."""
    logger = logging.getLogger("airflow_gpu.worker")
    for handler in list(logger.handlers):
        if getattr(handler, "_worker_cli", False):
            logger.removeHandler(handler)
    handler = _StderrHandler()
    handler._worker_cli = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logging.getLogger("implicit").setLevel(logging.WARNING)


def _missing_dependency(exc: ModuleNotFoundError) -> int:
    """An installation without the worker's dependencies (pip install without the ``worker`` extra)."""
    if not exc.name or exc.name.split(".")[0] == "airflow_gpu":
        raise exc
    print(
        f"{PROG}: error: this installation lacks {exc.name!r}, which the worker needs: install the package with its "
        "worker extra (`pip install -e '.[worker]'` in a checkout, or the image built from container/Dockerfile)",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    from .entrypoint import exec_command, plain_command

    command = plain_command(list(sys.argv[1:] if argv is None else argv))
    if command is not None:  # not a worker command: the job's own program (the Docker entrypoint convention)
        return exec_command(command, PROG)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except ModuleNotFoundError as exc:
        return _missing_dependency(exc)
    _configure_logging(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    warnings.filterwarnings("ignore", message=".*OpenBLAS is configured.*")
    from .profile import profiled

    try:
        with profiled():  # every command: its GPU/CPU profile, summed up in the log's last lines
            code: int = args.handler(args)
        return code
    except ModuleNotFoundError as exc:
        return _missing_dependency(exc)
    except WorkerError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except asyncio.CancelledError:
        # SIGTERM (how Batch stops a job) cancels the run; its uploads were removed.
        print(f"{PROG}: stopped by SIGTERM; nothing was published", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was published", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
