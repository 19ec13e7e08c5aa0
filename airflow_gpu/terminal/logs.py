"""`airflow-gpu logs JOB_ID [--follow] [--tail N]`: a job's log, the whole of it, its end, or live."""

from __future__ import annotations

import argparse
import asyncio

from airflow_gpu.jobs.follower import LogFollower
from airflow_gpu.jobs.watcher import JobWatcher
from airflow_gpu.terminal.follow import JobView, exit_code_of
from airflow_gpu.terminal.options import GaveUp, add_target_arguments, describe_one, give_up_after, guarded, target_of

#: Pages read for a whole log before giving up (a bound, so a huge log cannot loop for ever).
MAX_PAGES = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", metavar="JOB_ID")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the job ends")
    parser.add_argument("--tail", type=int, default=None, metavar="N", help="only the last N lines")
    parser.add_argument(
        "--poll-interval", type=float, default=5.0, metavar="S", help="seconds between polls with --follow"
    )
    add_target_arguments(parser)


async def _print_log(backend, state, tail: int | None) -> None:
    if tail is not None:
        for line in (await backend.read_logs(state, tail=max(1, tail))).lines:
            print(line)
        return
    cursor = None
    for _ in range(MAX_PAGES):
        chunk = await backend.read_logs(state, cursor=cursor)
        for line in chunk.lines:
            print(line)
        if not chunk.lines or chunk.cursor == cursor:
            return
        cursor = chunk.cursor


def _logs(args: argparse.Namespace) -> int:
    target = target_of(args)

    async def main() -> int:
        try:

            async def once() -> bool:
                async with JobWatcher.shared(target).backend() as backend:
                    state = await describe_one(backend, args.job_id)
                    if not (args.follow and state.is_live):
                        await _print_log(backend, state, args.tail)
                        return True
                    return False

            try:
                if await asyncio.wait_for(once(), give_up_after(args)):
                    return 0
            except asyncio.TimeoutError:
                raise GaveUp(give_up_after(args)) from None
            # Live: the same watcher and follower as a deferred task's. The follower starts at the
            # stream's beginning: the whole log is printed (or its last --tail lines), then what comes.
            final = await JobView(
                target, poll_interval=args.poll_interval, tail=args.tail, give_up_after=give_up_after(args)
            ).watch(args.job_id)
            return exit_code_of(final)
        finally:
            await LogFollower.close_all()
            await JobWatcher.close_all()

    return asyncio.run(main())


def run(args: argparse.Namespace) -> int:
    return guarded("logs", lambda: _logs(args), args)
