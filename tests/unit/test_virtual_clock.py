"""The unit tier's virtual clock (tests/support/virtual_clock.py): it moves only when every task waits."""

from __future__ import annotations

import asyncio
import time

import pytest

from airflow_gpu.jobs.clock import wall_time
from tests.support.virtual_clock import WALL_START, Deadlock, VirtualTimeUp, now, run


def test_time_jumps_to_the_next_timer_only_when_every_task_waits():
    seen: list[tuple[str, float]] = []

    async def busy() -> None:
        for _ in range(1000):  # a thousand passes of the loop with work ready: the clock stays put
            await asyncio.sleep(0)
        seen.append(("busy done", now()))

    async def sleeper(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        seen.append((name, now()))

    async def main() -> None:
        await asyncio.gather(sleeper("hour", 3600), busy(), sleeper("half minute", 30))

    run(main)
    assert seen == [("busy done", 0.0), ("half minute", 30.0), ("hour", 3600.0)]


def test_wall_time_moves_with_the_loop_clock_and_is_the_systems_outside_a_loop():
    async def main() -> tuple[float, float]:
        before = wall_time()
        await asyncio.sleep(3600)
        return before, wall_time()

    assert run(main) == (WALL_START, WALL_START + 3600)
    assert abs(wall_time() - time.time()) < 5  # no loop running: the system's wall clock


def test_a_wait_nothing_can_end_is_a_deadlock_not_a_hang():
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(Deadlock, match="every task waits"):
        run(main)


def test_work_in_a_thread_is_waited_for_before_time_moves():
    """A thread that works for the loop ends at a real moment: timers due later must not fire first."""
    order: list[str] = []

    def work() -> str:
        sum(range(3_000_000))  # real work, some milliseconds long
        order.append("thread")
        return "done"

    async def main() -> tuple[str, float]:
        timer = asyncio.get_running_loop().call_later(1, order.append, "timer")
        result = await asyncio.get_running_loop().run_in_executor(None, work)
        stamp = now()
        await asyncio.sleep(2)
        timer.cancel()
        return result, stamp

    assert run(main) == ("done", 0.0)
    assert order == ["thread", "timer"]


def test_a_positive_delay_below_the_clocks_resolution_still_lets_time_pass():
    async def main() -> bool:
        start = now()
        await asyncio.sleep(1e-30)
        return now() > start

    assert run(main)


def test_a_scenario_that_never_ends_fails_after_a_virtual_day():
    async def polls_for_ever() -> None:
        while True:
            await asyncio.sleep(30)

    with pytest.raises(VirtualTimeUp, match="still running after 86400 s of virtual time"):
        run(polls_for_ever)
