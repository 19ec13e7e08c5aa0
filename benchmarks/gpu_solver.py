"""The native GPU ALS solver (airflow_gpu/worker/gpu/) against implicit's, in one run of at most 5 minutes.

Steps, each a child process under its own timeout inside ``--budget`` (default 290 s, which
the steps' caps add up to), each writing its JSON as it goes, so a step that fails, crashes the
GPU context or runs out of time loses only itself. They run in the order of STEPS: the native
solver at 1e9 first (the figure nobody has), then correctness, the 20M pair, quality, and
bf16 factor storage last; implicit at 1e9 (already measured) only with ``--only implicit-1e9``. By number:

1. ``correctness``: ~1M interactions of the synthetic generator with 3 planted heavy users
   (airflow_gpu.demo.synthetic.with_heavy_users); the native solver against its numpy
   reference (same initial factors, 2 iterations), once with a low heavy-row threshold (256,
   chunks of 64: hundreds of split rows) and once with the default; implicit's own float32
   against float64 spread on the same data sets the tolerance (5x, as in the unit tests);
   the GPU transpose against scipy's, and the GPU's bm25 against matrix.confidence's.
2. ``native-20m``, ``implicit-20m``, ``native-1e9``, ``implicit-1e9``: seconds per iteration
   and setup, seed-shaped data (benchmarks/synthetic.py; 25M x 8.4M x 1e9 scaled together),
   64 factors. implicit through the worker's train.fit, on log weighting done on the host (one
   numpy pass: bm25 there takes ~25 s at 1e9, and the values do not change the work); native
   on the raw counts with bm25 weighting on the GPU, so its setup covers upload, weighting,
   transpose and row plans. implicit at 1e9, on request, runs 2 iterations (about 23 s each,
   measured 2026-11-28).
3. ``quality``: precision@10 for both solvers on the smoke split (benchmarks/gpu_smoke.py's:
   2M synthetic interactions, seed 11, 20% held out with seed 5, bm25, 64 factors, 15
   iterations, auto regularization), through the worker's own split/weighting/fit/evaluate.
4. ``bf16``: the native solver with ``--factor-dtype bfloat16`` (factors stored as bfloat16 on the GPU,
   float32 arithmetic): first its precision@10 on the smoke split (against the native float32 figure of
   step 3: the target is within 1%), then seconds per iteration, setup and peak GPU memory at 1e9
   (``--iterations-bf16`` timed iterations), as in step 2.

``--cpu`` runs the same plumbing without a GPU (implicit on the CPU; the numpy reference in
the native solver's place), for the tests; its figures mean nothing about GPUs.

    python3 benchmarks/gpu_solver.py --json $OUT/gpu_solver.json          # on the GPU machine
    .venv/bin/python benchmarks/gpu_solver.py --cpu --quick --json /tmp/s.json

The last line is machine-readable:
``gpu_solver: correctness=<PASS|FAIL|-> native_s_per_it_1e9=<s> implicit_s_per_it_1e9=<s> speedup_1e9=<x>
native_setup_1e9_s=<s> p10_native=<x> p10_implicit=<x> p10_ratio=<x> native_bf16_s_per_it_1e9=<s>
p10_bf16_over_f32=<x>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_als import GpuMemory, Record, machine, measure_in_child, peak_rss, say  # noqa: E402

SEED_USERS, SEED_ITEMS, SEED_NNZ = 25_000_000, 8_400_000, 1_000_000_000
GiB = 1 << 30
ROUNDING = 5  # as tests/unit/test_gpu_native_reference.py: 5x implicit's float32-to-float64 spread
# (step, cap in seconds): the order is the order of importance, and the caps add up to the
# default budget (290 s). The native figure at 1e9 is the one nobody has yet, so it goes first;
# implicit's at 1e9 is known (22.7-23.4 s per iteration on an H200, 2026-11-28), so it runs only
# when named with --only. bf16 factor storage comes last, its 35 s taken from the others' caps.
STEPS = [
    ("native-1e9", 90),
    ("correctness", 45),
    ("native-20m", 25),
    ("implicit-20m", 35),
    ("quality", 60),
    ("bf16", 35),
]
ON_REQUEST = [("implicit-1e9", 110)]
QUICK = {"correctness": 20_000, "20m": 100_000, "1e9": 200_000, "quality": 40_000}
FULL = {"correctness": 1_000_000, "20m": 20_000_000, "1e9": SEED_NNZ, "quality": 2_000_000}
TARGETS = {
    "s_per_iteration_1e9": 1.0,
    "speedup_1e9": 20.0,
    "setup_1e9_s": 10.0,
    "fifteen_iterations_1e9_s": 30.0,
    "p10_within": 0.01,
    "p10_bf16_within": 0.01,
}


# ---------------------------------------------------------------------------------------
# The child: one step
# ---------------------------------------------------------------------------------------


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def initial(shape_users: int, shape_items: int, factors: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return (
        rng.random((shape_users, factors), dtype=np.float32) * 0.01,
        rng.random((shape_items, factors), dtype=np.float32) * 0.01,
    )


def implicit_cpu(matrix, X0, Y0, regularization, iterations, dtype=np.float32):
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=X0.shape[1],
            regularization=regularization,
            iterations=iterations,
            use_cg=True,
            dtype=dtype,
            calculate_training_loss=False,
            random_state=0,
        )
        model.cg_steps = 3
        model.user_factors, model.item_factors = X0.astype(dtype), Y0.astype(dtype)
        model.fit(matrix.astype(dtype), show_progress=False)
    return model.user_factors, model.item_factors


def step_correctness(args, record: Record) -> dict:
    from airflow_gpu.demo.synthetic import synthetic_interactions, with_heavy_users
    from airflow_gpu.worker.gpu import reference
    from airflow_gpu.worker.matrix import build_interactions, confidence

    table = with_heavy_users(synthetic_interactions(args.sizes["correctness"], seed=0, string_ids=False), seed=0)
    matrix = confidence(
        build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix.tocsr(), "bm25"
    )
    users, items = matrix.shape
    X0, Y0 = initial(users, items, args.factors)
    figures = {
        "users": users,
        "items": items,
        "nnz": int(matrix.nnz),
        "longest_user_row": int(np.diff(matrix.indptr).max()),
        "longest_item_row": int(np.diff(matrix.tocsc().indptr).max()),
    }
    iterations, regularization = 2, 5.0
    X32, Y32 = implicit_cpu(matrix, X0, Y0, regularization, iterations)
    X64, Y64 = implicit_cpu(matrix, X0, Y0, regularization, iterations, np.float64)
    spread = max(relative(X32, X64), relative(Y32, Y64))
    figures["implicit_f32_vs_f64"] = spread
    tolerance = max(ROUNDING * spread, 1e-5)
    figures["tolerance"] = tolerance
    record.data["stages"]["correctness"] = figures
    record.save()
    passed = True
    for label, threshold, chunk in (("split", 256, 64), ("default", None, None)):
        kwargs = {} if threshold is None else {"threshold": threshold, "chunk": chunk}
        X, Y = reference.fit(matrix, X0, Y0, regularization, iterations, **kwargs)
        if args.cpu:
            other, name = (X32, Y32), "implicit_cpu"
        else:
            from airflow_gpu.worker.gpu.solver import NativeAls

            model = NativeAls(factors=args.factors, regularization=regularization, iterations=iterations, **kwargs)
            model.user_factors, model.item_factors = X0, Y0
            model.fit(matrix)
            other, name = (model.user_factors, model.item_factors), "native"
            figures[f"{label}_timings"] = model.timings
        diffs = {"users": relative(other[0], X), "items": relative(other[1], Y)}
        figures[f"{label}_{name}_vs_reference"] = diffs
        figures[f"{label}_reference_vs_implicit_cpu"] = {"users": relative(X, X32), "items": relative(Y, Y32)}
        passed &= max(diffs.values()) <= tolerance
        record.save()
    if not args.cpu:
        figures["transpose_matches_scipy"] = transpose_matches(matrix, args.factors)
        figures["gpu_bm25_vs_host_max_relative"] = bm25_difference(matrix, args.factors)
        passed &= figures["transpose_matches_scipy"] and figures["gpu_bm25_vs_host_max_relative"] < 1e-4
    figures["pass"] = bool(passed)
    return figures


def transpose_matches(matrix, factors: int) -> bool:
    """The GPU's item x user CSR holds exactly scipy's entries (in any order within a row)."""
    import cupy

    from airflow_gpu.worker.gpu.solver import NativeAls

    model = NativeAls(factors=factors)
    side = model._upload(cupy, matrix)
    transposed = model._transpose(cupy, model._kernels(cupy), side, matrix.shape[1])
    indptr, indices, data = (cupy.asnumpy(transposed[k]) for k in ("indptr", "indices", "data"))
    expected = matrix.T.tocsr()
    expected.sort_indices()
    if not np.array_equal(indptr, expected.indptr):
        return False
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    order = np.lexsort((indices, rows))
    return bool(np.array_equal(indices[order], expected.indices) and np.array_equal(data[order], expected.data))


def bm25_difference(counts, factors: int) -> float:
    """The largest relative difference between the GPU's bm25 confidences and matrix.confidence's."""
    import cupy

    from airflow_gpu.worker.gpu.solver import NativeAls
    from airflow_gpu.worker.matrix import confidence

    model = NativeAls(factors=factors)
    side = model._upload(cupy, counts)
    model._weigh(cupy, model._kernels(cupy), side, counts.shape[1], "bm25", None)
    expected = confidence(counts, "bm25").data
    return float(np.max(np.abs(cupy.asnumpy(side["data"]) - expected) / expected))


def step_speed(args, record: Record, solver: str, size: str, factor_dtype: str = "float32") -> dict:
    from synthetic import seed_like_csr

    from airflow_gpu.worker.matrix import confidence
    from airflow_gpu.worker.train import TrainParams, fit

    nnz = args.sizes[size]
    share = nnz / SEED_NNZ
    users, items = max(10, round(SEED_USERS * share)), max(10, round(SEED_ITEMS * share))
    figures = record.data["stages"].setdefault("speed", {})
    started = time.perf_counter()
    made = seed_like_csr(users, items, nnz, device="cpu" if args.cpu else "gpu", seed=0)
    figures.update(
        generate_s=round(time.perf_counter() - started, 2), users=users, items=items, nnz=int(made.matrix.nnz)
    )
    if not args.cpu:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    iterations = args.iterations_implicit_1e9 if (solver == "implicit" and size == "1e9") else args.iterations
    if factor_dtype == "bfloat16":
        iterations = args.iterations_bf16
        figures["factor_dtype"] = factor_dtype

    def on_iteration(iteration: int, seconds: float, loss) -> None:
        figures.setdefault("iteration_seconds", []).append(round(seconds, 4))
        record.save()

    if solver == "native" and not args.cpu:
        # The native solver weighs on the GPU (bm25, the worker's default): the raw counts go in, so
        # its setup figure covers upload, weighting and transpose, as the target does.
        from airflow_gpu.worker.gpu.solver import NativeAls

        model = NativeAls(
            factors=args.factors, regularization=1.0, iterations=iterations, random_state=0, factor_dtype=factor_dtype
        )
        started = time.perf_counter()
        model.fit(made.matrix, callback=on_iteration, weighting="bm25")
        fit_s = time.perf_counter() - started
        timings = {k: round(v, 4) for k, v in model.timings.items()}
        figures.update(
            solver="native",
            weighting="bm25 on the GPU",
            fit_s=round(fit_s, 3),
            setup_s=round(fit_s - sum(figures.get("iteration_seconds", [])), 3),
            native_timings=timings,
            gpu_setup_s=round(timings.get("weighting_s", 0) + timings.get("setup_s", 0), 4),
        )
        return figures
    started = time.perf_counter()
    weighted = confidence(made.matrix, "log")
    del made
    figures.update(weighting="log on the host", weighting_s=round(time.perf_counter() - started, 2))
    record.save()

    if args.cpu and solver == "native":  # the reference in the native solver's place: plumbing only
        from airflow_gpu.worker.gpu import reference
        from airflow_gpu.worker.gpu.bfloat16 import round_float32

        started = time.perf_counter()
        X, Y = initial(*weighted.shape, args.factors)
        if factor_dtype == "bfloat16":
            X, Y = round_float32(X), round_float32(Y)
        Ciu = weighted.T.tocsr()
        figures["setup_s"] = round(time.perf_counter() - started, 3)
        for n in range(iterations):
            began = time.perf_counter()
            X = reference.half_step(weighted, X, Y, 1.0, factor_dtype=factor_dtype)
            Y = reference.half_step(Ciu, Y, X, 1.0, factor_dtype=factor_dtype)
            on_iteration(n, time.perf_counter() - began, None)
        figures["solver"] = "reference"
        return figures
    params = TrainParams(
        factors=args.factors,
        iterations=iterations,
        regularization=1.0,
        seed=0,
        device="cpu" if args.cpu else "gpu",
        solver=solver,
        loss=False,
        on_iteration=on_iteration,
    )
    result = fit(weighted, params)
    figures.update(
        solver=solver,
        device=result.device,
        fit_s=round(result.seconds, 3),
        # fit's wall time outside the iterations: implicit's host transpose, copies and init
        setup_s=round(result.seconds - sum(result.iteration_seconds), 3),
    )
    return figures


# The quality step's fits by name: (solver, factor storage).
VARIANTS = {"implicit": ("implicit", "float32"), "native": ("native", "float32"), "native-bf16": ("native", "bfloat16")}


def step_quality(args, record: Record, variants: tuple[str, ...] = ("implicit", "native")) -> dict:
    from airflow_gpu.demo.synthetic import synthetic_interactions
    from airflow_gpu.worker.evaluate import evaluate, holdout_split
    from airflow_gpu.worker.matrix import build_interactions, confidence
    from airflow_gpu.worker.regularization import auto_regularization
    from airflow_gpu.worker.train import TrainParams, fit

    table = synthetic_interactions(args.sizes["quality"], seed=11)
    matrix = build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix
    seed = 5
    train, test = holdout_split(matrix, 0.2, seed)
    weighted = confidence(train, "bm25")
    figures = record.data["stages"].setdefault("quality", {"nnz": int(matrix.nnz)})
    for variant in variants:
        solver, factor_dtype = VARIANTS[variant]
        started = time.perf_counter()
        if args.cpu and solver == "native":
            from types import SimpleNamespace

            from airflow_gpu.worker.gpu import reference

            regularization, _ = auto_regularization(weighted, seed)
            X, Y = reference.fit(
                weighted,
                *initial(*weighted.shape, args.factors, seed),
                regularization,
                args.quality_iterations,
                factor_dtype=factor_dtype,
            )
            model = SimpleNamespace(user_factors=X, item_factors=Y)
        else:
            result = fit(
                weighted,
                TrainParams(
                    factors=args.factors,
                    iterations=args.quality_iterations,
                    seed=seed,
                    device="cpu" if args.cpu else "gpu",
                    solver=solver,
                    factor_dtype=factor_dtype,
                    loss=False,
                ),
            )
            model = result.model
        scores = evaluate(model, train, test, k=10, max_users=50_000, seed=seed)
        figures[variant] = {
            "p10": scores["als"]["precision_at_10"],
            "ndcg10": scores["als"]["ndcg_at_10"],
            "popularity_p10": scores["popularity"]["precision_at_10"],
            "seconds": round(time.perf_counter() - started, 2),
        }
        record.save()
    if "native" in figures and "implicit" in figures:
        p_native, p_implicit = figures["native"]["p10"], figures["implicit"]["p10"]
        figures["p10_ratio"] = round(p_native / p_implicit, 4) if p_implicit else None
    return figures


def run_child(args) -> int:
    if args.stop_at:  # should the parent die without stopping us, we still stop on time
        stopper = threading.Timer(max(args.stop_at - time.time(), 0), lambda: os._exit(124))
        stopper.daemon = True
        stopper.start()
    logging.basicConfig(level=logging.WARNING)
    record = Record(Path(args.out), step=args.step)
    gpu = None if args.cpu else GpuMemory()
    started = time.perf_counter()
    try:
        if args.step == "correctness":
            record.data["stages"]["correctness"] = step_correctness(args, record)
        elif args.step == "quality":
            step_quality(args, record)
        elif args.step == "bf16":  # quality first (the condition for offering it), then speed and memory
            step_quality(args, record, variants=("native-bf16",))
            step_speed(args, record, "native", "1e9", factor_dtype="bfloat16")
        else:
            solver, size = args.step.split("-")
            step_speed(args, record, solver, size)
        record.data["status"] = "ok"
        code = 0
    except BaseException as exc:  # noqa: BLE001 - report, keep the figures so far
        record.data["status"] = "failed"
        record.data["errors"][args.step] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}"
        record.data["errors"]["traceback"] = traceback.format_exc()[-3000:]
        code = 1
    record.data["seconds"] = round(time.perf_counter() - started, 2)
    record.data["host_peak_rss_gib"] = round(peak_rss() / GiB, 3)
    if gpu is not None and gpu.read:
        record.data["gpu_peak_gib"] = round(gpu.peak / GiB, 3)
    record.save()
    return code


# ---------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------


def spawn(args, step: str, timeout: float, out: Path) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--step",
        step,
        "--out",
        str(out),
        "--factors",
        str(args.factors),
        "--iterations",
        str(args.iterations),
        "--iterations-implicit-1e9",
        str(args.iterations_implicit_1e9),
        "--iterations-bf16",
        str(args.iterations_bf16),
        "--quality-iterations",
        str(args.quality_iterations),
        "--stop-at",
        str(time.time() + timeout + 5),
        *(["--cpu"] if args.cpu else []),
        *(["--quick"] if args.quick else []),
    ]
    say(f"[{step}] start; timeout {timeout:.0f} s")
    result = measure_in_child(command, out, timeout)
    say(
        f"[{step}] {result['status']} in {result['wall_seconds']:.0f} s"
        + (f": {result['errors'].get(step)}" if result.get("errors", {}).get(step) else "")
    )
    return result


def mean(values) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(steps: dict) -> dict:
    def speed(step):
        return steps.get(step, {}).get("stages", {}).get("speed", {})

    out: dict = {}
    correctness = steps.get("correctness", {}).get("stages", {}).get("correctness", {})
    out["correctness"] = ("PASS" if correctness.get("pass") else "FAIL") if "pass" in correctness else "-"
    for size in ("20m", "1e9"):
        native, theirs = speed(f"native-{size}"), speed(f"implicit-{size}")
        n, i = mean(native.get("iteration_seconds")), mean(theirs.get("iteration_seconds"))
        out[f"native_s_per_it_{size}"] = n
        out[f"implicit_s_per_it_{size}"] = i
        out[f"speedup_{size}"] = i / n if n and i else None
        out[f"native_setup_{size}_s"] = native.get("gpu_setup_s", native.get("setup_s"))
        out[f"implicit_setup_{size}_s"] = theirs.get("setup_s")
    quality = steps.get("quality", {}).get("stages", {}).get("quality", {})
    out["p10_native"] = quality.get("native", {}).get("p10")
    out["p10_implicit"] = quality.get("implicit", {}).get("p10")
    out["p10_ratio"] = quality.get("p10_ratio")
    bf16 = steps.get("bf16", {})
    out["native_bf16_s_per_it_1e9"] = mean(bf16.get("stages", {}).get("speed", {}).get("iteration_seconds"))
    out["native_bf16_setup_1e9_s"] = bf16.get("stages", {}).get("speed", {}).get("gpu_setup_s")
    out["native_bf16_gpu_peak_gib"] = bf16.get("gpu_peak_gib")
    out["native_f32_gpu_peak_gib"] = steps.get("native-1e9", {}).get("gpu_peak_gib")
    p_bf16 = bf16.get("stages", {}).get("quality", {}).get("native-bf16", {}).get("p10")
    out["p10_native_bf16"] = p_bf16
    out["p10_bf16_over_f32"] = round(p_bf16 / out["p10_native"], 4) if p_bf16 and out["p10_native"] else None
    n = out["native_s_per_it_1e9"]
    out["targets"] = {
        "s_per_iteration_1e9 <= 1": None if n is None else n <= TARGETS["s_per_iteration_1e9"],
        "speedup_1e9 >= 20": None if out["speedup_1e9"] is None else out["speedup_1e9"] >= TARGETS["speedup_1e9"],
        "setup_1e9 <= 10 s": None
        if out["native_setup_1e9_s"] is None
        else out["native_setup_1e9_s"] <= TARGETS["setup_1e9_s"],
        "15 iterations 1e9 <= 30 s": None if n is None else 15 * n <= TARGETS["fifteen_iterations_1e9_s"],
        "p10 within 1%": None if out["p10_ratio"] is None else abs(out["p10_ratio"] - 1) <= TARGETS["p10_within"],
        "p10 bf16 within 1% of fp32": None
        if out["p10_bf16_over_f32"] is None
        else abs(out["p10_bf16_over_f32"] - 1) <= TARGETS["p10_bf16_within"],
    }
    return out


def shown(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_parent(args) -> int:
    target = Path(args.json)
    target.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    report = {
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if k != "sizes"},
        "sizes": args.sizes,
        "targets": TARGETS,
        "steps": {},
    }
    say(f"gpu_solver: budget {args.budget:.0f} s; sizes {args.sizes}")
    for step, cap in STEPS + ON_REQUEST:
        if (args.only and step not in args.only) or (not args.only and (step, cap) in ON_REQUEST):
            continue
        left = deadline - time.monotonic()
        if left < 10:
            report["steps"][step] = {"status": "skipped: budget spent"}
            continue
        # each step's file sits beside the report, so it comes back even if this command is killed
        report["steps"][step] = spawn(args, step, min(cap, left), target.with_name(f"{target.stem}-{step}.json"))
        report["summary"] = summarize(report["steps"])
        target.write_text(json.dumps(report, indent=2))
    summary = report["summary"] = summarize(report["steps"])
    target.write_text(json.dumps(report, indent=2))
    for name, met in summary["targets"].items():
        say(f"target {name}: {'-' if met is None else ('met' if met else 'NOT met')}")
    fields = (
        "correctness",
        "native_s_per_it_1e9",
        "implicit_s_per_it_1e9",
        "speedup_1e9",
        "native_setup_1e9_s",
        "p10_native",
        "p10_implicit",
        "p10_ratio",
        "native_bf16_s_per_it_1e9",
        "p10_bf16_over_f32",
    )
    print("gpu_solver: " + " ".join(f"{name}={shown(summary[name])}" for name in fields), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="gpu_solver.json", help="where the whole report goes")
    parser.add_argument("--budget", type=float, default=290.0, help="seconds for all the steps together")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per speed step")
    parser.add_argument("--iterations-implicit-1e9", type=int, default=2, help="implicit at 1e9: ~23 s each")
    parser.add_argument("--quality-iterations", type=int, default=15)
    parser.add_argument("--iterations-bf16", type=int, default=3, help="timed iterations of the bf16 step at 1e9")
    parser.add_argument(
        "--cpu", action="store_true", help="no GPU: implicit on the CPU, the numpy reference for native"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the plumbing only)")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=[s for s, _ in STEPS + ON_REQUEST],
        help="run only these steps (implicit-1e9 runs only when named here)",
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--stop-at", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = QUICK if args.quick else FULL
    return run_child(args) if args.step else run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
