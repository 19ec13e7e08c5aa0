"""GpuBatchJobTrigger writes its log records off the event loop, in order, in the trigger's context.

In `airflow triggerer` a record written on the loop blocks it while the supervisor's log socket is
full, and a supervisor blocked sending to that loop never drains it: the triggerer deadlocked with
2000 triggers starting at once (benchmarks/README.md, "Triggerer scale through Airflow").
"""

from __future__ import annotations

import contextvars
import threading

from airflow_gpu.jobs.backend import JobState
from airflow_gpu.triggers import GpuBatchJobTrigger
from tests.support.waiting import wait_until

trigger_context: contextvars.ContextVar[str] = contextvars.ContextVar("trigger_context", default="none")


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[int, str, str]] = []  # (thread, message, context seen when written)

    def info(self, message: str) -> None:
        self.records.append((threading.get_ident(), message, trigger_context.get()))


async def test_state_lines_and_relayed_lines_are_written_off_the_loop_in_order_with_the_triggers_context():
    trigger = GpuBatchJobTrigger("job-1", stream_logs=False)
    recorder = Recorder()
    trigger._log = recorder  # LoggingMixin's logger slot
    trigger_context.set("trigger 7")  # what the triggerer binds per trigger (structlog contextvars)
    trigger._on_change(JobState(job_id="job-1", status="RUNNING"))
    for i in range(200):
        trigger._relay_lines([f"line {i}"])
    await wait_until(lambda: len(recorder.records) == 201, timeout=10)
    loop_thread = threading.get_ident()
    assert all(thread != loop_thread for thread, _, _ in recorder.records)
    messages = [message for _, message, _ in recorder.records]
    assert "job-1" in messages[0] and "RUNNING" in messages[0]
    assert messages[1:] == [f"line {i}" for i in range(200)]
    assert {context for _, _, context in recorder.records} == {"trigger 7"}
