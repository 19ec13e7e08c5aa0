"""What the native solver allocates on the GPU, computed from the shapes before anything is.

Pure arithmetic, so it is checked on machines without a GPU, and the solver calls it first:
a matrix that will not fit is refused with the figures, not failed deep inside CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import WorkerError
from .bfloat16 import BYTES
from .schedule import CHUNK, HEAVY_THRESHOLD

GiB = 1 << 30
# The CUDA context, CuPy's pool rounding, the compiled module and cuBLAS's workspace: measured
# contexts take 0.3-0.6 GiB; this is the allowance the plan keeps free.
HEADROOM = GiB // 2
# bfloat16 factors are widened to float32 (for the Gram) and drawn as float32 (at set-up) this many
# bytes of float32 at a time, so no float32 copy of a whole factor matrix is ever held.
STAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class MemoryPlan:
    users: int
    items: int
    nnz: int
    factors: int
    factor_dtype: str
    parts: dict[str, int]  # bytes of each allocation held through training
    setup_peak_extra: int  # bytes needed on top of parts while the setup runs (the transpose, the row order)

    @property
    def training(self) -> int:
        return sum(self.parts.values())

    @property
    def peak(self) -> int:
        return self.training + self.setup_peak_extra + HEADROOM

    def describe(self) -> str:
        shown = ", ".join(f"{name} {size / GiB:.2f}" for name, size in self.parts.items())
        stored = "" if self.factor_dtype == "float32" else f" ({self.factor_dtype})"
        return (
            f"{self.users:,} users x {self.items:,} items x {self.nnz:,} interactions x {self.factors} factors"
            f"{stored} needs {self.peak / GiB:.2f} GiB on the GPU at its peak ({shown}; setup "
            f"{self.setup_peak_extra / GiB:.2f} more; {HEADROOM / GiB:.1f} kept for the CUDA context)"
        )


def plan_memory(
    users: int,
    items: int,
    nnz: int,
    factors: int,
    *,
    threshold: int = HEAVY_THRESHOLD,
    chunk: int = CHUNK,
    factor_dtype: str = "float32",
) -> MemoryPlan:
    """The bytes each array takes: fp32 values, int32 column indices, int64 offsets, the factors
    as ``factor_dtype`` (the heavy rows' CG state and partial sums stay fp32 either way)."""
    width = BYTES[factor_dtype]
    heavy_rows_bound = nnz // (threshold + 1)  # a heavy row has more than threshold interactions
    chunks_bound = nnz // chunk + 2 * heavy_rows_bound  # each heavy row adds at most one part-filled chunk
    per_side = max(users, items)
    parts = {
        # both orientations of the confidence matrix: int64 offsets, int32 indices, fp32 values
        "user_rows": (users + 1) * 8 + nnz * 8,
        "item_rows": (items + 1) * 8 + nnz * 8,
        "user_factors": users * factors * width,
        "item_factors": items * factors * width,
        "row_order": (users + items) * 4,  # light rows, longest first
        # chunk lists (row, start, end) and their fp32 partial sums, plus R and P of the heavy rows
        "heavy_split": chunks_bound * (4 + 8 + 8 + factors * 4) + 2 * heavy_rows_bound * (factors * 4 + 16),
        "gram": factors * factors * 4,
    }
    if factor_dtype == "bfloat16":  # a stretch of rows widened to fp32 for the Gram (solver._gram)
        parts["gram_stage"] = min(per_side * factors * 4, STAGE_BYTES)
    # the transpose's cursor (64-bit) beside the offsets, and the sort that orders rows by length
    # (CuPy's argsort of int64 keys takes about three arrays of the side's length)
    setup = max((items + 1) * 8, per_side * 8 * 3)
    return MemoryPlan(users, items, nnz, factors, factor_dtype, parts, setup)


def check_fits(memory: MemoryPlan, free_bytes: int, total_bytes: int) -> None:
    """Refuse, with the figures and what to change, a plan bigger than the GPU's free memory."""
    if memory.peak <= free_bytes:
        return
    fewer = max(
        int(
            (free_bytes - (memory.peak - memory.parts["user_factors"] - memory.parts["item_factors"]))
            // (BYTES[memory.factor_dtype] * (memory.users + memory.items))
        ),
        0,
    )
    hint = f"--factors {fewer} or fewer, " if 0 < fewer < memory.factors else ""
    if memory.factor_dtype == "float32":
        halved = plan_memory(memory.users, memory.items, memory.nnz, memory.factors, factor_dtype="bfloat16")
        if halved.peak <= free_bytes:  # the same factors would fit stored as bfloat16
            hint = f"--factor-dtype bfloat16 ({halved.peak / GiB:.2f} GiB), {hint}"
    raise WorkerError(
        f"the native GPU solver will not fit: {memory.describe()}, but the GPU has {free_bytes / GiB:.2f} GiB free "
        f"of {total_bytes / GiB:.2f} GiB; use {hint}a GPU with more memory, or --solver implicit"
    )


def most_factors(
    users: int, items: int, nnz: int, free_bytes: int, factor_dtype: str = "float32", limit: int = 4096
) -> int:
    """The most factors whose plan fits ``free_bytes`` (0 if even one does not): the plan grows with
    the factors, so a bisection finds it."""
    low, high = 0, limit
    while low < high:
        mid = (low + high + 1) // 2
        if plan_memory(users, items, nnz, mid, factor_dtype=factor_dtype).peak <= free_bytes:
            low = mid
        else:
            high = mid - 1
    return low
