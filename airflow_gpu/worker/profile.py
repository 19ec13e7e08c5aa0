"""The GPU and CPU profile of every job the worker runs: a sampler thread, its summary line and profile.json.

Once a second a daemon thread reads, per GPU, SM utilization, memory used and total, and power
(NVML, through ``pynvml``), and the worker process's CPU time and resident memory (stdlib only:
``resource`` and /proc). At the end one line per GPU goes into the job's log::

    gpu 0 (NVIDIA H100 80GB): SM 87% mean / 100% max, memory 61.2 of 80.0 GiB peak, 312 W mean, 2 min 31 s

and the samples go into ``profile.json`` beside the outputs (listed in the manifest: the
publisher adds it just before its commit point). A GPU held at under 30% mean SM utilization
for over 5 minutes gets a hint in its line. Without NVML (no GPU, no driver, or ``pynvml`` not
installed) only the CPU side is profiled, and the line says why.

The readers sit behind :class:`GpuReader`, so a test replays recorded samples
(:class:`ReplayReader`) where there is no GPU. The sampler's own cost is measured in
benchmarks/profile_overhead.py (target: under 1% of one core).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

log = logging.getLogger("airflow_gpu.worker")

PROFILE_FILE = "profile.json"
PROFILE_FORMAT = "airflow-gpu-profile"
PROFILE_VERSION = 1
#: A job that held a GPU longer than this at under IDLE_SM_PERCENT mean gets a hint.
IDLE_AFTER_S = 300.0
IDLE_SM_PERCENT = 30.0
GiB = 1024**3
#: Set to 0 to switch the profile off (the benchmark compares a run with and without it).
PROFILE_ENV = "AIRFLOW_GPU_PROFILE"


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant."""

    index: int
    name: str
    sm_percent: float
    memory_used: int  # bytes
    memory_total: int  # bytes
    power_w: float | None


class GpuReader(Protocol):
    """What the sampler needs of NVML."""

    def read(self) -> Sequence[GpuReading]: ...

    def close(self) -> None: ...


class NvmlReader:
    """The GPUs as NVML reports them; built by :func:`open_gpu_reader`."""

    def __init__(self, nvml: Any, handles: list[Any], names: list[str]) -> None:
        self._nvml = nvml
        self._handles = handles
        self._names = names

    def read(self) -> list[GpuReading]:
        nvml = self._nvml
        readings = []
        for index, (handle, name) in enumerate(zip(self._handles, self._names)):
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000  # milliwatts
            except nvml.NVMLError:  # some boards do not report power
                power = None
            readings.append(GpuReading(index, name, float(utilization.gpu), int(memory.used), int(memory.total), power))
        return readings

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a library that is going away anyway
            pass


