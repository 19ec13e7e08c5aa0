"""The native solver's first run on a GPU: the questions in the order they need answers, in at most 4 minutes.

1. ``kernels``: als.cu compiled by CuPy (NVRTC, as the worker does) at 64 factors; for each kernel
   the registers per thread, local memory per thread (spills land there), static shared memory
   and the largest block, as the driver reports them (RawKernel.attributes).
2. ``correctness``: about 1M synthetic interactions with 3 planted heavy users, bm25; the native
   solver against the numpy reference (2 iterations, once with a heavy threshold of 256 so that
   hundreds of rows are split, once with the default), within 5x implicit's own float32 vs
   float64 spread where implicit is installed, else within FIXED_TOLERANCE; the GPU transpose
   against scipy's entry for entry, the GPU bm25 against the host's.
3. ``seed``: 25M users x 8.4M items x 1e9 interactions (benchmarks/synthetic.py, generated on the
   GPU), raw counts in, bm25 and the automatic regularization on the GPU, 2 iterations: the GPU
   time of every kernel per side (CUDA events around every launch, the last iteration's), the
   Gram matrix and the rest of each half-step, the effective bandwidth per side (bytes below /
   half-step time), the GPU set-up steps, and peak GPU memory (NVML, device-wide).
4. ``bf16``: the bfloat16 factor storage (``--factor-dtype bfloat16``): its four *_bf16 kernels'
   registers and local memory as the driver reports them, then, on a quarter of step 2's data
   (heavy threshold 256), the bf16 solver against the reference's bf16 mode (step 2's tolerance plus
   one bfloat16 step, 2^-7) and its distance from the float32 solver. Its 1e9 speed, memory and
   quality come from ``gpu_solver.py``'s ``bf16`` step.

Effective bandwidth counts, per half-step, each CG pass (the residual and cg_steps steps) as
reading every interaction's index and confidence (8 B) and its other-side factor row
(4 x factors B), plus reading and writing the side's factors once. Gathered rows that hit in L2
count as if read from memory, so the figure can exceed the memory's bandwidth.

One process; the JSON is rewritten after every step (and after each iteration at 1e9), and a
watchdog ends the run at ``--budget`` seconds (the steps' caps are their planned shares of it),
so what was measured is there even if a step hangs.
Needs only CuPy, numpy, scipy, pyarrow and pynvml (the worker's image), no wheel of ours:

    python3 benchmarks/gpu_first_run.py --json $OUT/first_run.json
    python3 benchmarks/gpu_first_run.py --plan          # the steps and their caps, no GPU needed

Then ``benchmarks/gpu_solver.py`` (native at 1e9 first) for the comparison with implicit.
The last line is machine-readable: ``gpu_first_run: kernels=<ok|-> correctness=<PASS|FAIL|->
native_s_per_it_1e9=<s> setup_1e9_s=<s> gpu_peak_gib=<GiB> bf16=<PASS|FAIL|->``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SEED = {"users": 25_000_000, "items": 8_400_000, "nnz": 1_000_000_000}
QUICK = {"correctness": 5_000, "seed_share": 2e-6}
FULL = {"correctness": 1_000_000, "seed_share": 1.0}
# (step, cap in seconds), in the order of importance; the caps add up to the default budget
STEPS = [("kernels", 30), ("correctness", 50), ("seed", 130), ("bf16", 30)]
BUDGET = 240.0
GiB = 1 << 30


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Report:
    def __init__(self, path: Path, **fields) -> None:
        self.path, self.data = path, {"steps": {}, **fields}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(partial, self.path)


# -- step 1 ------------------------------------------------------------------------------


def step_kernels(args, figures: dict, report: Report) -> None:
    import cupy

    from airflow_gpu.worker.gpu.solver import NativeAls, kernels_for

    device = cupy.cuda.Device()
    figures["device"] = cupy.cuda.runtime.getDeviceProperties(device.id)["name"].decode()
    figures["compute_capability"] = device.compute_capability
    figures["opt_in_shared_per_block"] = int(device.attributes["MaxSharedMemoryPerBlockOptin"])
    model = NativeAls(factors=args.factors)
    started = time.perf_counter()
    kernels = model._kernels(cupy)
    figures["compile_s"] = round(time.perf_counter() - started, 3)
    figures["dynamic_shared_bytes"] = kernels["shared"]
    names = kernels_for(model.factor_dtype)  # float32's; step 4 reports the bf16 build's own
    for name in names:
        attributes = kernels[name].attributes
        figures[name] = {
            key: attributes.get(key)
            for key in ("num_regs", "local_size_bytes", "shared_size_bytes", "max_threads_per_block")
        }
        report.save()
    figures["spills"] = sorted(name for name in names if figures[name]["local_size_bytes"])


# -- step 2 ------------------------------------------------------------------------------


# Without implicit (not in the image) the bound cannot come from its float32-vs-float64 spread:
# then this fixed one. als.cu run on the CPU differs from the reference by at most 1.2e-2 at 64
# factors (tests/integration/test_gpu_native_emulated.py); a one-lane shuffle bug by 0.6.
FIXED_TOLERANCE = 0.05
ROUNDING = 5


def step_correctness(args, figures: dict, report: Report) -> None:
    import numpy as np
    from gpu_solver import (
        bm25_difference,
        implicit_cpu,
        initial,
        relative,
        transpose_matches,
    )

    from airflow_gpu.demo.synthetic import synthetic_interactions, with_heavy_users
    from airflow_gpu.worker.gpu import reference
    from airflow_gpu.worker.gpu.solver import NativeAls
    from airflow_gpu.worker.matrix import build_interactions, confidence

    table = with_heavy_users(synthetic_interactions(args.sizes["correctness"], seed=0, string_ids=False), seed=0)
    counts = build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix.tocsr()
    matrix = confidence(counts, "bm25")
    users, items = matrix.shape
    X0, Y0 = initial(users, items, args.factors)
    figures.update(
        users=users,
        items=items,
        nnz=int(matrix.nnz),
        longest_user_row=int(np.diff(matrix.indptr).max()),
        longest_item_row=int(np.diff(matrix.tocsc().indptr).max()),
    )
    iterations, regularization, passed = 2, 5.0, True
    for label, options in (("split", {"threshold": 256, "chunk": 64}), ("default", {})):
        model = NativeAls(factors=args.factors, regularization=regularization, iterations=iterations, **options)
        model.user_factors, model.item_factors = X0, Y0
        model.fit(matrix)
        figures[f"{label}_timings"] = {k: round(v, 4) for k, v in model.timings.items()}
        X, Y = reference.fit(matrix, X0, Y0, regularization, iterations, **options)
        figures[f"{label}_native_vs_reference"] = {
            "users": relative(model.user_factors, X),
            "items": relative(model.item_factors, Y),
        }
        report.save()
    figures["transpose_matches_scipy"] = transpose_matches(matrix, args.factors)
    figures["gpu_bm25_vs_host_max_relative"] = bm25_difference(counts, args.factors)
    report.save()
    try:
        X32, Y32 = implicit_cpu(matrix, X0, Y0, regularization, iterations)
        X64, Y64 = implicit_cpu(matrix, X0, Y0, regularization, iterations, np.float64)
        figures["implicit_f32_vs_f64"] = max(relative(X32, X64), relative(Y32, Y64))
        figures["tolerance"] = max(ROUNDING * figures["implicit_f32_vs_f64"], 1e-5)
    except ImportError:
        figures["tolerance"] = FIXED_TOLERANCE
        figures["tolerance_source"] = "fixed: implicit is not installed"
    for label in ("split", "default"):
        passed &= max(figures[f"{label}_native_vs_reference"].values()) <= figures["tolerance"]
    passed &= figures["transpose_matches_scipy"] and figures["gpu_bm25_vs_host_max_relative"] < 1e-4
    figures["pass"] = bool(passed)


# -- step 3 ------------------------------------------------------------------------------


class TimedKernel:
    """A RawKernel whose every launch is bracketed by CUDA events, filed under the model's phase."""

    def __init__(self, cupy, kernel, name: str, model) -> None:
        self.__dict__.update(_cupy=cupy, _kernel=kernel, _name=name, _model=model)

    def __getattr__(self, name):
        return getattr(self._kernel, name)

    def __setattr__(self, name, value):
        setattr(self._kernel, name, value)

    def __call__(self, grid, block, args, **options):
        start, end = self._cupy.cuda.Event(), self._cupy.cuda.Event()
        start.record()
        self._kernel(grid, block, args, **options)
        end.record()
        self._model.events.append((self._model.phase, self._name, start, end))


