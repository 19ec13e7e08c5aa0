"""What the native solver's memory plan (airflow_gpu/worker/gpu/memory.py) fits on which GPU, at the seed's scale.

Pure arithmetic, no GPU: for 25M users x 8.4M items x 1e9 interactions, at 64 and 128 factors, with
float32 and with bfloat16 factor storage (``--factor-dtype``), the plan's peak and whether it fits each
card's free memory, then the most factors each card holds per storage (at most MAX_FACTORS, 160:
YtY lives in shared memory; 155 on a 24 GB card's 99 KiB). "Free" is what a job finds
free on the card (the plan's own 0.5 GiB allowance for the CUDA context comes on top of its arrays):

    .venv/bin/python benchmarks/gpu_memory_plan.py

The last line is machine-readable:
``gpu_memory_plan: card=24GB free_gib=22 fits_f32_64=<yes|no> fits_bf16_64=<yes|no> fits_bf16_128=<yes|no>
most_factors_f32=<n> most_factors_bf16=<n>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_gpu.worker.gpu.memory import GiB, most_factors, plan_memory  # noqa: E402
from airflow_gpu.worker.gpu.solver import MAX_FACTORS  # noqa: E402

SEED = {"users": 25_000_000, "items": 8_400_000, "nnz": 1_000_000_000}
# GiB free to a job: a 24 GB A10G or L4 shows 22.5 GiB in all and leaves about 22 once a context exists
CARDS = {"24GB (A10G, L4)": 22.0, "40GB (A100)": 39.0, "80GB (A100, H100)": 78.0, "141GB (H200)": 139.0}
FACTORS = (64, 128)
DTYPES = ("float32", "bfloat16")


def table(users: int, items: int, nnz: int) -> list[str]:
    lines = [
        f"native solver memory plan: {users:,} users x {items:,} items x {nnz:,} interactions",
        "factors  storage   peak GiB  " + "  ".join(f"{card:>18}" for card in CARDS),
    ]
    for factors in FACTORS:
        for dtype in DTYPES:
            peak = plan_memory(users, items, nnz, factors, factor_dtype=dtype).peak / GiB
            fits = "  ".join(f"{'fits' if peak <= free else 'no':>18}" for free in CARDS.values())
            lines.append(f"{factors:>7}  {dtype:<8}  {peak:>8.2f}  {fits}")
    for dtype in DTYPES:
        most = "  ".join(
            f"{most_factors(users, items, nnz, int(free * GiB), dtype, MAX_FACTORS):>18}" for free in CARDS.values()
        )
        lines.append(f"most factors, {dtype:<8}      {most}")
    return lines


def summary(users: int, items: int, nnz: int, free_gib: float = CARDS["24GB (A10G, L4)"]) -> str:
    free = int(free_gib * GiB)

    def fits(factors: int, dtype: str) -> str:
        return "yes" if plan_memory(users, items, nnz, factors, factor_dtype=dtype).peak <= free else "no"

    return (
        f"gpu_memory_plan: card=24GB free_gib={free_gib:g} fits_f32_64={fits(64, 'float32')} "
        f"fits_bf16_64={fits(64, 'bfloat16')} fits_bf16_128={fits(128, 'bfloat16')} "
        f"most_factors_f32={most_factors(users, items, nnz, free, 'float32', MAX_FACTORS)} "
        f"most_factors_bf16={most_factors(users, items, nnz, free, 'bfloat16', MAX_FACTORS)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=SEED["users"])
    parser.add_argument("--items", type=int, default=SEED["items"])
    parser.add_argument("--interactions", type=int, default=SEED["nnz"])
    args = parser.parse_args(argv)
    for line in table(args.users, args.items, args.interactions):
        print(line)
    print(summary(args.users, args.items, args.interactions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
