"""What the worker's profile sampler costs: its thread's CPU, and a workload with and without it.

Two measurements in one run, side by side:

1. The sampler thread's own CPU time (its POSIX thread clock) over ``--seconds`` of sampling at
   the worker's 1 Hz, as a share of one core. Target: under 1%.
2. A fixed numpy workload timed with the sampler off and on, alternating ``--rounds`` times,
   printing the ratio of the medians (noise on a shared machine is larger than the effect:
   the thread clock of (1) is the precise figure).

The GPU side reads NVML when ``pynvml`` finds a GPU, else replays recorded readings of one
H100 through the same reader interface (which measures the sampler, not the driver).

    .venv/bin/python benchmarks/profile_overhead.py               # ~1 min
    .venv/bin/python benchmarks/profile_overhead.py --seconds 60 --interval 0.1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_gpu.worker.profile import GiB, GpuReading, ReplayReader, Sampler, open_gpu_reader  # noqa: E402


def _reader():
    reader, why = open_gpu_reader()
    if reader is not None:
        return reader, "NVML"
    h100 = [GpuReading(0, "NVIDIA H100 80GB HBM3", 87.0, 61 * GiB, 80 * GiB, 312.0)]
    return ReplayReader([h100] * 100_000), f"replayed H100 readings ({why})"


def thread_share(seconds: float, interval: float) -> tuple[float, int]:
    """The sampler thread's CPU seconds per wall second, and its sample count."""
    reader, _ = _reader()
    sampler = Sampler(reader, interval=interval).start()
    clock = time.pthread_getcpuclockid(sampler._thread.ident)  # type: ignore[union-attr]
    wall0, cpu0 = time.monotonic(), time.clock_gettime(clock)
    time.sleep(seconds)
    cpu1, wall1 = time.clock_gettime(clock), time.monotonic()
    document = sampler.stop()
    return (cpu1 - cpu0) / (wall1 - wall0), len(document["cpu"]["samples"])


def workload(size: int, repeats: int) -> float:
    a = np.random.default_rng(0).standard_normal((size, size))
    started = time.perf_counter()
    for _ in range(repeats):
        a = np.tanh(a @ a.T / size)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the thread samples in (1)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (the worker uses 1)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating off/on workload runs in (2)")
    args = parser.parse_args()

    _, source = _reader()
    print(f"GPU side: {source}")
    share, samples = thread_share(args.seconds, args.interval)
    print(
        f"(1) sampler thread: {share * 100:.4f}% of one core over {args.seconds:.0f} s "
        f"({samples} samples at {args.interval:g} s); target < 1%: {'met' if share < 0.01 else 'MISSED'}"
    )

    off, on = [], []
    workload(256, 2)  # warm up BLAS
    for round_ in range(args.rounds):
        for sampled in (False, True) if round_ % 2 == 0 else (True, False):  # alternate which goes first
            if not sampled:
                off.append(workload(400, 40))
                continue
            reader, _ = _reader()
            sampler = Sampler(reader, interval=args.interval).start()
            on.append(workload(400, 40))
            sampler.stop()
    ratio = statistics.median(on) / statistics.median(off)
    print(
        f"(2) workload median: off {statistics.median(off):.3f} s, on {statistics.median(on):.3f} s, "
        f"on/off ratio {ratio:.4f} ({args.rounds} rounds)"
    )
    print(f"profile_overhead: thread_percent_of_core={share * 100:.4f} workload_on_over_off={ratio:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
