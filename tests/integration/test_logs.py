"""Live logs while deferred: order, no duplicates or gaps, the shared rate limit, missing streams,
and which task log the lines go to. Against the moto server (CloudWatch Logs and Batch)."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog
from structlog.contextvars import bind_contextvars, merge_contextvars

from airflow_gpu.jobs.aws.backend import AwsBatchBackend
from airflow_gpu.jobs.aws.cloudwatch import CloudWatchLogReader, StreamCursor
from airflow_gpu.jobs.backend import BackendTarget, JobState
from airflow_gpu.jobs.follower import LogFollower
from airflow_gpu.jobs.loop_log import logs_written
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.triggers import GpuBatchJobTrigger
from tests.support.gpu_batch_testing import LineLog, collect_events, submit_raw
from tests.support.waiting import wait_until

GROUP = "/aws/batch/job"


@pytest.fixture
async def closed_after():
    yield
    await LogFollower.close_all()
    await JobWatcher.close_all()


@pytest.fixture
def small_pages(monkeypatch):
    """Pages of 7 events, so every read crosses page boundaries; and a faster limiter to match
    (7-event pages take ~1000 times the calls CloudWatch's own pages do). A last read then takes
    ~20 calls (it re-reads the late window), more than a loaded machine makes in the default 0.5 s
    (seen in a full run): these tests check what the last read relays, and
    test_a_busy_log_api_does_not_hold_the_event_up checks its deadline."""
    monkeypatch.setattr(CloudWatchLogReader, "page_limit", 7)
    monkeypatch.setattr(AwsBatchBackend, "logs_calls_per_second", 50.0)
    monkeypatch.setattr(AwsBatchBackend, "logs_burst", 10)
    monkeypatch.setattr(LogFollower, "final_read_timeout", 30.0)


def logs_client(moto_aws):
    return moto_aws.client("logs")


def make_stream(moto_aws, stream: str, group: str = GROUP) -> None:
    logs = logs_client(moto_aws)
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.create_log_stream(logGroupName=group, logStreamName=stream)


def put(
    moto_aws, stream: str, lines: list[str], *, at_ms: int | None = None, same_ms: bool = False, group: str = GROUP
) -> None:
    """Put lines, one ms apart (or all on one ms), ending at ``at_ms`` (default: now)."""
    end = int(time.time() * 1000) if at_ms is None else at_ms
    events = [
        {"timestamp": end if same_ms else end - len(lines) + 1 + i, "message": line} for i, line in enumerate(lines)
    ]
    logs_client(moto_aws).put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)


def stream_of(moto_aws, job_id: str) -> str:
    return moto_aws.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]["container"]["logStreamName"]


def running_trigger(moto_aws, gpu_batch, name: str, poll: float = 0.1) -> tuple[GpuBatchJobTrigger, str, LineLog]:
    job_id = submit_raw(moto_aws, gpu_batch, name)
    make_stream(moto_aws, stream_of(moto_aws, job_id))
    trigger = GpuBatchJobTrigger(job_id, poll_interval=poll)
    trigger._log = recorder = LineLog()
    return trigger, job_id, recorder


# -- through the trigger -------------------------------------------------------------------------------


async def test_lines_arrive_in_order_once_across_polls_pages_and_streams(
    moto_aws, gpu_batch, aws_conn, small_pages, closed_after
):
    moto_aws.batch.hold("RUNNING")
    jobs = [running_trigger(moto_aws, gpu_batch, f"chatty-{i}") for i in range(3)]
    tasks = [asyncio.create_task(collect_events(trigger)) for trigger, _, _ in jobs]
    follower = LogFollower.shared(BackendTarget())
    expected: dict[str, list[str]] = {job_id: [] for _, job_id, _ in jobs}

    for burst in range(4):  # the streams interleave; some bursts put many events on one millisecond
        for i, (_, job_id, _) in enumerate(jobs):
            lines = [f"job{i} burst{burst} line{n}" for n in range(5 + 4 * i)]
            put(moto_aws, stream_of(moto_aws, job_id), lines, same_ms=burst % 2 == 1)
            expected[job_id] += lines
        sweeps = follower.sweeps
        await wait_until(lambda: follower.sweeps >= sweeps + 2)
        await logs_written()  # records are written off the loop, by a thread that may lag the sweep
        for _, job_id, recorder in jobs:  # relayed while the job runs, about one poll later
            assert recorder.relayed(job_id) == expected[job_id]

    # The last lines land just before the job ends; the trigger's last read relays them before it fires.
    for i, (_, job_id, _) in enumerate(jobs):
        last = [f"job{i} final {n}" for n in range(9)]
        put(moto_aws, stream_of(moto_aws, job_id), last)
        expected[job_id] += last
        moto_aws.batch.set_status(job_id, "SUCCEEDED")
    results = await asyncio.gather(*tasks)

    for (_, job_id, recorder), events in zip(jobs, results):
        assert [e["status"] for e in events] == ["SUCCEEDED"]
        assert events[0]["log_relayed_to_end"] is True
        assert recorder.relayed(job_id) == expected[job_id]
    assert moto_aws.log.aws_calls["logs:filterlogevents"] > 0
    assert moto_aws.log.aws_calls["logs:getlogevents"] == 0


async def test_a_job_ending_before_its_first_sweep_still_gets_its_whole_log(
    moto_aws, gpu_batch, aws_conn, small_pages, closed_after
):
    moto_aws.batch.hold("RUNNING")
    trigger, job_id, recorder = running_trigger(moto_aws, gpu_batch, "quick", poll=3600)
    lines = [f"line {n}" for n in range(30)]
    put(moto_aws, stream_of(moto_aws, job_id), lines)
    moto_aws.batch.set_status(job_id, "FAILED", reason="boom", exit_code=3)
    [event] = await collect_events(trigger)
    assert event["status"] == "FAILED"
    assert recorder.relayed(job_id) == lines  # from the last read alone, in pages of 7


async def test_lines_go_to_their_own_triggers_task_log(moto_aws, gpu_batch, aws_conn, closed_after):
    """The triggerer routes records to task logs by context (trigger_id bound per trigger task):
    lines read by the shared follower must carry their own trigger's context, not the first one's."""
    moto_aws.batch.hold("RUNNING")
    jobs = []
    for i in range(3):
        job_id = submit_raw(moto_aws, gpu_batch, f"ctx-{i}")
        make_stream(moto_aws, stream_of(moto_aws, job_id))
        jobs.append((i + 100, job_id, GpuBatchJobTrigger(job_id, poll_interval=0.2)))

    async def run_like_the_triggerer(trigger_id: int, trigger: GpuBatchJobTrigger) -> list:
        bind_contextvars(trigger_id=trigger_id)
        return await collect_events(trigger)

    with structlog.testing.capture_logs(processors=[merge_contextvars]) as records:
        tasks = [asyncio.create_task(run_like_the_triggerer(tid, trigger)) for tid, _, trigger in jobs]
        await wait_until(lambda: LogFollower.shared(BackendTarget()).followed == 3)
        for i, (_, job_id, _) in enumerate(jobs):
            put(moto_aws, stream_of(moto_aws, job_id), [f"from job {i}"])
        await wait_until(lambda: sum("from job" in r["event"] for r in records) == 3)
        for _, job_id, _ in jobs:
            moto_aws.batch.set_status(job_id, "SUCCEEDED")
        await asyncio.gather(*tasks)

    relayed = {r["event"]: r.get("trigger_id") for r in records if r["event"].startswith("from job")}
    assert relayed == {f"from job {i}": tid for i, (tid, _, _) in enumerate(jobs)}


async def test_a_missing_stream_or_group_never_fails_the_trigger(
    moto_aws, gpu_batch, aws_conn, monkeypatch, closed_after
):
    asked: list[tuple[float, list[str]]] = []
    real = AwsBatchBackend.filter_log_events

    async def spy(self, *, urgent=False, **kwargs):
        asked.append((asyncio.get_running_loop().time(), list(kwargs["logStreamNames"])))
        return await real(self, urgent=urgent, **kwargs)

    monkeypatch.setattr(AwsBatchBackend, "filter_log_events", spy)
    monkeypatch.setattr(AwsBatchBackend, "logs_calls_per_second", 100.0)  # the pauses, not the pace, show
    monkeypatch.setattr(AwsBatchBackend, "logs_burst", 10)
    moto_aws.batch.hold("RUNNING")
    no_stream = submit_raw(moto_aws, gpu_batch, "no-stream")  # the group exists, its stream never does
    with_stream, _, recorder = running_trigger(moto_aws, gpu_batch, "with-stream")
    recorder_missing = LineLog()
    missing_trigger = GpuBatchJobTrigger(no_stream, poll_interval=0.1)
    missing_trigger._log = recorder_missing
    tasks = [asyncio.create_task(collect_events(t)) for t in (missing_trigger, with_stream)]

    with_stream_name = stream_of(moto_aws, with_stream.job_id)
    put(moto_aws, with_stream_name, ["still relayed"])
    await wait_until(lambda: recorder.relayed(with_stream.job_id) == ["still relayed"])
    missing = stream_of(moto_aws, no_stream)
    # Six probes: the last pause (16 polls) stays over twice the first even when a loaded machine
    # stretches every sweep to most of a second.
    await wait_until(lambda: sum(names == [missing] for _, names in asked) >= 6)
    # The two streams shared a call that failed; it was split, the missing stream singled out, and
    # from then on asked for less and less often (pauses of 1, 2, 4... poll intervals), while the
    # other stream was read on every sweep.
    probes = [at for at, names in asked if names == [missing]]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps[-1] > 2 * gaps[0], gaps
    assert sum(missing in names for _, names in asked) < sum(with_stream_name in names for _, names in asked)

    for job_id in (no_stream, with_stream.job_id):
        moto_aws.batch.set_status(job_id, "SUCCEEDED")
    results = await asyncio.gather(*tasks)
    assert [events[0]["status"] for events in results] == ["SUCCEEDED", "SUCCEEDED"]
    assert recorder_missing.relayed(no_stream) == []


async def test_no_log_group_at_all_never_fails_the_trigger(moto_aws, gpu_batch, aws_conn, closed_after):
    moto_aws.batch.hold("RUNNING")
    job_id = submit_raw(moto_aws, gpu_batch, "no-group")
    task = asyncio.create_task(collect_events(GpuBatchJobTrigger(job_id, poll_interval=0.2)))
    await wait_until(lambda: moto_aws.log.aws_calls["logs:filterlogevents"] >= 1)
    moto_aws.batch.set_status(job_id, "SUCCEEDED")
    [event] = await task
    assert event["status"] == "SUCCEEDED"


async def test_a_job_without_awslogs_is_not_read(moto_aws, gpu_batch, aws_conn, closed_after):
    batch = moto_aws.client("batch")
    batch.register_job_definition(
        jobDefinitionName="splunk-logged",
        type="container",
        containerProperties={
            "image": "example.com/worker:latest",
            "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "512"}],
            "logConfiguration": {"logDriver": "splunk", "options": {"splunk-url": "https://splunk.example.com"}},
        },
    )
    moto_aws.batch.hold("RUNNING")
    job_id = batch.submit_job(jobName="splunk", jobQueue=gpu_batch["job_queue"], jobDefinition="splunk-logged")["jobId"]
    trigger = GpuBatchJobTrigger(job_id, poll_interval=0.1)
    task = asyncio.create_task(collect_events(trigger))
    watcher = JobWatcher.shared(BackendTarget())
    await wait_until(lambda: watcher.cycles >= 3)
    moto_aws.batch.set_status(job_id, "SUCCEEDED")
    [event] = await task
    assert event["status"] == "SUCCEEDED"
    assert event["log_group"] is None and event["log_url"] is None
    assert moto_aws.log.aws_calls["logs:filterlogevents"] == 0


# -- the follower at scale -----------------------------------------------------------------------------


async def test_one_limiter_paces_1000_logging_jobs_and_streaming_slows_down_instead_of_failing(
    moto_aws, aws_conn, monkeypatch, closed_after
):
    rate, burst = 20.0, 2
    monkeypatch.setattr(AwsBatchBackend, "logs_calls_per_second", rate)
    monkeypatch.setattr(AwsBatchBackend, "logs_burst", burst)
    n = 1000
    streams = [f"als/default/{i:04d}" for i in range(n)]
    logs = logs_client(moto_aws)
    logs.create_log_group(logGroupName=GROUP)

    def setup(stream: str) -> None:
        logs.create_log_stream(logGroupName=GROUP, logStreamName=stream)
        put_with(logs, stream, [f"{stream} first"])

    def put_with(client, stream: str, lines: list[str]) -> None:
        now = int(time.time() * 1000)
        client.put_log_events(
            logGroupName=GROUP, logStreamName=stream, logEvents=[{"timestamp": now, "message": m} for m in lines]
        )

    for stream in streams:  # one thread: the calls are GIL-bound, threads only add contention
        setup(stream)
    moto_aws.log.reset()

    follower = LogFollower.shared(BackendTarget())
    got: dict[str, list[str]] = {s: [] for s in streams}
    follows = [
        follower.follow(
            JobState(f"job-{i}", "RUNNING", log_stream=s, log_group=GROUP), got[s].extend, poll_interval=0.1
        )
        for i, s in enumerate(streams)
    ]
    await wait_until(lambda: all(got[s] == [f"{s} first"] for s in streams), timeout=30)
    later = streams[::5]
    await asyncio.to_thread(lambda: [put_with(logs, s, [f"{s} second"]) for s in later])
    await wait_until(lambda: all(got[s] == [f"{s} first", f"{s} second"] for s in later), timeout=30)
    assert all(got[s] == [f"{s} first"] for s in streams if s not in later)
    for follow in follows:
        follow.close()

    # At the server: never more calls in any window than the limiter allows (a sweep needs 10 calls
    # of 100 streams, 2 calls' worth more than the poll interval allows, so it ran late instead).
    times = moto_aws.log.call_times("logs:filterlogevents")
    assert len(times) >= 20
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t - start < 1.0)
        assert in_window <= rate * 1.0 + burst + 1, in_window
    assert moto_aws.log.aws_calls.get("logs:filterlogevents:throttled", 0) == 0
    assert follower.sweeps < (times[-1] - times[0]) / 0.1  # slowed down: fewer sweeps than the poll asks for


async def test_every_call_names_at_most_100_streams_of_one_group(moto_aws, aws_conn, monkeypatch, closed_after):
    seen: list[tuple[str, int]] = []
    real = AwsBatchBackend.filter_log_events

    async def spy(self, *, urgent=False, **kwargs):
        seen.append((kwargs["logGroupName"], len(kwargs["logStreamNames"])))
        return await real(self, urgent=urgent, **kwargs)

    monkeypatch.setattr(AwsBatchBackend, "filter_log_events", spy)
    logs = logs_client(moto_aws)
    for group in ("/a", "/b"):
        logs.create_log_group(logGroupName=group)
    follower = LogFollower.shared(BackendTarget())
    follows = []
    for i in range(230):
        group = "/a" if i % 2 else "/b"
        stream = f"s/{i}"
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        follows.append(
            follower.follow(
                JobState(f"j{i}", "RUNNING", log_stream=stream, log_group=group), lambda lines: None, poll_interval=0.1
            )
        )
    await wait_until(lambda: follower.sweeps >= 2)
    for follow in follows:
        follow.close()
    per_sweep = [n for _, n in seen]
    assert max(per_sweep) == 100 and sum(per_sweep[:4]) == 230  # /a: 100+15, /b: 100+15
    assert sorted(per_sweep[:4]) == [15, 15, 100, 100]


async def test_a_busy_log_api_does_not_hold_the_event_up(
    moto_aws, gpu_batch, aws_conn, monkeypatch, caplog, closed_after
):
    monkeypatch.setattr(AwsBatchBackend, "logs_calls_per_second", 0.2)  # one call every 5 s
    monkeypatch.setattr(AwsBatchBackend, "logs_burst", 1)
    monkeypatch.setattr(LogFollower, "final_read_timeout", 0.5)
    moto_aws.batch.hold("RUNNING")
    trigger, job_id, _ = running_trigger(moto_aws, gpu_batch, "busy")
    task = asyncio.create_task(collect_events(trigger))
    await wait_until(lambda: moto_aws.log.aws_calls["logs:filterlogevents"] >= 1)  # the token is spent
    moto_aws.batch.set_status(job_id, "SUCCEEDED")
    [event] = await task
    assert event["status"] == "SUCCEEDED"
    # Fired without the turn the limiter would have given 5 s later: no second call was made.
    assert moto_aws.log.aws_calls["logs:filterlogevents"] == 1
    assert event["log_relayed_to_end"] is False  # the operator can say where the rest is
    assert LogFollower.shared(BackendTarget()).unfinished == 1
    [warning] = [r.getMessage() for r in caplog.records if "Not relaying the last log lines" in r.getMessage()]
    assert "of 1 job(s)" in warning


# -- the cursor ------------------------------------------------------------------------------------------


def test_cursor_drops_repeats_and_keeps_late_events_within_the_window():
    cursor = StreamCursor()
    late = 10_000
    assert cursor.start(late) is None  # a new stream is read from its beginning
    assert [cursor.accept(i, ts, late) for i, ts in [("a", 1000), ("b", 1000), ("c", 1001)]] == [True, True, True]
    cursor.read_to(50_000, late)
    assert cursor.start(late) == 40_000
    # Re-read from the window: repeats are dropped; an event that showed up late (older timestamp) is kept.
    assert cursor.accept("c", 1001, late) is False  # before the window: relayed before
    assert cursor.accept("d", 45_000, late) is True
    assert cursor.accept("d", 45_000, late) is False
    assert cursor.accept("e", 39_999, late) is False  # later than the window allows
    cursor.read_to(54_000, late)
    assert "d" in cursor.seen
    cursor.read_to(51_000, late)  # never moves back
    assert cursor.mark == 54_000
    cursor.read_to(70_000, late)
    assert cursor.seen == {}  # ids leave once their time is out of the window


def test_cursor_resumes_a_range_cut_short_exactly_where_it_stopped():
    cursor = StreamCursor()
    late = 10_000
    cursor.read_to(50_000, late)
    for i in range(5):
        assert cursor.accept(f"x{i}", 52_000, late)
    cursor.read_partly(52_000, late)
    assert cursor.start(late) == 52_000  # not 42,000: a chatty stream must make progress
    assert cursor.accept("x4", 52_000, late) is False  # the rest of that millisecond: repeats dropped...
    assert cursor.accept("x5", 52_000, late) is True  # ...new ones kept
    cursor.read_partly(None, late)  # a page without events moves nothing
    assert (cursor.mark, cursor.partial) == (52_000, True)
    cursor.read_to(60_000, late)
    assert (cursor.start(late), cursor.partial) == (50_000, False)


async def test_late_events_are_relayed_once(moto_aws, aws_conn, closed_after):
    make_stream(moto_aws, "late/stream")
    follower = LogFollower.shared(BackendTarget())
    got: list[str] = []
    follow = follower.follow(
        JobState("j", "RUNNING", log_stream="late/stream", log_group=GROUP), got.extend, poll_interval=0.1
    )
    now = int(time.time() * 1000)
    put(moto_aws, "late/stream", ["one", "two"], at_ms=now - 1000)
    await wait_until(lambda: got == ["one", "two"])
    # Becomes visible after newer events were read, with an older timestamp (eventual consistency).
    put(moto_aws, "late/stream", ["three"], at_ms=now)
    await wait_until(lambda: got == ["one", "two", "three"])
    put(moto_aws, "late/stream", ["late one"], at_ms=now - 3000)
    sweeps = follower.sweeps
    await wait_until(lambda: follower.sweeps >= sweeps + 3)
    follow.close()
    assert got == ["one", "two", "three", "late one"]


async def test_a_slow_last_read_holds_up_no_other_jobs_last_read(
    moto_aws, gpu_batch, fault_proxy, monkeypatch, closed_after
):
    """Thousands of jobs end within one poll: one slow CloudWatch reply must not make the jobs ending
    after it wait for it. Job A's last read is held back at the proxy; B ends meanwhile, and its own
    last read is served and its event fires while A's reply is still held."""
    from tests.support.gpu_batch_testing import in_triggerer, use_aws_connection

    use_aws_connection(monkeypatch, fault_proxy.url, moto_aws.region)
    monkeypatch.setattr(LogFollower, "final_read_timeout", 2.0)  # the wait each trigger gives its last read
    moto_aws.batch.hold("RUNNING")
    runs = {}
    for name in ("a", "b"):
        trigger, job_id, recorder = running_trigger(moto_aws, gpu_batch, name, poll=0.5)
        runs[name] = (in_triggerer(trigger), job_id, recorder, stream_of(moto_aws, job_id))
    (_, a_job, _, a_stream), (_, b_job, b_lines, b_stream) = runs["a"], runs["b"]
    tasks = {name: asyncio.create_task(collect_events(run[0], timeout=60)) for name, run in runs.items()}
    follower = LogFollower.shared(BackendTarget())
    await wait_until(lambda: follower.sweeps >= 2 and follower.followed == 2)

    def a_alone(request) -> bool:  # A's last read: it names A's stream, and no longer B's
        body = request.body.decode(errors="replace")
        return (
            "FilterLogEvents" in request.headers.get("x-amz-target", "") and a_stream in body and b_stream not in body
        )

    held = fault_proxy.add("delay", when=a_alone, times=1, seconds=60)
    try:
        moto_aws.batch.set_status(a_job, "SUCCEEDED")
        await wait_until(lambda: held.holding == 1, timeout=30)
        put(moto_aws, b_stream, ["b's last line"])
        moto_aws.batch.set_status(b_job, "SUCCEEDED")
        [b_event] = await tasks["b"]
        assert held.holding == 1, "B's event waited for A's held reply"
        assert b_event["log_relayed_to_end"] is True and "b's last line" in "\n".join(b_lines.records)
        [a_event] = await tasks["a"]  # A gave up on its last lines after its own 2 s
        assert a_event["log_relayed_to_end"] is False and held.holding == 1
    finally:
        held.released.set()
