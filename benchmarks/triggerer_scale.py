"""Thousands of deferred GPU jobs in one triggerer: GpuBatchJobTrigger against the amazon provider's BatchJobTrigger.

Three kinds of process, so that each figure belongs to one of them:

* the **server**: a moto server (Batch without docker, CloudWatch Logs) whose jobs stay
  RUNNING until a set time and then SUCCEED. It counts DescribeJobs and FilterLogEvents
  calls as they arrive. Jobs, log group and streams are created inside it, straight in
  moto's backend (setup, not measured: SubmitJob over HTTP would take minutes at 10,000).
  While a job runs, it writes a log line every ``--log-every`` seconds, and a last line
  when it ends. DescribeJobs answers from each job's description serialized once per
  state change (moto scans all jobs and serializes again on every call), so that the
  server, which shares the two cores, never sets the pace;
* one **trigger process** per side and N: N triggers in one event loop, each trigger's
  ``run()`` a task that consumes its events, with structlog contextvars bound and a
  greenback portal, as Airflow 3's triggerer runs them, and logging configured as in
  the triggerer's subprocess (structlog JSON, unbuffered, into a socket that another
  process drains, as the triggerer's supervisor does). It samples its own CPU time and
  peak RSS;
* this **main** process, which imports neither Airflow nor moto: it starts the others,
  starts the jobs' clock once every job has been described at least once (all triggers
  are up), and prints the table.

A job's end is a fixed time on the server's clock; the delay is the time from then to
its trigger's event, on the same machine's clock. Job ends are spread evenly over one
poll interval, so they fall on every phase of the poll cycle.

    .venv/bin/python benchmarks/triggerer_scale.py                       # N = 100, 1000, 10000
    .venv/bin/python benchmarks/triggerer_scale.py --jobs 100 --job-seconds 10 --poll 5
    .venv/bin/python benchmarks/triggerer_scale.py --jobs 10000 --anchor-max 0 --profile /tmp/prof   # py-spy, ours
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# tests.support: the moto harness the tests share (a spawned server process inherits this path)
sys.path.insert(0, str(ROOT))
LOG_GROUP = "/aws/batch/job"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# -- the server process ----------------------------------------------------------------------------


@dataclass(order=True)
class _Due:
    at: float
    job_id: str = field(compare=False)


class BenchServer:
    """Runs in the server process: moto plus the job clock, the log writer and the call counts."""

    def __init__(self, log_every: float) -> None:
        os.environ.update(FAKE_CREDENTIALS)
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        from tests.support.moto_aws import start_moto

        self.server, self.aws = start_moto()
        self.log_every = log_every
        self.batch: Any = None  # moto's backends, fetched again after each reset (which replaces them)
        self.logs: Any = None
        self.lock = threading.Lock()
        self.end_at: dict[str, float] = {}
        self.streams: dict[str, str] = {}
        self.index: dict[str, int] = {}
        self.described_json: dict[str, str] = {}
        self.finished: set[str] = set()
        self.described: set[str] = set()
        self.seen_ended: dict[str, float] = {}  # job id -> when a DescribeJobs first answered it ended
        self.due: list[_Due] = []  # log lines and job ends, by time
        self.lines_written = 0
        self._clock = threading.Thread(target=self._run_clock, daemon=True)
        self._clock.start()

    def _describe_jobs_reply(self, job_ids: list[str]) -> str:
        """DescribeJobs from each job's description, serialized once per state change.

        moto scans every job for each call and serializes each description again (10,000 jobs,
        100 calls a cycle); a Batch server is not the subject here, so it must never set the pace.
        """
        now = time.time()
        parts = []
        for job_id in job_ids:
            if job_id not in self.finished and now >= self.end_at.get(job_id, math.inf):
                self._finish(job_id)  # due, and the clock thread has not come round yet
            text = self.described_json.get(job_id)
            if text is not None:
                self.described.add(job_id)
                if job_id in self.finished and '"SUCCEEDED"' in text:
                    self.seen_ended.setdefault(job_id, now)
                parts.append(text)
        return '{"jobs": [' + ", ".join(parts) + "]}"

    def _describe(self, job_id: str) -> None:
        self.described_json[job_id] = json.dumps(self.aws.batch.job(job_id).describe())

    def _finish(self, job_id: str) -> None:
        """The job ends at its set time: its last log line, then SUCCEEDED, as a container would."""
        from datetime import datetime

        with self.lock:
            if job_id in self.finished:
                return
            self.finished.add(job_id)
            end = self.end_at[job_id]
            self._put(job_id, end, f"job {self.index[job_id]} finished t={int(end * 1000)}")
            self.aws.batch.set_status(job_id, "SUCCEEDED")
            self.aws.batch.job(job_id).job_stopped_at = datetime.fromtimestamp(end)
            self._describe(job_id)

    def _put(self, job_id: str, at: float, message: str) -> None:
        self.logs.put_log_events(LOG_GROUP, self.streams[job_id], [{"timestamp": int(at * 1000), "message": message}])
        self.lines_written += 1

    def _run_clock(self) -> None:
        """Every 0.1 s: write the log lines that are due, and end the jobs whose time has come."""
        step: dict[str, int] = {}
        while True:
            time.sleep(0.1)
            now = time.time()
            ending = []
            with self.lock:
                while self.due and self.due[0].at <= now:
                    item = heapq.heappop(self.due)
                    job_id = item.job_id
                    if job_id in self.finished:
                        continue
                    if item.at >= self.end_at.get(job_id, math.inf):
                        ending.append(job_id)
                        continue
                    k = step[job_id] = step.get(job_id, 0) + 1
                    self._put(job_id, item.at, f"job {self.index[job_id]} step {k} t={int(item.at * 1000)}")
                    heapq.heappush(self.due, _Due(item.at + self.log_every, job_id))
            for job_id in ending:
                self._finish(job_id)

    # -- commands ----------------------------------------------------------------------------------

    def setup(self, n: int) -> list[str]:
        from moto.batch_simple import models as batch_simple_models
        from moto.logs import models as logs_models

        from tests.support.moto_aws import ACCOUNT, REGION

        self.aws.reset()
        self.aws.batch.answer("describejobs", self._describe_jobs_reply)
        self.batch = batch_simple_models.batch_simple_backends[ACCOUNT][REGION]
        self.logs = logs_models.logs_backends[ACCOUNT][REGION]
        self.aws.batch.hold("RUNNING")
        env = self.aws.create_gpu_batch_environment()
        self.logs.create_log_group(LOG_GROUP, tags={})
        with self.lock:
            self.end_at.clear()
            self.streams.clear()
            self.index.clear()
            self.described_json.clear()
            self.finished.clear()
            self.described.clear()
            self.seen_ended.clear()
            self.due.clear()
            self.lines_written = 0
            ids = []
            for i in range(n):
                _, job_id, _ = self.batch.submit_job(
                    f"bench-{i}", env["job_definition"], env["job_queue"], array_properties={}
                )
                job = self.aws.batch.job(job_id)
                self.logs.create_log_stream(LOG_GROUP, job.log_stream_name)
                self.streams[job_id] = job.log_stream_name
                self.index[job_id] = i
                self._describe(job_id)
                ids.append(job_id)
        self.aws.log.reset()
        return ids

    def start(self, job_seconds: float, poll: float) -> dict[str, Any]:
        """Start the clock: jobs end at now + job_seconds + [0, poll), spread evenly in a shuffled order
        (triggers start in job order, so an orderly spread would line job ends up with poll phases)."""
        t0 = time.time()
        with self.lock:
            n = max(len(self.index), 1)
            slots = list(range(len(self.index)))
            random.Random(len(slots)).shuffle(slots)
            for job_id, slot in zip(self.index, slots):
                end = self.end_at[job_id] = t0 + job_seconds + poll * slot / n
                heapq.heappush(self.due, _Due(end, job_id))
                if self.log_every > 0:
                    heapq.heappush(self.due, _Due(t0 + self.log_every * slot / n, job_id))
        return {"end_at": dict(self.end_at), "server_cpu": time.process_time(), "at": time.time()}

    def stats(self) -> dict[str, Any]:
        with self.aws.log.lock:
            describes = [(at, len(ids)) for at, ids in self.aws.log.describe_batches]
            filters = [at for at, key in self.aws.log.aws_call_times if key == "logs:filterlogevents"]
        return {
            "describes": describes,
            "filters": filters,
            "lines_written": self.lines_written,
            "seen_ended": dict(self.seen_ended),
            "server_cpu": time.process_time(),
            "at": time.time(),
        }


def server_main(conn: Any, log_every: float) -> None:
    # Any error, at start-up or in a command, travels back to the parent as ("error", text), so the
    # parent fails at once with the server's own message instead of waiting on a dead process.
    try:
        bench = BenchServer(log_every)
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    conn.send(("ok", bench.aws.endpoint_url))
    while True:
        command, *args = conn.recv()
        try:
            if command == "stop":
                bench.server.stop()
                conn.send(("ok", None))
                return
            if command == "described":
                conn.send(("ok", len(bench.described)))
                continue
            conn.send(("ok", getattr(bench, command)(*args)))
        except Exception as exc:
            conn.send(("error", f"{command}: {type(exc).__name__}: {exc}"))


class ServerDied(RuntimeError):
    """The benchmark's moto server process failed; the message is its own error."""


