"""CUDA kernels compiled by g++ and run on the CPU, behind the surface of CuPy the native solver uses.

``build(source, defines)`` compiles the unchanged .cu source with cuda_on_cpu.h (see its header
comment for what is and is not modelled) into a shared library, cached by the hash of every
input under the temporary directory. This folder is on g++'s include path, so a source's
``#include <cuda_bf16.h>`` finds the stand-in here; a kernel inside ``#ifdef`` gets a launcher
inside the same ``#ifdef``. ``NumpyCupy`` is numpy under CuPy's names whose
``RawModule`` hands out such kernels: a launch checks each argument against the parameter
types g++ saw (array or scalar, and width), the 48 KiB dynamic shared memory rule, and then
runs every CUDA thread of the grid over the numpy arrays standing in for device memory.
Test support only: the product never imports it.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import time
import types
from pathlib import Path

import numpy as np

HEADER = Path(__file__).with_name("cuda_on_cpu.h")
# headers a kernel source includes by name, standing in for CUDA's (this folder is on g++'s include path)
STAND_INS = (Path(__file__).with_name("cuda_bf16.h"),)
SHARED_CAPACITY = 232_448  # bytes: the largest opt-in dynamic shared memory of a current GPU (sm_90)
DEFAULT_SHARED_LIMIT = 48 * 1024  # above this a kernel must opt in (max_dynamic_shared_size_bytes)
KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')
SHARED = re.compile(r"extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\s*\]")
# b: bfloat16, held in numpy as its uint16 bits (numpy has no bfloat16), as CuPy holds it too
DTYPES = {"i": np.int32, "q": np.int64, "Q": np.uint64, "f": np.float32, "d": np.float64, "b": np.uint16}
CTYPES = {"i": ctypes.c_int32, "q": ctypes.c_int64, "Q": ctypes.c_uint64, "f": ctypes.c_float, "d": ctypes.c_double}
FLAGS = ("-std=c++20", "-O2", "-fPIC", "-shared", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function")


class EmulationError(RuntimeError):
    """A launch the GPU would refuse, hang on or leave undefined, or a kernel that could not be built."""


def kernel_guards(source: Path, text: str) -> dict[str, list[str]]:
    """Each kernel's name -> the conditional directives (#if, #ifdef, #ifndef) it sits inside, outermost
    first, so that its launcher is compiled exactly when the kernel is (-DBF16_FACTORS, say)."""
    guards: dict[str, list[str]] = {}
    stack: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("#if", "#ifdef", "#ifndef")):
            stack.append(stripped)
        elif stripped.startswith(("#else", "#elif")):
            stack[-1] = f"{stack[-1]} {stripped}"  # marks it: a kernel in such a branch is refused below
        elif stripped.startswith("#endif"):
            stack.pop()
        for name in KERNEL.findall(line):
            if any(" #el" in guard for guard in stack):
                raise EmulationError(f"{source.name}: kernel {name} sits in an #else/#elif branch, not modelled")
            guards[name] = list(stack)
    return guards


def translation_unit(source: Path, text: str) -> str:
    """The header, the kernel source as it is, storage for its dynamic shared memory, a launcher per kernel."""
    guards = kernel_guards(source, text)
    kernels = KERNEL.findall(text)
    if set(kernels) != set(guards):  # a declaration split across lines: the guards cannot be told
        raise EmulationError(f"{source.name}: write each kernel's 'extern \"C\" __global__ void name(' on one line")
    shared = sorted(set(SHARED.findall(text)))
    if len(shared) > 1:
        raise EmulationError(f"{source.name} declares dynamic shared memory under several names or types: {shared}")
    lines = [f'#include "{HEADER}"', f'#include "{source}"']
    if shared:
        kind, name = shared[0]
        lines.append(f"alignas(256) {kind} {name}[{SHARED_CAPACITY} / sizeof({kind})];")
        storage = f"{name}, sizeof({name})"
    else:
        storage = "nullptr, 0"
    lines.append(
        "static void report(const std::string& why, char* out, size_t size) {"
        ' std::snprintf(out, size, "%s", why.c_str()); }'
    )
    for kernel in kernels:
        lines.extend(guards[kernel])
        lines.append(
            f'extern "C" int cuda_cpu_launch_{kernel}(unsigned grid, unsigned block, size_t shared_bytes, void** args, '
            f"char* error, size_t error_size) {{ auto why = cuda_cpu::launch({kernel}, "
            f"cuda_cpu::Launch{{grid, block, shared_bytes}}, {storage}, args); report(why, error, error_size); "
            f"return why.empty() ? 0 : 1; }}"
        )
        lines.append(
            f'extern "C" const char* cuda_cpu_signature_{kernel}() {{ static std::string s = '
            f"cuda_cpu::signature({kernel}); return s.c_str(); }}"
        )
        lines.extend("#endif" for _ in guards[kernel])
    return "\n".join(lines) + "\n"


def build(source: Path, defines: dict[str, object] | None = None) -> Path:
    """The shared library of the .cu file ``source`` compiled with ``defines``."""
    return build_text(Path(source).read_text(), Path(source).stem, defines)


def build_text(text: str, stem: str, defines: dict[str, object] | None = None, cache: Path | None = None) -> Path:
    """The shared library of the CUDA source ``text``, built once per distinct input (source, header, flags)."""
    cache = cache or Path(tempfile.gettempdir()) / "airflow_gpu_cuda_on_cpu"
    cache.mkdir(parents=True, exist_ok=True)
    source = cache / f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:20]}.cu"
    if not source.exists() or source.read_text() != text:
        _write_atomically(source, text)
    flags = [*FLAGS, f"-I{HEADER.parent}"] + [f"-D{key}={value}" for key, value in sorted((defines or {}).items())]
    unit = translation_unit(source, text)
    headers = [path.read_text() for path in (HEADER, *STAND_INS)]
    digest = hashlib.sha256("\0".join([*headers, text, unit, *flags]).encode()).hexdigest()[:20]
    library = cache / f"{stem}-{digest}.so"
    if library.exists():
        return library
    # One build per input even when several test workers need it at once: the first builds, the others
    # wait on the lock and find the library (a g++ build of als.cu takes seconds of CPU).
    with open(cache / f"{stem}-{digest}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if library.exists():
            return library
        unit_path = cache / f"{stem}-{digest}.cpp"
        _write_atomically(unit_path, unit)
        partial = cache / f"{stem}-{digest}.{os.getpid()}.so"
        result = subprocess.run(
            ["g++", *flags, "-o", str(partial), str(unit_path)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise EmulationError(f"g++ could not build {stem} for the CPU:\n{result.stderr[-4000:]}")
        os.replace(partial, library)  # atomic: a reader never sees half a library
    return library


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)


class RawKernel:
    """One kernel of the emulated module, called as CuPy's RawKernel is: (grid, block, args, shared_mem=)."""

    def __init__(self, library: ctypes.CDLL, name: str, launches: list[str]) -> None:
        self.name, self.launches = name, launches
        signature_of = getattr(library, f"cuda_cpu_signature_{name}")
        signature_of.restype = ctypes.c_char_p
        self.signature = signature_of().decode().split(",")
        self._launch = getattr(library, f"cuda_cpu_launch_{name}")
        self._launch.argtypes = [
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        self._launch.restype = ctypes.c_int
        self.max_dynamic_shared_size_bytes = 0
        # what CuPy reads from the driver; nothing of it exists on the CPU
        self.attributes = {
            "num_regs": None,
            "local_size_bytes": None,
            "shared_size_bytes": None,
            "max_threads_per_block": 1024,
        }

    def _pack(self, args) -> tuple[ctypes.Array, list]:
        if len(args) != len(self.signature):
            raise EmulationError(f"{self.name}: {len(args)} arguments for {len(self.signature)} parameters")
        values = []
        for n, (arg, code) in enumerate(zip(args, self.signature)):
            if code.startswith("*"):
                dtype = DTYPES[code[1:]]
                if not (isinstance(arg, np.ndarray) and arg.dtype == dtype and arg.flags.c_contiguous):
                    raise EmulationError(
                        f"{self.name} argument {n}: {type(arg).__name__} "
                        f"{getattr(arg, 'dtype', '')}, expected a contiguous {np.dtype(dtype)} array"
                    )
                values.append(ctypes.c_void_p(arg.ctypes.data))
            else:
                dtype = DTYPES[code]
                if type(arg) is not dtype:  # a width the kernel does not expect would be read wrongly on a GPU
                    raise EmulationError(f"{self.name} argument {n}: {type(arg).__name__}, expected {dtype.__name__}")
                values.append(CTYPES[code](arg))
        pointers = (ctypes.c_void_p * max(len(values), 1))(*[ctypes.addressof(v) for v in values])
        return pointers, values  # values kept alive through the call

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        grid, block = tuple(grid), tuple(block)
        if len(grid) != 1 or len(block) != 1:
            raise EmulationError(f"{self.name}: only 1-D launches are modelled, got grid {grid} block {block}")
        limit = max(DEFAULT_SHARED_LIMIT, self.max_dynamic_shared_size_bytes)
        if shared_mem > limit:
            raise EmulationError(
                f"{self.name}: {shared_mem} bytes of dynamic shared memory without opting in "
                f"(max_dynamic_shared_size_bytes is {self.max_dynamic_shared_size_bytes})"
            )
        pointers, _values = self._pack(args)
        error = ctypes.create_string_buffer(2048)
        self.launches.append(self.name)
        if self._launch(int(grid[0]), int(block[0]), int(shared_mem), pointers, error, len(error)) != 0:
            raise EmulationError(f"{self.name}: {error.value.decode()}")


class RandomState:
    """cupy.random.RandomState's draws the solver uses, which take a dtype (numpy's RandomState's do not)."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = np.random.default_rng(seed)

    def random_sample(self, size, dtype=np.float64):
        return self.generator.random(size, dtype=dtype)

    def standard_normal(self, size, dtype=np.float64):
        return self.generator.standard_normal(size, dtype=dtype)


class NumpyCupy(types.SimpleNamespace):
    """numpy under the names of CuPy the native solver calls, with RawModule compiled for the CPU.

    ``source`` replaces the module's code (a mutated copy of als.cu, say); ``attributes`` are the
    device's (CUDA attribute names as CuPy spells them)."""

    def __init__(
        self, *, free_bytes: int = 1 << 34, source: Path | None = None, attributes: dict[str, int] | None = None
    ) -> None:
        super().__init__()
        self.launches: list[str] = []
        self.options: tuple = ()
        self.ndarray = np.ndarray
        fake = self

        class RawModule:
            def __init__(self, code: str, options=()):
                fake.options = tuple(options)
                defines = dict(option[2:].split("=", 1) for option in options if option.startswith("-D"))
                text = Path(source).read_text() if source is not None else code
                self.library = ctypes.CDLL(
                    str(build_text(text, "als" if source is None else Path(source).stem, defines))
                )

            def get_function(self, name: str) -> RawKernel:
                return RawKernel(self.library, name, fake.launches)

        self.RawModule = RawModule
        # host <-> device always copies, as it does on a real GPU
        self.asarray = lambda a, dtype=None: np.array(a, dtype=dtype)
        self.asnumpy = lambda a: np.array(a)
        self.random = types.SimpleNamespace(RandomState=RandomState)
        device = types.SimpleNamespace(
            synchronize=lambda: None,
            attributes={"MultiProcessorCount": 2, "MaxSharedMemoryPerBlockOptin": 232_448, **(attributes or {})},
        )
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(memGetInfo=lambda: (free_bytes, free_bytes * 2)), Device=lambda *a: device
        )

    def __getattr__(self, name):
        return getattr(np, name)

    # one object per fake device, usable as a key (as the cupy module is)
    __eq__ = object.__eq__
    __hash__ = object.__hash__


class _Event:
    """cupy.cuda.Event on the CPU: the host clock at record(), all launches being synchronous here."""

    def record(self, stream=None) -> None:
        self.at = time.perf_counter()


def as_cupy_module(**options) -> NumpyCupy:
    """A NumpyCupy complete enough to stand in sys.modules["cupy"] for a benchmark script's plumbing:
    events, device properties, the memory pool. Its timings are the CPU's and mean nothing."""
    fake = NumpyCupy(**options)
    device = fake.cuda.Device()
    device.id, device.compute_capability = 0, "90"
    fake.cuda.Event = _Event
    fake.cuda.get_elapsed_time = lambda start, end: (end.at - start.at) * 1e3
    fake.cuda.runtime.getDeviceCount = lambda: 1
    fake.cuda.runtime.getDeviceProperties = lambda index: {"name": b"CPU (als.cu emulated)"}
    fake.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    return fake
