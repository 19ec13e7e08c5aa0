"""A short, self-checking run of the worker's GPU path on a real NVIDIA GPU (about a minute on an H200).

What it checks, each as PASS/FAIL:
  1. implicit sees CUDA, and the device's compute capability is 8.0+;
  2. the full `airflow-gpu-worker als --device gpu` CLI runs on local Parquet and commits a manifest;
  3. GPU and CPU pipelines on the same data and split: both beat popularity, and the GPU's
     precision@10 is within 10% of the CPU's (same confidence matrix, same objective);
  4. the GPU's training loss falls, and its recommendations never include seen items;
  5. the int32 guard refuses an oversized model before anything is allocated on the GPU.
It prints stage times and GPU memory, and ends with one line:
    gpu_smoke: PASS|FAIL checks=<passed>/<total> p10_gpu=<x> p10_cpu=<y> train_gpu_s=<a> train_cpu_s=<b>

    python benchmarks/gpu_smoke.py [--interactions 2000000]
Needs the worker's GPU dependencies (implicit 0.7.3 CUDA wheel, rmm-cu13 26.2) in the running Python.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

checks: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    checks.append((name, bool(ok), detail))
    print(f"  [{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
    return bool(ok)


def gpu_memory() -> str:
    try:
        from cuda.bindings import runtime

        err, free, total = runtime.cudaMemGetInfo()
        return f"{(total - free) / 2**30:.2f} GiB used of {total / 2**30:.1f} GiB"
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"unknown ({exc})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=int, default=2_000_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=15)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import numpy as np

    from airflow_gpu.demo.synthetic import synthetic_interactions, write_shards
    from airflow_gpu.worker import models, train
    from airflow_gpu.worker.config import AlsConfig
    from airflow_gpu.worker.errors import WorkerError
    from airflow_gpu.worker.ingest import Columns
    from airflow_gpu.worker.pipeline import run_als
    from airflow_gpu.worker.train import TrainParams

    print("1. device")
    has_cuda = models._gpu_als_class() is not None
    capability = models._compute_capability()
    check("implicit.gpu.HAS_CUDA", has_cuda, "; ".join(models._gpu_unavailable) or "")
    check("compute capability >= 8.0", capability is not None and capability >= (8, 0), f"{capability}")
    if not has_cuda:
        print("gpu_smoke: FAIL checks=0/2 (no usable GPU; nothing else can be checked)")
        return 2
    print(f"  GPU memory before: {gpu_memory()}")

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        started = time.perf_counter()
        table = synthetic_interactions(args.interactions, seed=11)
        write_shards(table, folder / "in", "parquet", objects=8)
        print(f"  data: {args.interactions:,} interactions in {time.perf_counter() - started:.1f}s")

        print("2. CLI on the GPU")
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "airflow_gpu.worker",
                "als",
                "--input",
                str(folder / "in"),
                "--output",
                str(folder / "cli"),
                "--weight-col",
                "plays",
                "--device",
                "gpu",
                "--factors",
                "32",
                "--iterations",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        manifest_path = folder / "cli" / "manifest.json"
        ok = cli.returncode == 0 and manifest_path.exists()
        device = json.loads(manifest_path.read_text())["summary"]["device"] if ok else None
        check(
            "airflow-gpu-worker als --device gpu commits a manifest",
            ok and device == "gpu",
            f"exit {cli.returncode}, device {device}" + ("" if ok else "; " + cli.stderr[-600:]),
        )

        print("3. GPU against CPU, same data and split")
        runs = {}
        for device in ("gpu", "cpu"):
            config = AlsConfig(
                input=str(folder / "in"),
                output=str(folder / device),
                columns=Columns(weight="plays"),
                train=TrainParams(factors=args.factors, iterations=args.iterations, device=device, seed=5),
                eval_holdout=0.2,
                eval_users=50_000,
                similar_n=10,
            )
            started = time.perf_counter()
            runs[device] = run_als(config)
            stages = runs[device].metrics["stages"]
            print(
                f"  {device}: {time.perf_counter() - started:.1f}s total; "
                + ", ".join(f"{k} {v:.2f}s" for k, v in stages.items())
            )
            if device == "gpu":
                print(f"  GPU memory after the GPU run: {gpu_memory()}")
        gpu, cpu = (runs[d].metrics for d in ("gpu", "cpu"))
        p_gpu, p_cpu = gpu["evaluation"]["als"]["precision_at_10"], cpu["evaluation"]["als"]["precision_at_10"]
        p_pop = gpu["evaluation"]["popularity"]["precision_at_10"]
        check("trained on the GPU", gpu["training"]["device"] == "gpu" and runs["gpu"].training.device == "gpu")
        check("GPU beats popularity", p_gpu > 1.2 * p_pop, f"p@10 {p_gpu:.4f} vs popularity {p_pop:.4f}")
        check("CPU beats popularity", p_cpu > 1.2 * p_pop, f"p@10 {p_cpu:.4f} vs popularity {p_pop:.4f}")
        check("GPU quality matches CPU (within 10%)", p_gpu >= 0.9 * p_cpu, f"p@10 GPU {p_gpu:.4f}, CPU {p_cpu:.4f}")

        print("4. loss and seen items")
        loss = [x for x in gpu["training"]["loss"] if x is not None]
        check(
            "GPU loss recorded and falling",
            len(loss) == gpu["training"]["iterations_run"] and loss[-1] < loss[0],
            f"{loss[0]:.5f} -> {loss[-1]:.5f}" if loss else "no loss",
        )
        import pyarrow.dataset as ds

        recs = ds.dataset(str(folder / "gpu" / runs["gpu"].manifest["root"] / "recommendations")).to_table(
            columns=["user_id", "item_id"]
        )
        seen = ds.dataset(str(folder / "in")).to_table(columns=["user_id", "item_id"])
        rec_keys = np.char.add(
            np.char.add(recs["user_id"].to_numpy(zero_copy_only=False).astype(str), "\x00"),
            recs["item_id"].to_numpy(zero_copy_only=False).astype(str),
        )
        seen_keys = np.char.add(
            np.char.add(seen["user_id"].to_numpy(zero_copy_only=False).astype(str), "\x00"),
            seen["item_id"].to_numpy(zero_copy_only=False).astype(str),
        )
        overlap = int(np.isin(rec_keys, seen_keys).sum())
        check(
            "GPU recommendations never include seen items",
            overlap == 0 and len(rec_keys) > 0,
            f"{len(rec_keys):,} recommendations, {overlap} seen",
        )

        print("5. int32 guard")
        users = runs["gpu"].interactions.users
        too_many = (2**31) // users + 1
        try:
            train.fit(runs["gpu"].interactions.matrix, TrainParams(factors=too_many, iterations=1, device="gpu"))
            check("int32 guard refuses users x factors >= 2^31", False, "it trained")
        except WorkerError as exc:
            check(
                "int32 guard refuses users x factors >= 2^31",
                "2^31" in str(exc) and "--device cpu" in str(exc),
                str(exc)[:160],
            )

        print("6. early stop on the GPU")
        matrix = runs["gpu"].interactions.matrix
        stopped = train.fit(matrix, TrainParams(factors=args.factors, iterations=60, device="gpu", seed=5))
        check(
            "GPU fit stops early on a loss plateau",
            stopped.iterations_run < 60 and stopped.stop_reason.startswith("converged"),
            f"{stopped.iterations_run} iterations: {stopped.stop_reason}",
        )
        fixed = train.fit(
            matrix,
            TrainParams(factors=args.factors, iterations=stopped.iterations_run, device="gpu", seed=5, early_stop=0),
        )
        gap = max(
            float(np.linalg.norm(a - b) / np.linalg.norm(b))
            for a, b in ((stopped.user_factors(), fixed.user_factors()), (stopped.item_factors(), fixed.item_factors()))
        )
        check("stopped GPU model keeps its last iteration's factors", gap < 1e-3, f"relative difference {gap:.2e}")

    passed = sum(ok for _, ok, _ in checks)
    verdict = "PASS" if passed == len(checks) else "FAIL"
    print(
        f"gpu_smoke: {verdict} checks={passed}/{len(checks)} p10_gpu={p_gpu:.4f} p10_cpu={p_cpu:.4f} "
        f"train_gpu_s={gpu['stages']['train']:.2f} train_cpu_s={cpu['stages']['train']:.2f}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
