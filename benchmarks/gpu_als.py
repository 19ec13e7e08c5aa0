"""ALS at the seed's scale on a GPU, and the same pipeline on the CPU for the ratio.

One command, built to finish inside a fixed budget (default 540 s) on a machine we get
for minutes at a time. Three runs, each a child process under its own timeout:

1. ``same-size``: the device at the CPU run's size (short; proves the device path end to
   end before the big run, and gives a like-for-like ratio);
2. ``main`` (``--device``, the GPU by default): seed-like data made straight into CSR form
   (benchmarks/synthetic.py; 25M users x 8.4M items x 1e9 interactions by default),
   confidence weighting, ALS (64 factors, 15 iterations) and the top 10 for a sample of
   users, each stage through the worker's own modules (matrix.confidence, train.fit,
   recommend.top_n), so the GPU path of the product is what is timed, int32 guards and all;
3. ``cpu``: the same pipeline on the CPU (all cores) at a smaller size with the same shape
   (users, items and interactions scaled together, so interactions per user and per item
   stay the same).

Each child writes its JSON after every stage and every ALS iteration, so a stage that
fails or runs out of time loses only itself: the figures of the stages before it, and
of the other runs, are kept and reported. ``--json`` gets every figure.

    python3 benchmarks/gpu_als.py --json /tmp/gpu_als.json          # on the GPU machine
    .venv/bin/python benchmarks/gpu_als.py --device cpu --quick     # a smoke run anywhere

Ratios are CPU over device, per interaction-iteration: seconds per ALS iteration divided
by the interactions. ALS work per iteration is mostly per interaction (implicit's
conjugate-gradient solver visits each one 4 times per side per iteration) plus a smaller
per-row term, and the runs keep interactions per row equal, so the figure compares like
with like; the same-size ratio needs no such argument.

The last line is machine-readable:
``gpu_als: device=<d> nnz=<n> train_s=<s> s_per_iteration=<s> cpu_over_gpu_same_size=<r> cpu_over_gpu_per_nnz_iteration=<r>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import seed_like_csr  # noqa: E402

SEED_USERS, SEED_ITEMS, SEED_INTERACTIONS = 25_000_000, 8_400_000, 1_000_000_000
GiB = 1 << 30
log = logging.getLogger("gpu_als")


# ---------------------------------------------------------------------------------------
# Estimates, printed before anything runs
# ---------------------------------------------------------------------------------------


def estimate(users: int, items: int, nnz: int, factors: int) -> dict:
    """Bytes each big array takes, from the shapes alone (float32 values, int32 indices)."""
    csr = nnz * 8 + (users + 1) * 4
    csc = nnz * 8 + (items + 1) * 4
    return {
        "host_csr_gib": csr / GiB,
        # CSR, its confidence values, implicit's transposed copy, and bm25's temporaries (~4 arrays of nnz floats).
        "host_peak_gib": (csr + nnz * 4 + csc + 4 * nnz * 4) / GiB,
        # implicit's GPU fit: both CSR copies (managed memory), user and item factors,
        # plus recommend's temporary buffer (implicit caps it at 4 GiB).
        "gpu_gib": (csr + csc + (users + items) * factors * 4 + 4 * GiB) / GiB,
        "user_factors_gib": users * factors * 4 / GiB,
        "item_factors_gib": items * factors * 4 / GiB,
    }


# ---------------------------------------------------------------------------------------
# The child: one run, stage by stage
# ---------------------------------------------------------------------------------------


class Record:
    """The run's figures, rewritten to disk after each stage and iteration (atomically)."""

    def __init__(self, path: Path, **fields) -> None:
        self.path = path
        self.data = {"status": "running", "stages": {}, "errors": {}, **fields}
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_plain))
        os.replace(tmp, self.path)