def open_gpu_reader() -> tuple[GpuReader | None, str]:
    """NVML's reader and "", or None and why there is no GPU profile (said in the summary line)."""
    try:
        import pynvml  # imported here: the CPU image and a laptop have no NVML
    except ImportError:
        return None, "pynvml is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return None, f"NVML is not available ({exc})"
    try:
        # The container runtime exposes only the job's own GPUs (Batch sets NVIDIA_VISIBLE_DEVICES), so all are ours.
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        names = [_text(pynvml.nvmlDeviceGetName(h)) for h in handles]
    except Exception as exc:  # noqa: BLE001
        pynvml.nvmlShutdown()
        return None, f"NVML could not list the GPUs ({exc})"
    if not handles:
        pynvml.nvmlShutdown()
        return None, "no GPU is visible to this job"
    return NvmlReader(pynvml, handles, names), ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ReplayReader:
    """Replays recorded samples (a list of reading lists, e.g. a profile.json's): for tests and benchmarks."""

    def __init__(self, samples: Sequence[Sequence[GpuReading]]) -> None:
        self._samples = list(samples)
        self._next = 0
        self.closed = False

    @classmethod
    def from_profile(cls, document: dict[str, Any]) -> ReplayReader:
        gpus = document["gpus"]
        steps = len(gpus[0]["samples"]) if gpus else 0
        return cls(
            [
                [
                    GpuReading(g["index"], g["name"], s[1], int(s[2] * GiB), int(g["memory_total_gib"] * GiB), s[3])
                    for g in gpus
                    for s in [g["samples"][step]]
                ]
                for step in range(steps)
            ]
        )

    def read(self) -> list[GpuReading]:
        readings = self._samples[min(self._next, len(self._samples) - 1)] if self._samples else []
        self._next += 1
        return list(readings)

    def close(self) -> None:
        self.closed = True


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class ProcessCounters:
    """CPU seconds and resident memory of another process (a plain command the entrypoint runs), from
    /proc/<pid>; once it is gone, its last values (its total CPU is then in RUSAGE_CHILDREN too)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._tick = os.sysconf("SC_CLK_TCK")
        self._cpu = 0.0
        self._rss = 0

    def cpu_seconds(self) -> float:
        try:
            with open(f"/proc/{self._pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
            # utime, stime, and those of its children it waited for (fields 14-17 of proc(5))
            self._cpu = sum(int(value) for value in fields[11:15]) / self._tick
        except (OSError, ValueError, IndexError):
            pass
        return self._cpu

    def rss_bytes(self) -> int:
        try:
            with open(f"/proc/{self._pid}/statm", "rb") as statm:
                self._rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
        return self._rss


@dataclass
class _GpuSeries:
    name: str
    memory_total: int
    samples: list[tuple[float, float, float, float | None]] = field(default_factory=list)  # t, SM %, GiB used, W


class Sampler:
    """Samples the GPUs and this process every ``interval`` seconds on a daemon thread.

    ``clock`` and a reader are injectable; :meth:`sample_once` takes one sample on the caller's
    thread (what the thread does each tick), so a test needs neither the thread nor sleeps.
    """

    def __init__(
        self,
        reader: GpuReader | None,
        *,
        no_gpu_reason: str = "",
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        cpu_seconds: Callable[[], float] = _cpu_seconds,
        rss_bytes: Callable[[], int] = _rss_bytes,
    ) -> None:
        self.reader = reader
        self.no_gpu_reason = no_gpu_reason
        self.interval = interval
        self._clock = clock
        self._cpu_seconds = cpu_seconds
        self._rss_bytes = rss_bytes
        self._started = clock()
        self._cpu_at_start = cpu_seconds()
        self._last = (self._started, self._cpu_at_start)
        self._gpus: dict[int, _GpuSeries] = {}
        self._cpu: list[tuple[float, float, float]] = []  # t, cores used since the last sample, GiB resident
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="airflow-gpu-profile", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_once()

    def sample_once(self) -> None:
        now = self._clock()
        readings: Sequence[GpuReading] = ()
        if self.reader is not None:
            try:
                readings = self.reader.read()
            except Exception as exc:  # noqa: BLE001 - a profile never fails the job
                self.errors += 1
                if self.errors == 1:
                    log.warning("profile: reading the GPUs failed (%s); the profile goes on without that sample", exc)
        cpu = self._cpu_seconds()
        rss = self._rss_bytes()
        with self._lock:
            t = now - self._started
            last_t, last_cpu = self._last
            cores = (cpu - last_cpu) / (now - last_t) if now > last_t else 0.0
            self._last = (now, cpu)
            self._cpu.append((round(t, 3), round(cores, 3), round(rss / GiB, 4)))
            for r in readings:
                series = self._gpus.setdefault(r.index, _GpuSeries(r.name, r.memory_total))
                power = None if r.power_w is None else round(r.power_w, 1)
                series.samples.append((round(t, 3), r.sm_percent, round(r.memory_used / GiB, 4), power))

    def stop(self) -> dict[str, Any]:
        """Stop the thread, take a last sample, and return the profile document."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample_once()
        if self.reader is not None:
            self.reader.close()
        return self.document()

    def document(self) -> dict[str, Any]:
        """The profile so far (profile.json): summaries and samples, per GPU and for the CPU side."""
        with self._lock:
            duration = self._last[0] - self._started
            cpu_total = self._last[1] - self._cpu_at_start
            children = resource.getrusage(resource.RUSAGE_CHILDREN)  # a command's own process, once it ended
            gpus = [_gpu_summary(index, series) for index, series in sorted(self._gpus.items())]
            cpu_samples = list(self._cpu)
        peak_rss = max((s[2] for s in cpu_samples), default=0.0)
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "interval_s": self.interval,
            "duration_s": round(duration, 3),
            "gpus": gpus,
            "no_gpu_reason": self.no_gpu_reason if not gpus else None,
            "cpu": {
                "cores_mean": round(cpu_total / duration, 3) if duration > 0 else None,
                "rss_peak_gib": round(peak_rss, 4),
                "children_cpu_s": round(children.ru_utime + children.ru_stime, 3),
                "children_rss_peak_gib": round(children.ru_maxrss * 1024 / GiB, 4),
                "samples": cpu_samples,  # [t, cores since the previous sample, GiB resident]
            },
        }