class ServerHandle:
    def __init__(self, log_every: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=server_main, args=(child, log_every), name="moto-bench-server", daemon=True
        )
        self.process.start()
        self.endpoint = self._reply()

    def call(self, command: str, *args: Any) -> Any:
        self.conn.send((command, *args))
        return self._reply()

    def _reply(self) -> Any:
        while not self.conn.poll(0.5):
            if not self.process.is_alive():
                raise ServerDied(f"the moto server process exited with code {self.process.exitcode} before answering")
        status, value = self.conn.recv()
        if status == "error":
            raise ServerDied(f"the moto server process failed: {value}")
        return value

    def stop(self) -> None:
        try:
            self.call("stop")
        finally:
            self.process.join(10)


# -- the trigger process ---------------------------------------------------------------------------


def child_main(args: argparse.Namespace) -> None:
    """N triggers of one side in one event loop, as the triggerer runs them."""
    os.environ.update(FAKE_CREDENTIALS)
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": args.endpoint, "region_name": "us-east-1"},
        }
    )
    import asyncio

    # The triggerer's runner writes JSON log records, unbuffered, to a socket that its supervisor
    # (another process) reads; here `cat` plays the supervisor, writing them to a file.
    import socket

    from airflow.sdk.log import configure_logging, reset_logging

    ours_end, supervisor_end = socket.socketpair()
    with open(args.log_file, "wb") as sink:
        supervisor = subprocess.Popen(["cat"], stdin=supervisor_end.fileno(), stdout=sink)
    supervisor_end.close()
    log_io = os.fdopen(ours_end.detach(), "wb", buffering=0)
    reset_logging()
    configure_logging(json_output=True, output=log_io, sending_to_supervisor=True)

    import greenback
    import structlog
    from structlog.contextvars import bind_contextvars

    if args.child == "ours":
        from airflow_gpu.triggers import GpuBatchJobTrigger

        def make(job_id: str):
            return GpuBatchJobTrigger(job_id, poll_interval=args.poll, stream_logs=not args.no_live_logs)
    else:
        from airflow.providers.amazon.aws.triggers.batch import BatchJobTrigger

        def make(job_id: str):
            return BatchJobTrigger(job_id=job_id, waiter_delay=int(args.poll), waiter_max_attempts=10**6)

    job_ids = json.loads(Path(args.ids).read_text())
    runner_log = structlog.get_logger("airflow.jobs.triggerer_job_runner")
    baseline_rss = _rss_kib("VmRSS")
    event_at: list[float | None] = [None] * len(job_ids)
    statuses: list[str | None] = [None] * len(job_ids)
    samples: list[tuple[float, float, int, int]] = []

    async def run_trigger(i: int, trigger: Any) -> None:
        # What TriggerRunner.run_trigger does around a trigger, minus the database.
        await greenback.ensure_portal()
        bind_contextvars(
            trigger_id=i + 1, ti_id=f"ti-{i}", dag_id="scale", task_id="gpu", run_id="bench", try_number=1, map_index=i
        )
        try:
            async for event in trigger.run():
                event_at[i] = time.time()
                statuses[i] = event.payload.get("status")
                await runner_log.ainfo("Trigger fired event", name=f"trigger {i}", result=event)
        finally:
            await trigger.cleanup()

    async def sample() -> None:
        while True:
            samples.append((time.time(), time.process_time(), _rss_kib("VmRSS"), _rss_kib("VmHWM")))
            await asyncio.sleep(0.5)

    async def main() -> None:
        sampler = asyncio.get_running_loop().create_task(sample())
        if args.trace_memory:
            import tracemalloc

            tracemalloc.start(1)
            before = tracemalloc.take_snapshot()
        tasks = [asyncio.create_task(run_trigger(i, make(job_id))) for i, job_id in enumerate(job_ids)]
        created = time.time(), time.process_time()
        if args.trace_memory:
            await asyncio.sleep(2 * args.poll)  # all triggers up, a cycle or two done
            _print_memory(tracemalloc.take_snapshot().compare_to(before, "filename"), len(job_ids))
        await asyncio.gather(*tasks)
        samples.append((time.time(), time.process_time(), _rss_kib("VmRSS"), _rss_kib("VmHWM")))
        sampler.cancel()
        results["created"] = created
        if args.child == "ours":
            # A triggerer's loop lives on and the watcher closes its client after a grace period;
            # this loop ends now, so close the shared clients rather than leave aiohttp sessions open.
            from airflow_gpu.jobs.follower import LogFollower
            from airflow_gpu.jobs.watcher import JobWatcher

            await LogFollower.close_all()
            await JobWatcher.close_all()

    results: dict[str, Any] = {}
    start = time.time(), time.process_time()
    start_thread = time.thread_time()
    asyncio.run(main())
    end = time.time(), time.process_time()
    results["loop_thread_cpu"] = time.thread_time() - start_thread
    log_io.close()
    supervisor.wait(30)
    results.update(
        start=start,
        end=end,
        samples=samples,
        event_at=event_at,
        statuses=statuses,
        peak_rss_kib=_rss_kib("VmHWM"),
        baseline_rss_kib=baseline_rss,
        log_records=_count_lines(args.log_file),
    )
    Path(args.out).write_text(json.dumps(results))