def timed_model(cupy, **options):
    from airflow_gpu.worker.gpu.solver import NativeAls, kernels_for

    class TimedNativeAls(NativeAls):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.events, self.phase, self.half_steps = [], "setup", 0

        def _kernels(self, cupy_):
            kernels = super()._kernels(cupy_)
            for name in kernels_for(self.factor_dtype):
                kernels[name] = TimedKernel(cupy_, kernels[name], name, self)
            return kernels

        def _half_step(self, cupy_, kernels, side, X, Y):
            self.phase = f"{self.half_steps // 2}:{'users' if self.half_steps % 2 == 0 else 'items'}"
            self.half_steps += 1
            start, end = cupy_.cuda.Event(), cupy_.cuda.Event()
            start.record()
            super()._half_step(cupy_, kernels, side, X, Y)
            end.record()
            self.events.append((self.phase, "half_step", start, end))

    return TimedNativeAls(**options)


def kernel_times(cupy, events, iteration: int) -> dict:
    """{side: {kernel: ms summed over its launches}} for one iteration, plus the Gram and glue."""
    cupy.cuda.Device().synchronize()
    out: dict = {}
    for phase, name, start, end in events:
        if not phase.startswith(f"{iteration}:"):
            continue
        side = out.setdefault(phase.split(":")[1], {})
        side[name] = side.get(name, 0.0) + cupy.cuda.get_elapsed_time(start, end)
    for side in out.values():
        kernels = sum(ms for name, ms in side.items() if name != "half_step")
        side["gram_and_glue"] = side["half_step"] - kernels  # Y'Y (cuBLAS), the eye, launch gaps
        for name in side:
            side[name] = round(side[name], 3)
    return out