def _plain(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class GpuMemory:
    """Device-wide memory in use, sampled every 50 ms by NVML (or CUDA), with peaks per stage.

    Device-wide, because implicit allocates in three ways (RMM buffers for the factors, CUDA
    managed memory for the CSR copies, its own pool for top-k) and one number should hold them all.
    """

    def __init__(self) -> None:
        self.read = self._reader()
        self.baseline = self.read() if self.read else None
        self.peak = self.stage_peak = self.baseline or 0
        self._stop = threading.Event()
        if self.read:
            threading.Thread(target=self._loop, daemon=True, name="gpu-memory").start()

    @staticmethod
    def _reader():
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception:  # noqa: BLE001 - fall back to the CUDA runtime
            pass
        try:
            import cupy

            def used() -> int:
                free, total = cupy.cuda.runtime.memGetInfo()
                return int(total - free)

            used()
            return used
        except Exception:  # noqa: BLE001 - no way to read GPU memory: report none
            return None

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                used = self.read()
            except Exception:  # noqa: BLE001
                return
            self.peak = max(self.peak, used)
            self.stage_peak = max(self.stage_peak, used)

    def start_stage(self) -> None:
        if self.read:
            self.stage_peak = self.read()

    def stage_figures(self) -> dict:
        if not self.read:
            return {}
        now = self.read()
        self.stage_peak = max(self.stage_peak, now)
        self.peak = max(self.peak, self.stage_peak)
        return {"gpu_peak_gib": round(self.stage_peak / GiB, 3), "gpu_after_gib": round(now / GiB, 3)}


def iteration_recorder(record: Record):
    """train.fit's on_iteration: each finished iteration goes into the record as it happens,
    so a run stopped mid-training still reports the iterations it finished."""

    def on_iteration(iteration: int, seconds: float, loss: float | None) -> None:
        train = record.data["stages"].setdefault("train", {})
        train.setdefault("iteration_seconds", []).append(round(seconds, 4))
        train.setdefault("loss", []).append(loss)
        try:
            record.save()
        except OSError:
            pass

    return on_iteration


def run_child(args) -> int:
    if args.stop_at:
        # Belt and braces: should the parent die without stopping us, we still stop on time.
        stopper = threading.Timer(max(args.stop_at - time.time(), 0), lambda: os._exit(124))
        stopper.daemon = True
        stopper.start()
    from airflow_gpu.worker.matrix import DEFAULT_WEIGHTING, confidence
    from airflow_gpu.worker.recommend import top_n
    from airflow_gpu.worker.train import TrainParams, fit

    record = Record(
        Path(args.out),
        role=args.label,
        device=args.device,
        params={
            k: getattr(args, k)
            for k in ("users", "items", "interactions", "factors", "iterations", "recommend_users", "seed", "loss")
        },
        machine=machine(),
    )
    gpu = GpuMemory() if args.device == "gpu" else None
    if gpu and gpu.baseline is not None:
        record.data["gpu_baseline_gib"] = round(gpu.baseline / GiB, 3)
    state: dict = {}

    def stage(name: str, body) -> bool:
        say(f"[{args.label}] {name}: start")
        if gpu:
            gpu.start_stage()
        started = time.perf_counter()
        figures = record.data["stages"].setdefault(name, {})
        try:
            figures.update(body() or {})
            ok = True
        except BaseException as exc:  # noqa: BLE001 - report and stop this run, keep the figures so far
            record.data["errors"][name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
            record.data["errors"][name + "_traceback"] = traceback.format_exc()[-3000:]
            ok = False
        figures["seconds"] = round(time.perf_counter() - started, 3)
        figures["host_peak_rss_gib"] = round(peak_rss() / GiB, 3)
        if gpu:
            figures.update(gpu.stage_figures())
        record.save()
        say(
            f"[{args.label}] {name}: {'done' if ok else 'FAILED'} in {figures['seconds']:.1f} s "
            + (f"(GPU peak {figures['gpu_peak_gib']:.1f} GiB) " if "gpu_peak_gib" in figures else "")
            + ("" if ok else record.data["errors"][name])
        )
        return ok

    def generate():
        device = args.generator if args.generator != "auto" else args.device
        try:
            made = seed_like_csr(
                args.users, args.items, args.interactions, device=device, seed=args.seed, progress=_progress(args.label)
            )
        except Exception as exc:  # noqa: BLE001 - cupy missing or broken: numpy on all cores still works
            if device != "gpu":
                raise
            say(f"[{args.label}] generate: the GPU generator failed ({type(exc).__name__}: {exc}); using the CPU")
            made = seed_like_csr(
                args.users, args.items, args.interactions, device="cpu", seed=args.seed, progress=_progress(args.label)
            )
        state["matrix"] = made.matrix
        m = made.matrix
        return {
            "generator": made.device,
            "users": m.shape[0],
            "items": m.shape[1],
            "nnz": int(m.nnz),
            "raw_events": made.raw_events,
            "interactions_per_user": round(m.nnz / m.shape[0], 2),
        }

    def weighting():
        state["weighted"] = confidence(state["matrix"])
        return {"weighting": DEFAULT_WEIGHTING}

    def train():
        # Every iteration asked for runs (no early stop): the figure is seconds per iteration.
        params = TrainParams(
            factors=args.factors,
            iterations=args.iterations,
            seed=args.seed,
            device=args.device,
            loss=args.loss,
            early_stop=0,
            on_iteration=iteration_recorder(record),
        )
        result = fit(state.pop("weighted"), params)
        state["model"] = result.model
        iterations = [round(s, 4) for s in result.iteration_seconds]
        figures = {
            "device": result.device,
            "fit_seconds": round(result.seconds, 3),
            "iteration_seconds": iterations,
            # fit wall time outside the iterations: implicit's host-side transpose, copies to the device, init
            "setup_seconds": round(result.seconds - sum(result.iteration_seconds), 3),
            "loss": result.loss,
        }
        return figures

    def recommend():
        matrix = state["matrix"]
        rng = np.random.default_rng(args.seed + 11)
        active = np.flatnonzero(np.diff(matrix.indptr) > 0)
        users = np.sort(rng.choice(active, size=min(args.recommend_users, len(active)), replace=False)).astype(np.int32)
        filled = 0
        started = time.perf_counter()
        for start in range(0, len(users), args.batch_users):
            ids, _ = top_n(state["model"], matrix, users[start : start + args.batch_users], 10)
            filled += int((ids >= 0).sum())
        seconds = time.perf_counter() - started
        return {
            "users": len(users),
            "items": matrix.shape[1],
            "recommendations": filled,
            "users_per_second": round(len(users) / seconds, 1),
            "all_users_estimate_seconds": round(matrix.shape[0] / (len(users) / seconds), 1),
        }

    ok = stage("generate", generate) and stage("weighting", weighting) and stage("train", train)
    ok = ok and stage("recommend", recommend)
    if gpu and gpu.read:
        record.data["gpu_peak_gib"] = round(gpu.peak / GiB, 3)
    record.data["status"] = "ok" if ok else "failed"
    record.save()
    return 0 if ok else 1


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _progress(label: str):
    last = [0.0]

    def report(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 5 or done == total:
            last[0] = time.monotonic()
            say(f"[{label}] generate: block {done}/{total}")

    return report


# ---------------------------------------------------------------------------------------
# The parent: plan, run the children under timeouts, report
# ---------------------------------------------------------------------------------------


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/meminfo") as meminfo:
            info["memory_gib"] = round(int(meminfo.readline().split()[1]) * 1024 / GiB, 1)
    except OSError:
        pass
    # Versions from package metadata, without importing anything: importing implicit here would
    # swallow the warning that train.py turns into its explanation when the GPU is unusable.
    from importlib import metadata

    for name in ("numpy", "scipy", "pyarrow", "implicit", "cupy-cuda13x", "rmm-cu13"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if shutil.which("nvidia-smi"):
        try:
            info["gpu"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=15,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def scaled(args, share: float) -> tuple[int, int, int]:
    """(users, items, interactions) of the main run times ``share``, shape kept."""
    return (
        max(10, round(args.users * share)),
        max(10, round(args.items * share)),
        max(100, round(args.interactions * share)),
    )


def spawn(
    args,
    label: str,
    device: str,
    users: int,
    items: int,
    interactions: int,
    recommend_users: int,
    timeout: float,
    out: Path,
) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role",
        "run",
        "--label",
        label,
        "--out",
        str(out),
        "--device",
        device,
        "--users",
        str(users),
        "--items",
        str(items),
        "--interactions",
        str(interactions),
        "--factors",
        str(args.factors),
        "--iterations",
        str(args.iterations),
        "--seed",
        str(args.seed),
        "--recommend-users",
        str(recommend_users),
        "--batch-users",
        str(args.batch_users),
        "--generator",
        args.generator,
        *([] if args.loss else ["--no-loss"]),
    ]
    say(
        f"[{label}] {device.upper()}: {users:,} users x {items:,} items, ~{interactions:,} interactions; "
        f"timeout {timeout:.0f} s"
    )
    # A deadline of its own as well, so it stops even if this parent is gone.
    result = measure_in_child(command + ["--stop-at", str(time.time() + timeout + 10)], out, timeout)
    say(f"[{label}] {result['status']} in {result['wall_seconds']:.0f} s")
    return result


def measure_in_child(command: list[str], out: Path, timeout: float) -> dict:
    """Run one measuring child to its end or its timeout and return the JSON it wrote to ``out``,
    with its exit code, wall time and (when it ran out of time) a "timed out" status."""
    started = time.monotonic()
    # Its own process group (so a timeout ends it and anything it started) in our session (so
    # whatever ends this command's session ends it too).
    child = subprocess.Popen(command, process_group=0)
    try:
        rc = child.wait(timeout=max(timeout, 1))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        rc = child.wait()
        timed_out = True
    try:
        result = json.loads(out.read_text())
    except (OSError, ValueError):
        result = {"status": "no result", "stages": {}, "errors": {}}
    if timed_out:
        result["status"] = f"timed out after {timeout:.0f} s"
    result["exit_code"] = rc
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    return result


def per_iteration(run: dict) -> float | None:
    """Mean seconds per ALS iteration (the first one included: it is part of the work)."""
    seconds = run.get("stages", {}).get("train", {}).get("iteration_seconds") or []
    return sum(seconds) / len(seconds) if seconds else None


def row_of(label: str, run: dict) -> dict:
    stages = run.get("stages", {})
    nnz = stages.get("generate", {}).get("nnz")
    iteration = per_iteration(run)
    rec = stages.get("recommend", {})
    return {
        "run": f"{label} ({run.get('device', '?')})",
        "nnz": nnz,
        "generate_s": stages.get("generate", {}).get("seconds"),
        "weighting_s": stages.get("weighting", {}).get("seconds"),
        "train_s": stages.get("train", {}).get("seconds"),
        "setup_s": stages.get("train", {}).get("setup_seconds"),
        "iterations_done": len(stages.get("train", {}).get("iteration_seconds") or []),
        "s_per_iteration": iteration,
        "ns_per_nnz_iteration": iteration / nnz * 1e9 if iteration and nnz else None,
        "recommend_s": rec.get("seconds"),
        "users_per_s": rec.get("users_per_second"),
        "ns_per_user_item": (1e9 / rec["users_per_second"] / rec["items"]) if rec.get("users_per_second") else None,
        "gpu_peak_gib": run.get("gpu_peak_gib"),
        "host_peak_gib": max((st.get("host_peak_rss_gib") or 0 for st in stages.values()), default=None),
        "status": run.get("status"),
    }


def summarize(runs: dict[str, dict], device: str) -> dict:
    """The table, and CPU-over-device ratios: at the same size, and per interaction at full size."""
    rows = {label: row_of(label, run) for label, run in runs.items()}
    print()
    print(
        f"{'run':<16} {'nnz':>13} {'gen s':>7} {'weight s':>8} {'train s':>8} {'setup s':>8} {'iters':>5} {'s/iter':>7} "
        f"{'ns/nnz-iter':>11} {'rec s':>6} {'users/s':>9} {'GPU GiB':>8} {'host GiB':>8}  status"
    )
    for row in rows.values():
        print(
            f"{row['run']:<16} {_f(row['nnz'], ',.0f'):>13} {_f(row['generate_s']):>7} {_f(row['weighting_s']):>8} "
            f"{_f(row['train_s']):>8} {_f(row['setup_s']):>8} {row['iterations_done']:>5} "
            f"{_f(row['s_per_iteration'], '.3f'):>7} {_f(row['ns_per_nnz_iteration'], '.2f'):>11} "
            f"{_f(row['recommend_s']):>6} {_f(row['users_per_s'], ',.0f'):>9} {_f(row['gpu_peak_gib'], '.1f'):>8} "
            f"{_f(row['host_peak_gib'], '.1f'):>8}  {row['status']}"
        )
    summary: dict = {"rows": rows}
    cpu, main, small = rows.get("cpu"), rows.get("main"), rows.get("same-size")

    def ratio(key: str, a: dict | None, b: dict | None, field: str, what: str) -> None:
        if a and b and a.get(field) and b.get(field):
            summary[key] = a[field] / b[field]
            print(f"{what}: {a['run']} {a[field]:.4g} ns, {b['run']} {b[field]:.4g} ns -> {summary[key]:.1f}x")

    print()
    ratio(
        "cpu_over_device_same_size", cpu, small, "ns_per_nnz_iteration", "ALS per interaction-iteration, same data size"
    )
    ratio(
        "cpu_over_device_per_nnz_iteration",
        cpu,
        main,
        "ns_per_nnz_iteration",
        "ALS per interaction-iteration, CPU size vs full size",
    )
    ratio(
        "cpu_over_device_recommend_same_size", cpu, small, "ns_per_user_item", "top 10 per user-item scored, same size"
    )
    ratio(
        "cpu_over_device_recommend", cpu, main, "ns_per_user_item", "top 10 per user-item scored, CPU size vs full size"
    )
    if cpu and main and cpu["ns_per_nnz_iteration"] and main["nnz"] and main["iterations_done"]:
        full = cpu["ns_per_nnz_iteration"] * 1e-9 * main["nnz"] * main["iterations_done"]
        summary["cpu_estimate_full_size_iterations_s"] = full
        print(
            f"the CPU's rate applied to the full size: about {full:,.0f} s for {main['iterations_done']} iterations "
            f"(the {device.upper()} took {main['s_per_iteration'] * main['iterations_done']:,.1f} s)"
        )
    for label, run in runs.items():
        for stage, error in run.get("errors", {}).items():
            if not stage.endswith("_traceback"):
                print(f"{label}: {stage} failed: {error}")
    return summary


def _size_problem(run: dict) -> bool:
    """Did the run fail for want of memory or index range (worth a smaller try), not a setup fault?"""
    text = " ".join(v for k, v in run.get("errors", {}).items() if not k.endswith("_traceback")).lower()
    return any(word in text for word in ("memory", "too large", "2^31", "alloc"))


def _f(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def orchestrate(args) -> int:
    """same-size (device at the CPU run's size), main (full size), cpu; each under its own timeout.

    The same-size run goes first: it is short, proves the device path end to end, and gives
    a like-for-like ratio even if the full-size run cannot finish.
    """
    started = time.monotonic()
    deadline = started + args.budget
    say(f"gpu_als: budget {args.budget:.0f} s; machine: {json.dumps(machine())}")
    shape = estimate(args.users, args.items, args.interactions, args.factors)
    say("estimate for the main run (GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in shape.items()))
    cpu_users, cpu_items, cpu_interactions = scaled(args, args.cpu_interactions / args.interactions)
    cpu_reserve = 0 if args.no_cpu else min(args.cpu_timeout, args.budget * 0.3)
    # Each run's own JSON goes beside --json (so it survives even if this process is killed
    # mid-run), or into a temporary folder.
    folder = Path(args.json).resolve().parent if args.json else Path(tempfile.mkdtemp(prefix="gpu_als-"))
    folder.mkdir(parents=True, exist_ok=True)
    prefix = Path(args.json).stem + "-" if args.json else ""
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "args": vars(args), "estimate": shape, "runs": {}}
    runs = report["runs"]

    def run(label: str, device: str, size: tuple[int, int, int], recommend_users: int, timeout: float) -> dict:
        result = spawn(args, label, device, *size, recommend_users, timeout, folder / f"{prefix}{label}.json")
        report["wall_seconds"] = round(time.monotonic() - started, 1)
        if args.json:
            Path(args.json).write_text(json.dumps(report | {"runs": runs | {label: result}}, indent=2, default=_plain))
        return result

    cpu_size = (cpu_users, cpu_items, cpu_interactions)
    try:
        if args.device != "cpu" and args.same_size:
            runs["same-size"] = run(
                "same-size",
                args.device,
                cpu_size,
                args.cpu_recommend_users,
                min(args.same_size_timeout, args.budget * 0.25),
            )
        runs["main"] = run(
            "main",
            args.device,
            (args.users, args.items, args.interactions),
            args.recommend_users,
            deadline - time.monotonic() - cpu_reserve,
        )
        # A quick failure at full size (memory, most likely) leaves time for one try at half the size.
        if (
            args.retry_smaller
            and runs["main"].get("status") == "failed"
            and per_iteration(runs["main"]) is None
            and _size_problem(runs["main"])
            and time.monotonic() - started < args.budget * 0.4
        ):
            runs["main-failed"] = runs.pop("main")
            say("the full-size run failed before training; trying once more at half the size")
            runs["main"] = run(
                "main-half",
                args.device,
                scaled(args, 0.5),
                args.recommend_users,
                deadline - time.monotonic() - cpu_reserve,
            )
        if not args.no_cpu:
            left = deadline - time.monotonic()
            if left < 20:
                say(f"skipping the CPU comparison: only {left:.0f} s left")
            else:
                runs["cpu"] = run("cpu", "cpu", cpu_size, args.cpu_recommend_users, min(args.cpu_timeout, left - 5))
        report["summary"] = summarize(runs, args.device)
    finally:
        report["wall_seconds"] = round(time.monotonic() - started, 1)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=_plain))
            say(f"wrote {args.json}")
        if not args.json:
            shutil.rmtree(folder, ignore_errors=True)
    summary = report["summary"]
    main_row = summary["rows"].get("main", {})
    print(
        f"gpu_als: device={args.device} nnz={main_row.get('nnz')} train_s={_f(main_row.get('train_s'), '.2f')} "
        f"s_per_iteration={_f(main_row.get('s_per_iteration'), '.3f')} "
        f"cpu_over_gpu_same_size={_f(summary.get('cpu_over_device_same_size'), '.2f')} "
        f"cpu_over_gpu_per_nnz_iteration={_f(summary.get('cpu_over_device_per_nnz_iteration'), '.2f')}",
        flush=True,
    )
    return 0 if runs["main"].get("status") == "ok" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="device of the main run")
    parser.add_argument("--users", type=int, default=SEED_USERS)
    parser.add_argument("--items", type=int, default=SEED_ITEMS)
    parser.add_argument("--interactions", type=int, default=SEED_INTERACTIONS, help="distinct (user, item) pairs")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument(
        "--no-loss",
        dest="loss",
        action="store_false",
        help="skip the training loss after each iteration (the worker computes it by default)",
    )
    parser.add_argument("--recommend-users", type=int, default=100_000, help="users to recommend for in the main run")
    parser.add_argument("--batch-users", type=int, default=100_000)
    parser.add_argument(
        "--cpu-interactions",
        type=int,
        default=30_000_000,
        help="size of the CPU comparison run; users and items are scaled by the same share",
    )
    parser.add_argument("--cpu-recommend-users", type=int, default=20_000)
    parser.add_argument("--cpu-timeout", type=float, default=120.0)
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU comparison run")
    parser.add_argument(
        "--no-same-size", dest="same_size", action="store_false", help="skip the device run at the CPU run's size"
    )
    parser.add_argument("--same-size-timeout", type=float, default=90.0)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for everything")
    parser.add_argument(
        "--generator",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="where to generate the data (auto: the run's device)",
    )
    parser.add_argument(
        "--no-retry",
        dest="retry_smaller",
        action="store_false",
        help="do not retry at half size when the main run fails early",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (main 2M, CPU 200k interactions)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--role", choices=("plan", "run"), default="plan", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--stop-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    logging.getLogger("implicit").setLevel(logging.WARNING)  # the worker logs the loss already
    if args.role == "run":
        return run_child(args)
    if args.quick:
        share = 2_000_000 / SEED_INTERACTIONS
        args.users, args.items, args.interactions = round(SEED_USERS * share), round(SEED_ITEMS * share), 2_000_000
        args.cpu_interactions = min(args.cpu_interactions, 200_000)
        args.recommend_users = min(args.recommend_users, 5_000)
        args.cpu_recommend_users = min(args.cpu_recommend_users, 2_000)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