def _print_memory(diff: list, n: int) -> None:
    """Python allocations since the triggers were created, by file, per trigger (to stderr)."""
    total = sum(d.size_diff for d in diff)
    print(f"traced Python memory: +{total / 2**20:.1f} MiB, {total / n:.0f} B per trigger", file=sys.stderr)
    for d in diff[:25]:
        name = d.traceback[0].filename.split("site-packages/")[-1]
        print(f"{d.size_diff / n:8.0f} B/trigger  {d.size_diff / 2**20:6.1f} MiB  {name}", file=sys.stderr)


def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


# -- main ------------------------------------------------------------------------------------------


@dataclass
class SideResult:
    side: str
    n: int
    skipped: str | None = None
    calls_per_poll: float = math.nan
    max_calls_in_a_cycle: int = 0
    cpu_s: float = math.nan
    wall_s: float = math.nan
    cpu_watch_pct: float = math.nan
    startup_cpu_s: float = math.nan
    peak_rss_mb: float = math.nan
    baseline_rss_mb: float = math.nan
    max_delay_s: float = math.nan
    p50_delay_s: float = math.nan
    events_ok: int = 0
    log_records: int = 0
    filter_calls_per_s: float = math.nan
    max_filter_calls_in_a_second: int = 0
    lines_written: int = 0
    log_delay_p50_s: float = math.nan
    log_delay_max_s: float = math.nan
    lines_relayed: int = 0
    server_cpu_pct: float = math.nan

    @property
    def run_cpu_pct(self) -> float:
        """CPU over the whole run, from creating the triggers to the last event."""
        return 100 * self.cpu_s / self.wall_s if self.wall_s else math.nan