def step_seed(args, figures: dict, report: Report) -> None:
    import cupy
    from gpu_als import GpuMemory
    from synthetic import seed_like_csr

    from airflow_gpu.worker.regularization import AUTO_REGULARIZATION_SHARE

    memory = GpuMemory()
    share = args.sizes["seed_share"]
    users, items, nnz = (max(10, round(SEED[k] * share)) for k in ("users", "items", "nnz"))
    started = time.perf_counter()
    made = seed_like_csr(users, items, nnz, device="gpu", seed=0)
    counts = made.matrix
    del made
    cupy.get_default_memory_pool().free_all_blocks()
    figures.update(
        users=users,
        items=items,
        nnz=int(counts.nnz),
        generate_s=round(time.perf_counter() - started, 2),
        gpu_after_generate_gib=round((memory.read() - (memory.baseline or 0)) / GiB, 3) if memory.read else None,
    )
    report.save()
    memory.start_stage()
    model = timed_model(
        cupy,
        factors=args.factors,
        regularization=None,
        iterations=args.iterations,
        random_state=0,
        regularization_share=AUTO_REGULARIZATION_SHARE,
    )
    iterations = figures.setdefault("iteration_seconds", [])

    def on_iteration(iteration: int, seconds: float, loss) -> None:
        iterations.append(round(seconds, 4))
        figures["kernels_ms"] = kernel_times(cupy, model.events, iteration)
        report.save()

    started = time.perf_counter()
    model.fit(counts, callback=on_iteration, weighting="bm25")
    figures["fit_s"] = round(time.perf_counter() - started, 3)
    figures["setup_timings_s"] = {k: round(v, 4) for k, v in model.timings.items()}
    figures["gpu_setup_s"] = round(sum(v for k, v in model.timings.items() if k != "compile_s"), 3)
    figures["regularization"] = model.regularization
    figures["s_per_iteration"] = iterations[-1]
    for side, rows in (("users", users), ("items", items)):
        half = figures["kernels_ms"].get(side, {}).get("half_step")
        passes = 1 + model.cg_steps
        moved = passes * counts.nnz * (8 + 4 * args.factors) + 2 * rows * 4 * args.factors
        figures[f"{side}_bytes_counted"] = moved
        figures[f"{side}_effective_gb_per_s"] = round(moved / (half / 1e3) / 1e9, 3) if half else None
    figures.update(memory.stage_figures())
    figures["gpu_peak_above_baseline_gib"] = (
        round((memory.peak - (memory.baseline or 0)) / GiB, 3) if memory.read else None
    )


