"""The worker's GPU/CPU profile: recorded NVML samples replayed through the reader interface (no GPU here)."""

from __future__ import annotations

import json

import pytest

from airflow_gpu.worker import profile
from airflow_gpu.worker.profile import GiB, GpuReading, ReplayReader, Sampler, profiled, summary_lines


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _h100(sm: float, used_gib: float, watts: float | None = 300.0, index: int = 0) -> GpuReading:
    return GpuReading(index, "NVIDIA H100 80GB HBM3", sm, int(used_gib * GiB), 80 * GiB, watts)


def _run(samples, *, step: float = 1.0, cpu_per_step: float = 0.5, rss_gib: float = 2.0) -> dict:
    """Sample ``samples`` one tick apart, as the thread would, on an injected clock."""
    clock, cpu = Clock(), [0.0]
    sampler = Sampler(
        ReplayReader(samples), clock=clock, cpu_seconds=lambda: cpu[0], rss_bytes=lambda: int(rss_gib * GiB)
    )
    for _ in samples:
        clock.now += step
        cpu[0] += cpu_per_step * step
        sampler.sample_once()
    return sampler.document()


def test_a_busy_gpu_gets_its_summary_line_with_mean_max_memory_and_power():
    document = _run([[_h100(80, 40.0, 300)], [_h100(100, 61.2, 320)], [_h100(81, 50.0, 316)]], step=50.333)
    gpu = document["gpus"][0]
    assert gpu["sm_mean_percent"] == 87.0 and gpu["sm_max_percent"] == 100
    assert gpu["memory_peak_gib"] == pytest.approx(61.2, abs=1e-3) and gpu["memory_total_gib"] == 80.0
    assert gpu["power_mean_w"] == 312.0
    assert summary_lines(document) == [
        "gpu 0 (NVIDIA H100 80GB HBM3): SM 87% mean / 100% max, memory 61.2 of 80.0 GiB peak, 312 W mean, 2 min 31 s"
    ]
    assert document["cpu"]["cores_mean"] == pytest.approx(0.5)
    assert document["cpu"]["rss_peak_gib"] == pytest.approx(2.0)


def test_a_mostly_idle_gpu_for_over_five_minutes_gets_a_hint():
    idle = [[_h100(10, 5.0)]] * 7
    assert "hint" in summary_lines(_run(idle, step=60))[0]
    assert "hint" not in summary_lines(_run(idle, step=10))[0]  # 70 s: too short to judge
    assert "hint" not in summary_lines(_run([[_h100(90, 5.0)]] * 7, step=60))[0]


def test_each_gpu_gets_its_own_line_and_a_board_without_power_says_none():
    document = _run([[_h100(50, 10, None, 0), _h100(70, 20, None, 1)]] * 2)
    lines = summary_lines(document)
    assert [line.split(" (")[0] for line in lines] == ["gpu 0", "gpu 1"]
    assert " W mean" not in lines[0]


def test_without_a_gpu_the_cpu_side_is_profiled_and_the_line_says_why():
    clock = Clock()
    sampler = Sampler(
        None,
        no_gpu_reason="pynvml is not installed",
        clock=clock,
        cpu_seconds=lambda: clock.now * 1.5,
        rss_bytes=lambda: 3 * GiB,
    )
    for _ in range(3):
        clock.now += 1
        sampler.sample_once()
    document = sampler.document()
    assert document["gpus"] == [] and document["no_gpu_reason"] == "pynvml is not installed"
    assert summary_lines(document) == [
        "cpu: 1.5 cores mean, 3.0 GiB peak memory, 3 s (no GPU profile: pynvml is not installed)"
    ]


def test_a_failing_read_costs_one_sample_not_the_job():
    class Flaky(ReplayReader):
        def read(self):
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")

    sampler = Sampler(Flaky([]), clock=Clock())
    sampler.sample_once()
    sampler.sample_once()
    assert sampler.errors == 2 and sampler.document()["cpu"]["samples"]


def test_a_recorded_profile_replays_to_the_same_summary():
    document = _run([[_h100(80, 40.0, 300)], [_h100(100, 61.2, 320)], [_h100(81, 50.0, 316)]], step=50.333)
    replayed = _run(ReplayReader.from_profile(json.loads(json.dumps(document)))._samples, step=50.333)
    assert summary_lines(replayed) == summary_lines(document)


def test_profiled_logs_the_summary_and_publishes_through_current_document(caplog):
    reader = ReplayReader([[_h100(60, 10.0)]])
    with caplog.at_level("INFO", logger="airflow_gpu.worker"), profiled(reader, interval=3600) as run:
        during = json.loads(profile.profile_bytes())
        assert during["format"] == "airflow-gpu-profile" and during["gpus"][0]["name"].startswith("NVIDIA H100")
    assert profile.current_document() is None  # none outside a job
    assert reader.closed
    assert run.document["gpus"][0]["sm_mean_percent"] == 60.0
    assert any(r.getMessage().startswith("profile: gpu 0 (NVIDIA H100") for r in caplog.records)


def test_the_profile_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(profile.PROFILE_ENV, "0")
    with profiled(ReplayReader([])) as run:
        assert profile.current_document() is None
    assert run.document is None


def test_a_plain_commands_cpu_side_is_read_from_its_own_process_and_kept_once_it_is_gone():
    import os

    counters = profile.ProcessCounters(os.getpid())  # any live process: this one
    assert counters.cpu_seconds() > 0 and counters.rss_bytes() > 0
    gone = profile.ProcessCounters(2**22 + 1)  # above Linux's pid_max: never a process
    assert (gone.cpu_seconds(), gone.rss_bytes()) == (0.0, 0)