def run_side(server: ServerHandle, side: str, n: int, args: argparse.Namespace, workdir: Path) -> SideResult:
    print(f"[{side} N={n}] creating {n} jobs in the server...", flush=True)
    job_ids = server.call("setup", n)
    ids_file = workdir / f"{side}-{n}-ids.json"
    ids_file.write_text(json.dumps(job_ids))
    out = workdir / f"{side}-{n}-result.json"
    log_file = workdir / f"{side}-{n}-trigger-log.jsonl"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child", side,
        "--ids", str(ids_file),
        "--endpoint", server.endpoint,
        "--poll", str(args.poll),
        "--out", str(out),
        "--log-file", str(log_file),
    ]  # fmt: skip
    if args.trace_memory:
        command.append("--trace-memory")
    if args.no_live_logs:
        command.append("--no-live-logs")
    if args.profile and side == "ours":  # on-CPU samples of the trigger process, as collapsed stacks
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        py_spy = Path(sys.executable).with_name("py-spy")
        output = str(Path(args.profile) / f"ours-{n}.txt")
        command = [
            str(py_spy),
            "record",
            "--gil",
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            output,
            "--",
            *command,
        ]
    stderr = open(workdir / f"{side}-{n}-stderr.txt", "wb")
    started = time.time()
    child = subprocess.Popen(command, stdout=stderr, stderr=stderr, cwd=ROOT)
    try:
        print(f"[{side} N={n}] starting {n} triggers...", flush=True)
        while server.call("described") < n:  # every trigger is up once every job was described
            if child.poll() is not None:
                raise RuntimeError(f"{side} trigger process exited early; see {stderr.name}")
            if time.time() - started > args.start_timeout:
                child.kill()
                return SideResult(side, n, skipped=f"not all triggers up after {args.start_timeout:.0f} s")
            time.sleep(0.2)
        up = time.time() - started
        clock = server.call("start", args.job_seconds, args.poll)
        end_at = clock["end_at"]
        print(
            f"[{side} N={n}] all up after {up:.1f} s; jobs end in {args.job_seconds:.0f}-{args.job_seconds + args.poll:.0f} s",
            flush=True,
        )
        child.wait(timeout=args.job_seconds + args.poll + args.finish_timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        return SideResult(side, n, skipped="did not finish in time")
    finally:
        stderr.close()
    if child.returncode != 0:
        raise RuntimeError(f"{side} trigger process failed ({child.returncode}); see {stderr.name}")
    result = json.loads(out.read_text())
    stats = server.call("stats")
    (workdir / f"{side}-{n}-server.json").write_text(json.dumps({"end_at": end_at, "stats": stats}))
    summary = summarize(side, n, job_ids, end_at, result, stats, args, log_file)
    summary.server_cpu_pct = 100 * (stats["server_cpu"] - clock["server_cpu"]) / max(stats["at"] - clock["at"], 1e-9)
    return summary


def summarize(side, n, job_ids, end_at, result, stats, args, log_file) -> SideResult:
    if not stats["describes"]:
        return SideResult(side, n, skipped="no DescribeJobs calls seen")
    t_clock = min(end_at.values()) - args.job_seconds
    last_event = max(t for t in result["event_at"] if t is not None)
    delays = [t - end_at[j] for j, t in zip(job_ids, result["event_at"]) if t is not None]
    samples = result["samples"]

    def cpu_at(t: float) -> float:
        return min(samples, key=lambda s: abs(s[0] - t))[1]

    # Calls per poll interval, from the clock's start to the last event: the same formula for both sides.
    calls = _calls_between(stats["describes"], t_clock, last_event)
    filters = stats["filters"]
    log_delays = _log_delays(log_file) if side == "ours" else []
    return SideResult(
        side=side,
        n=n,
        calls_per_poll=calls / ((last_event - t_clock) / args.poll),
        max_calls_in_a_cycle=max(len(c) for c in _cycles([at for at, _ in stats["describes"]], gap=args.poll / 2)),
        cpu_s=result["end"][1] - result["start"][1],
        wall_s=result["end"][0] - result["start"][0],
        cpu_watch_pct=100 * (cpu_at(last_event) - cpu_at(t_clock)) / max(last_event - t_clock, 1e-9),
        startup_cpu_s=cpu_at(t_clock) - result["start"][1],
        peak_rss_mb=result["peak_rss_kib"] / 1024,
        baseline_rss_mb=result["baseline_rss_kib"] / 1024,
        max_delay_s=max(delays) if delays else math.nan,
        p50_delay_s=statistics.median(delays) if delays else math.nan,
        events_ok=sum(1 for s in result["statuses"] if s in ("SUCCEEDED", "success")),
        log_records=result["log_records"],
        filter_calls_per_s=len(filters) / (filters[-1] - filters[0]) if len(filters) > 1 else math.nan,
        max_filter_calls_in_a_second=_max_in_window(filters, 1.0),
        lines_written=stats["lines_written"],
        log_delay_p50_s=statistics.median(log_delays) if log_delays else math.nan,
        log_delay_max_s=max(log_delays) if log_delays else math.nan,
        lines_relayed=len(log_delays),
    )


def _calls_between(describes: list[tuple[float, int]], t_start: float, t_end: float) -> int:
    """DescribeJobs calls between two wall-clock times. The server stamps calls with
    time.monotonic(), which on Linux is one clock for every process."""
    offset = time.time() - time.monotonic()
    return sum(1 for at, _ in describes if t_start <= at + offset <= t_end)


def _cycles(stamps: list[float], gap: float) -> list[list[float]]:
    cycles: list[list[float]] = []
    for at in sorted(stamps):
        if cycles and at - cycles[-1][-1] <= gap:
            cycles[-1].append(at)
        else:
            cycles.append([at])
    return cycles


def _max_in_window(stamps: list[float], window: float) -> int:
    stamps = sorted(stamps)
    best, j = 0, 0
    for i, at in enumerate(stamps):
        while stamps[j] < at - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def _log_delays(log_file: Path) -> list[float]:
    """Seconds from each relayed container line's own timestamp (t=...) to the record relaying it."""
    from datetime import datetime

    delays = []
    with open(log_file, "rb") as f:
        for raw in f:
            if b" t=" not in raw:
                continue
            record = json.loads(raw)
            logged = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
            for line in str(record.get("event", "")).split("\n"):
                if " t=" in line:
                    delays.append(logged - int(line.rsplit("t=", 1)[1]) / 1000)
    return delays


def _ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "na"
    return f"{a / b:.1f}"


def print_table(results: list[tuple[SideResult, SideResult]], args: argparse.Namespace) -> None:
    print()
    print(
        f"poll {args.poll:g} s; jobs RUNNING {args.job_seconds:g} s once all triggers are up, ends spread over one poll; "
        f"ours relays a log line per job every {args.log_every:g} s" + (" (live logs off)" if args.no_live_logs else "")
    )
    print()
    print(
        "| N | side | DescribeJobs per poll (most in one cycle) | CPU s (startup) | CPU % of a core: watching / whole run "
        "| peak RSS MB | delay p50 / max s | events | log records | server CPU % |"
    )
    print("|" + " --- |" * 10)
    for pair in results:
        for r in pair:
            if r.skipped:
                print(f"| {r.n} | {r.side} | skipped: {r.skipped} | | | | | | | |")
                continue
            cycle = f" ({r.max_calls_in_a_cycle})" if r.side == "ours" else ""
            print(
                f"| {r.n} | {r.side} | {r.calls_per_poll:.1f}{cycle} | {r.cpu_s:.1f} ({r.startup_cpu_s:.1f}) | "
                f"{r.cpu_watch_pct:.2f} / {r.run_cpu_pct:.2f} | {r.peak_rss_mb:.0f} | {r.p50_delay_s:.1f} / {r.max_delay_s:.1f} | "
                f"{r.events_ok}/{r.n} | {r.log_records} | {r.server_cpu_pct:.0f} |"
            )
    print()
    print(
        "| N | calls anchor/ours | CPU anchor/ours | RSS anchor/ours | ours: FilterLogEvents per s (most in 1 s) "
        "| ours: log line delay p50 / max s | ours: log lines written / relayed |"
    )
    print("|" + " --- |" * 7)
    for anchor, ours in results:
        print(
            f"| {ours.n} | {_ratio(anchor.calls_per_poll, ours.calls_per_poll)} | {_ratio(anchor.cpu_s, ours.cpu_s)} | "
            f"{_ratio(anchor.peak_rss_mb, ours.peak_rss_mb)} | {ours.filter_calls_per_s:.2f} ({ours.max_filter_calls_in_a_second}) | "
            f"{ours.log_delay_p50_s:.1f} / {ours.log_delay_max_s:.1f} | {ours.lines_written} / {ours.lines_relayed} |"
        )
    print()
    for anchor, ours in results:
        for line in _targets(anchor, ours, args):
            print(line)
    print()
    for anchor, ours in results:
        print(
            f"triggers N={ours.n}: calls_ratio={_ratio(anchor.calls_per_poll, ours.calls_per_poll)} "
            f"cpu_ratio={_ratio(anchor.cpu_s, ours.cpu_s)} rss_ratio={_ratio(anchor.peak_rss_mb, ours.peak_rss_mb)} "
            f"max_delay_s={ours.max_delay_s:.2f}"
        )


def _targets(anchor: SideResult, ours: SideResult, args: argparse.Namespace) -> list[str]:
    """The issue's targets that apply to this N, each with its measured figure."""
    if ours.skipped:
        return []
    checks: list[tuple[str, float, float, bool]] = []  # (what, measured, bound, at most?)
    if ours.n >= 10_000:
        checks += [
            ("DescribeJobs calls in a cycle", ours.max_calls_in_a_cycle, math.ceil(ours.n / 100), True),
            ("CPU % of a core while watching", ours.cpu_watch_pct, 5.0, True),
            ("peak RSS MB", ours.peak_rss_mb, 300.0, True),
            ("slowest event after its job's end, s", ours.max_delay_s, args.poll + 2, True),
        ]
    if ours.n == 1000 and not anchor.skipped:
        checks += [
            ("fewer DescribeJobs calls than the anchor (x)", anchor.calls_per_poll / ours.calls_per_poll, 50.0, False),
            ("less CPU than the anchor (x)", anchor.cpu_s / ours.cpu_s, 20.0, False),
            ("less peak RSS than the anchor (x)", anchor.peak_rss_mb / ours.peak_rss_mb, 4.0, False),
        ]
    lines = []
    for what, measured, bound, at_most in checks:
        met = measured <= bound if at_most else measured >= bound
        lines.append(
            f"target N={ours.n}: {what} {measured:.2f} {'<=' if at_most else '>='} {bound:g}: {'met' if met else 'MISSED'}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", default="100,1000,10000", help="comma-separated N (default 100,1000,10000)")
    parser.add_argument(
        "--job-seconds", type=float, default=60.0, help="how long each job runs once all triggers are up"
    )
    parser.add_argument("--poll", type=float, default=30.0, help="poll interval of both sides, seconds (default 30)")
    parser.add_argument("--anchor-max", type=int, default=1000, help="skip the anchor above this N (default 1000)")
    parser.add_argument(
        "--log-every", type=float, default=10.0, help="each job writes a log line this often, seconds (0: none)"
    )
    parser.add_argument(
        "--start-timeout", type=float, default=900.0, help="give up on a side whose triggers are not all up by then"
    )
    parser.add_argument(
        "--finish-timeout", type=float, default=120.0, help="seconds past the last job end to wait for events"
    )
    parser.add_argument(
        "--profile", help="record our trigger process with py-spy (collapsed stacks, one file per N) into this folder"
    )
    parser.add_argument("--workdir", help="keep the per-run files (ids, results, trigger logs) here")
    parser.add_argument(
        "--no-live-logs", action="store_true", help="ours with stream_logs=False, to see what live logs cost"
    )
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="tracemalloc the trigger processes (slower); per-file figures in each side's stderr file",
    )
    # The trigger process re-enters this script with these:
    parser.add_argument("--child", choices=["ours", "anchor"], help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--log-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return 0

    sizes = [int(x) for x in args.jobs.split(",") if x.strip()]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="triggerer-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; files in {workdir}",
        flush=True,
    )
    server = ServerHandle(args.log_every)
    results = []
    try:
        for n in sizes:
            if n <= args.anchor_max:
                anchor = run_side(server, "anchor", n, args, workdir)
            else:
                anchor = SideResult("anchor", n, skipped=f"N > --anchor-max {args.anchor_max}")
            ours = run_side(server, "ours", n, args, workdir)
            results.append((anchor, ours))
            print(f"[N={n}] anchor: {anchor}\n[N={n}] ours: {ours}", flush=True)
    finally:
        server.stop()
    print_table(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