def _gpu_summary(index: int, series: _GpuSeries) -> dict[str, Any]:
    sm = [s[1] for s in series.samples]
    power = [s[3] for s in series.samples if s[3] is not None]
    return {
        "index": index,
        "name": series.name,
        "sm_mean_percent": round(sum(sm) / len(sm), 1) if sm else None,
        "sm_max_percent": max(sm, default=None),
        "memory_peak_gib": round(max((s[2] for s in series.samples), default=0.0), 3),
        "memory_total_gib": round(series.memory_total / GiB, 3),
        "power_mean_w": round(sum(power) / len(power), 1) if power else None,
        "samples": [list(s) for s in series.samples],  # [t, SM %, GiB used, W]
    }


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def summary_lines(document: dict[str, Any]) -> list[str]:
    """One line per GPU (or one for the CPU side when there was none), for the job's log and its report."""
    duration = document.get("duration_s") or 0.0
    lines = []
    for gpu in document.get("gpus") or ():
        power = "" if gpu["power_mean_w"] is None else f", {gpu['power_mean_w']:.0f} W mean"
        line = (
            f"gpu {gpu['index']} ({gpu['name']}): SM {gpu['sm_mean_percent']:.0f}% mean / {gpu['sm_max_percent']:.0f}% max, "
            f"memory {gpu['memory_peak_gib']:.1f} of {gpu['memory_total_gib']:.1f} GiB peak{power}, {_duration(duration)}"
        )
        if duration > IDLE_AFTER_S and gpu["sm_mean_percent"] is not None and gpu["sm_mean_percent"] < IDLE_SM_PERCENT:
            line += (
                f"; hint: this GPU was busy under {IDLE_SM_PERCENT:.0f}% of the time: a smaller instance type, "
                f"or more work per job, would waste less"
            )
        lines.append(line)
    if not lines:
        cpu = document.get("cpu") or {}
        cores = cpu.get("cores_mean")
        cores_text = "-" if cores is None else f"{cores:.1f}"
        lines.append(
            f"cpu: {cores_text} cores mean, {cpu.get('rss_peak_gib', 0):.1f} GiB peak memory, {_duration(duration)} "
            f"(no GPU profile: {document.get('no_gpu_reason') or 'no GPU'})"
        )
    return lines


_current: Sampler | None = None


def current_document() -> dict[str, Any] | None:
    """The running job's profile so far, or None when none runs (the publisher adds it to the outputs)."""
    sampler = _current
    if sampler is None:
        return None
    sampler.sample_once()  # up to this instant, so a short job has its samples too
    return sampler.document()


def profile_bytes() -> bytes | None:
    document = current_document()
    return None if document is None else json.dumps(document, separators=(",", ":")).encode()


class profiled:
    """``with profiled(): ...`` samples the job for its duration and logs its summary at the end.

    A reader may be given (tests); by default NVML's, or none. ``process``: the CPU side is that
    process's (a plain command the entrypoint runs), not this one's. ``AIRFLOW_GPU_PROFILE=0``
    switches it off.
    """

    def __init__(
        self,
        reader: GpuReader | None = None,
        *,
        no_gpu_reason: str = "",
        interval: float = 1.0,
        process: int | None = None,
    ) -> None:
        self._reader = reader
        self._no_gpu_reason = no_gpu_reason
        self._interval = interval
        self._process = process
        self.document: dict[str, Any] | None = None

    def __enter__(self) -> profiled:
        global _current
        if os.environ.get(PROFILE_ENV, "1") == "0":
            return self
        reader, why = (self._reader, self._no_gpu_reason) if self._reader is not None else open_gpu_reader()
        counters: dict[str, Any] = {}
        if self._process is not None and os.path.exists(f"/proc/{self._process}/stat"):
            other = ProcessCounters(self._process)
            counters = {"cpu_seconds": other.cpu_seconds, "rss_bytes": other.rss_bytes}
        _current = Sampler(reader, no_gpu_reason=why, interval=self._interval, **counters).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _current
        sampler, _current = _current, None
        if sampler is None:
            return
        self.document = sampler.stop()
        for line in summary_lines(self.document):
            log.info("profile: %s", line)
