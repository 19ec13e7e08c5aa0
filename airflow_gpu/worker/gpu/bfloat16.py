"""bfloat16 as the native solver stores factors with ``--factor-dtype bfloat16``: the top 16 bits of
a float32, kept as uint16 (neither numpy nor CuPy has the type), rounded to nearest even.

The same arithmetic as the GPU's ``__float2bfloat16_rn`` and ``__bfloat162float`` (cuda_bf16.h):
widening is exact; narrowing rounds to nearest, ties to even, overflows to infinity, keeps
subnormals, and turns every NaN into the one quiet NaN 0x7FFF. Works on numpy or CuPy arrays
alike (``xp``), so the reference rounds as the kernels do and the solver rounds on the GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DTYPES = ("float32", "bfloat16")
BYTES = {"float32": 4, "bfloat16": 2}
QUIET_NAN = 0x7FFF


def to_bits(values: Any, xp: Any = np) -> Any:
    """float32 values -> their bfloat16 bit patterns (uint16), rounded to nearest even."""
    bits = xp.ascontiguousarray(values, dtype=xp.float32).view(xp.uint32)
    # adding 0x7FFF plus the kept part's lowest bit carries into bit 16 exactly when the dropped
    # half is above one half, or exactly one half with an odd kept part (ties to even)
    rounded = (bits + (xp.uint32(0x7FFF) + ((bits >> xp.uint32(16)) & xp.uint32(1)))) >> xp.uint32(16)
    nan = (bits & xp.uint32(0x7FFFFFFF)) > xp.uint32(0x7F800000)
    return xp.where(nan, xp.uint32(QUIET_NAN), rounded).astype(xp.uint16)


def to_float(bits: Any, xp: Any = np) -> Any:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    wide = xp.asarray(bits).astype(xp.uint32)
    wide <<= xp.uint32(16)  # in place: one temporary of the float32 size, not two
    return wide.view(xp.float32)


def round_float32(values: Any, xp: Any = np) -> Any:
    """float32 values rounded to the nearest bfloat16, as float32 (what a store and a load do)."""
    return to_float(to_bits(values, xp), xp)
