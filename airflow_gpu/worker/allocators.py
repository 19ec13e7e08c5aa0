"""The host allocators' settings: keep the process's resident memory close to what the data needs.

(The GPU's memory plan is gpu/memory.py.)

Ingest allocates and frees many buffers of a few MB (object bytes, decoded columns, codes)
from several threads. Measured on 10M interactions (benchmarks/README.md), the allocators'
defaults keep most of the freed memory: mimalloc (Arrow's default pool) holds its segments,
and glibc both raises its mmap threshold after the first large free (so later multi-MB
buffers come from arenas that fragment) and gives each thread its own arena. Peak RSS was
about 47 bytes per interaction; with Arrow on the system allocator, a fixed 256 KiB mmap
threshold and two arenas it was about 27, at the same speed.

Settings the user made explicitly (ARROW_DEFAULT_MEMORY_POOL, MALLOC_*) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("airflow_gpu.worker")

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_done = False


def bound_allocators() -> None:
    """Apply the settings above once per process (Linux with glibc only; elsewhere a no-op)."""
    global _done
    if _done:
        return
    _done = True
    import pyarrow as pa

    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        pa.set_memory_pool(pa.system_memory_pool())
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 256 * 1024)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc (musl, say): keep its defaults
        log.debug("memory: no glibc mallopt; allocator defaults kept")