# -- step 4 ------------------------------------------------------------------------------

BF16_SPACING = 2.0**-7  # the widest relative gap between neighbouring bfloat16 values


def step_bf16(args, figures: dict, report: Report) -> None:
    import cupy
    import numpy as np
    from gpu_solver import implicit_cpu, initial, relative

    from airflow_gpu.demo.synthetic import synthetic_interactions, with_heavy_users
    from airflow_gpu.worker.gpu import reference
    from airflow_gpu.worker.gpu.bfloat16 import round_float32
    from airflow_gpu.worker.gpu.solver import NativeAls, kernels_for
    from airflow_gpu.worker.matrix import build_interactions, confidence

    model = NativeAls(factors=args.factors, factor_dtype="bfloat16")
    started = time.perf_counter()
    kernels = model._kernels(cupy)
    figures["compile_s"] = round(time.perf_counter() - started, 3)
    names = [name for name in kernels_for("bfloat16") if name.endswith("_bf16")]
    for name in names:
        attributes = kernels[name].attributes
        figures[name] = {key: attributes.get(key) for key in ("num_regs", "local_size_bytes", "max_threads_per_block")}
    figures["spills"] = sorted(name for name in names if figures[name]["local_size_bytes"])
    report.save()

    size = max(args.sizes["correctness"] // 4, 1000)
    table = with_heavy_users(synthetic_interactions(size, seed=0, string_ids=False), seed=0)
    counts = build_interactions(table["user_id"], table["item_id"], table["plays"].to_numpy()).matrix.tocsr()
    matrix = confidence(counts, "bm25")
    X0, Y0 = initial(*matrix.shape, args.factors)
    iterations, regularization, options = 2, 5.0, {"threshold": 256, "chunk": 64}
    figures["nnz"] = int(matrix.nnz)
    fitted = {}
    for dtype in ("bfloat16", "float32"):
        model = NativeAls(
            factors=args.factors, regularization=regularization, iterations=iterations, factor_dtype=dtype, **options
        )
        model.user_factors, model.item_factors = X0, Y0
        model.fit(matrix)
        fitted[dtype] = (model.user_factors, model.item_factors)
    (X, Y), (Xf, Yf) = fitted["bfloat16"], fitted["float32"]
    Xr, Yr = reference.fit(matrix, X0, Y0, regularization, iterations, factor_dtype="bfloat16", **options)
    figures["bf16_vs_bf16_reference"] = {"users": relative(X, Xr), "items": relative(Y, Yr)}
    figures["bf16_vs_float32_native"] = {"users": relative(X, Xf), "items": relative(Y, Yf)}
    report.save()
    try:
        X32 = implicit_cpu(matrix, X0, Y0, regularization, iterations)[0]
        X64 = implicit_cpu(matrix, X0, Y0, regularization, iterations, np.float64)[0]
        figures["tolerance"] = max(ROUNDING * relative(X32, X64), 1e-5) + BF16_SPACING
    except ImportError:
        figures["tolerance"] = FIXED_TOLERANCE + BF16_SPACING
        figures["tolerance_source"] = "fixed: implicit is not installed"
    bf16_values = all(f.dtype == np.float32 and np.array_equal(f, round_float32(f)) for f in (X, Y))
    figures["pass"] = bool(
        bf16_values
        and max(figures["bf16_vs_bf16_reference"].values()) <= figures["tolerance"]
        and not figures["spills"]
    )


# -- the run -----------------------------------------------------------------------------

RUNNERS = {"kernels": step_kernels, "correctness": step_correctness, "seed": step_seed, "bf16": step_bf16}


def plan(args) -> dict:
    share = args.sizes["seed_share"]
    return {
        "budget_s": args.budget,
        "steps": [{"step": s, "cap_s": c} for s, c in STEPS],
        "caps_total_s": sum(c for _, c in STEPS),
        "factors": args.factors,
        "iterations": args.iterations,
        "correctness_interactions": args.sizes["correctness"],
        "seed": {k: max(10, round(v * share)) for k, v in SEED.items()},
    }


def summary_line(data: dict) -> str:
    steps = data["steps"]
    kernels = "ok" if steps.get("kernels", {}).get("status") == "ok" else "-"
    correct = steps.get("correctness", {}).get("figures", {})
    seed = steps.get("seed", {}).get("figures", {})
    bf16 = steps.get("bf16", {}).get("figures", {})

    def shown(value):
        return "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))

    return (
        f"gpu_first_run: kernels={kernels} correctness={('PASS' if correct.get('pass') else 'FAIL') if 'pass' in correct else '-'}"
        f" native_s_per_it_1e9={shown(seed.get('s_per_iteration'))} setup_1e9_s={shown(seed.get('gpu_setup_s'))}"
        f" gpu_peak_gib={shown(seed.get('gpu_peak_above_baseline_gib'))}"
        f" bf16={('PASS' if bf16.get('pass') else 'FAIL') if 'pass' in bf16 else '-'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--json", default="gpu_first_run.json", help="where the report goes (rewritten after each step)"
    )
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds for everything (default 240)")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=2, help="at 1e9; the last one's kernels are reported")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the plumbing only")
    parser.add_argument("--only", nargs="*", choices=[s for s, _ in STEPS])
    parser.add_argument("--plan", action="store_true", help="print the steps, caps and sizes as JSON; run nothing")
    args = parser.parse_args(argv)
    args.sizes = QUICK if args.quick else FULL
    if args.plan:
        print(json.dumps(plan(args), indent=2))
        return 0
    report = Report(Path(args.json), plan=plan(args))
    started = time.monotonic()

    def out_of_time() -> None:
        report.data["stopped"] = f"budget of {args.budget:.0f} s spent"
        report.save()
        print(summary_line(report.data), flush=True)
        os._exit(124)

    watchdog = threading.Timer(args.budget, out_of_time)
    watchdog.daemon = True
    watchdog.start()
    for step, cap in STEPS:
        if args.only and step not in args.only:
            continue
        left = args.budget - (time.monotonic() - started)
        entry = report.data["steps"][step] = {"status": "running", "cap_s": cap, "figures": {}}
        if left < 5:
            entry["status"] = "skipped: budget spent"
            continue
        say(f"[{step}] start (cap {cap} s, {left:.0f} s left)")
        began = time.perf_counter()
        try:
            RUNNERS[step](args, entry["figures"], report)
            entry["status"] = "ok"
        except BaseException as exc:  # noqa: BLE001 - record and go on: the next step may still answer
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}"
            entry["traceback"] = traceback.format_exc()[-3000:]
        entry["seconds"] = round(time.perf_counter() - began, 2)
        say(
            f"[{step}] {entry['status']} in {entry['seconds']:.0f} s"
            + (f": {entry['error']}" if "error" in entry else "")
        )
        report.save()
    watchdog.cancel()
    print(summary_line(report.data), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
