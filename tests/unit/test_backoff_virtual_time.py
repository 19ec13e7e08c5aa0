"""SharedBackoff and RateLimiter in virtual time: the exact pace, the jittered pauses, shared by every caller."""

from __future__ import annotations

import asyncio
import logging

import pytest

from airflow_gpu.jobs.backoff import RateLimiter, RetryPolicy, SharedBackoff
from tests.support.virtual_clock import now, run


class Throttled(Exception):
    pass


def throttled(exc: BaseException) -> bool:
    return isinstance(exc, Throttled)


def test_the_limiter_lets_its_burst_through_then_keeps_the_rate_exactly(memory_jobs):
    async def main() -> list[float]:
        limiter = RateLimiter(rate=5, burst=3)
        stamps: list[float] = []

        async def call() -> None:
            await limiter.acquire()
            stamps.append(now())

        await asyncio.gather(*(call() for _ in range(13)))
        assert limiter.granted == 13 and limiter.waiting == 0
        return stamps

    assert run(main) == pytest.approx([0, 0, 0] + [0.2 * k for k in range(1, 11)])


def test_urgent_callers_go_first_and_a_cancelled_one_gives_its_turn_back(memory_jobs):
    async def main() -> list[tuple[str, float]]:
        limiter = RateLimiter(rate=1)
        await limiter.acquire()  # the bucket is empty now
        order: list[tuple[str, float]] = []

        async def call(name: str, urgent: bool) -> None:
            await limiter.acquire(urgent=urgent)
            order.append((name, now()))

        routine = [asyncio.ensure_future(call(f"sweep {i}", False)) for i in range(2)]
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(call("cancelled", True))
        last = asyncio.ensure_future(call("last read", True))
        await asyncio.sleep(0)
        assert limiter.expected_wait(urgent=True) == pytest.approx(3.0)  # two urgent ahead, then itself
        gone.cancel()
        await asyncio.gather(*routine, last, return_exceptions=True)
        return order

    assert run(main) == [("last read", 1.0), ("sweep 0", 2.0), ("sweep 1", 3.0)]


def test_throttling_backs_off_with_full_jitter_under_a_growing_ceiling_then_resets(memory_jobs, caplog):
    policy = RetryPolicy(base=0.5, cap=8.0, attempts=20)

    async def main() -> tuple[list[float], list[float]]:
        backoff = SharedBackoff("Describing jobs", throttled, policy)
        stamps: list[float] = []

        def flaky(faults: int):
            async def call() -> str:
                stamps.append(now())
                if len(stamps) <= faults:
                    raise Throttled("Rate exceeded")
                return "ok"

            return call

        assert await backoff.call(flaky(6)) == "ok"
        throttled_gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        stamps.clear()
        for _ in range(3):  # after a success no pause is left over
            assert await backoff.call(flaky(0)) == "ok"
        return throttled_gaps, stamps

    with caplog.at_level(logging.WARNING, logger="airflow_gpu.jobs.backoff"):
        gaps, calm = run(main)
    ceilings = [min(policy.cap, policy.base * 2**level) for level in range(1, 7)]  # 1, 2, 4, 8, 8, 8
    assert all(0 < gap <= ceiling for gap, ceiling in zip(gaps, ceilings)), (gaps, ceilings)
    assert len({round(gap / ceiling, 6) for gap, ceiling in zip(gaps, ceilings)}) == 6  # a fresh draw each pause
    assert calm == [sum(gaps)] * 3  # no pause once it recovered
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # one line when the episode starts, one when it ends: not one per retry
    assert (
        "backing off with jitter" in messages[0]
        and "recovered after" in messages[1]
        and "6 retried calls" in messages[1]
    )


def test_one_callers_throttling_pushes_back_every_caller_on_the_connection(memory_jobs):
    async def main() -> list[tuple[str, float]]:
        backoff = SharedBackoff("Batch", throttled, RetryPolicy(base=4.0, cap=4.0))
        calls: list[tuple[str, float]] = []
        faults = iter([Throttled("slow down")])

        async def first() -> None:
            calls.append(("first", now()))
            fault = next(faults, None)
            if fault is not None:
                raise fault

        async def second() -> None:
            calls.append(("second", now()))

        await backoff.call(first)  # throttled once, then through
        await backoff.call(second)
        return calls

    calls = run(main)
    pause = calls[1][1]
    assert [name for name, _ in calls] == ["first", "first", "second"]
    assert 0 < pause <= 8.0 and calls[2][1] == pause  # the other caller went after the pause, not into it


def test_a_call_that_may_give_up_reraises_after_its_attempts_and_others_are_not_retried(memory_jobs):
    async def main() -> tuple[int, float]:
        backoff = SharedBackoff("Batch", throttled, RetryPolicy(base=1.0, cap=2.0, attempts=4))
        tries = 0

        async def always() -> None:
            nonlocal tries
            tries += 1
            raise Throttled("Rate exceeded")

        with pytest.raises(Throttled):
            await backoff.call(always)

        async def broken() -> None:
            raise KeyError("not transient")

        with pytest.raises(KeyError):
            await backoff.call(broken)
        return tries, now()

    tries, spent = run(main)
    assert tries == 4 and spent <= 2 + 2 + 2  # three pauses of at most the cap before the fourth try
