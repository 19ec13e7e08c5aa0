"""The e2e tests' guard against Airflow 3.3's resume race reads the scheduler's log: it must find the
line for the very try that deferred, and nothing else (another try, another state, another task)."""

from __future__ import annotations

from tests.support.airflow_e2e import deferral_taken_in

# A scheduler line as Airflow 3.3.2 writes it (from a failed run's log), with its state and try as given.
LINE = (
    "2026-12-07T04:02:06.473317Z [info     ] TaskInstance Finished: dag_id=e2e_triggerer_stall, task_id=train, "
    "run_id=e2e__08256ccc9151, map_index={index}, ti_id=01a24eaa-4b81-7292-8b32-b6d9a892fd4a, "
    "run_start_date=2026-12-07 04:01:53.770251+00:00, run_end_date=None, run_duration=None, state={state}, "
    "executor=LocalExecutor(parallelism=4), executor_state=success, try_number={try_number}, max_tries=1, "
    "pool=default_pool, queue=default, priority_weight=1, operator=GpuBatchOperator, queued_dttm=None"
)
RUN = ("e2e_triggerer_stall", "e2e__08256ccc9151")


def test_the_line_of_the_try_that_deferred_is_found():
    log = "earlier line\n" + LINE.format(index=1, state="deferred", try_number=2) + "\nlater line\n"
    assert deferral_taken_in(log, *RUN, "train", 1, 2)


def test_another_try_state_task_or_map_index_is_not_taken_for_it():
    assert not deferral_taken_in(LINE.format(index=1, state="deferred", try_number=1), *RUN, "train", 1, 2)
    assert not deferral_taken_in(LINE.format(index=1, state="failed", try_number=2), *RUN, "train", 1, 2)
    assert not deferral_taken_in(LINE.format(index=11, state="deferred", try_number=2), *RUN, "train", 1, 2)
    assert not deferral_taken_in(LINE.format(index=1, state="deferred", try_number=2), *RUN, "start", 1, 2)
    assert not deferral_taken_in(
        LINE.format(index=1, state="deferred", try_number=2), RUN[0], "e2e__other", "train", 1, 2
    )


def test_a_state_on_one_line_and_the_try_on_the_next_do_not_match():
    first, second = LINE.format(index=1, state="deferred", try_number=2).split(" try_number=")
    assert not deferral_taken_in(first + "\ntry_number=" + second, *RUN, "train", 1, 2)
