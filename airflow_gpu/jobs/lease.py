"""The client lease: one backend (one client) per target per event loop, shared by whoever needs it.

The watcher polls job states and the follower reads logs for the same jobs; each trigger may also
terminate its job or read its bill. All of them on one loop go through one backend per target
(backend, connection, region), so one client serves them all. The lease

* opens the backend on first use, off the event loop, and again on the next use when that failed
  (:meth:`ClientLease.open_retrying` keeps trying with backoff, for a poller that must not give up);
* counts its users: a watch, a running follower, an ``async with lease.backend()``;
* closes the client ``grace_period`` seconds after the last user leaves, so a burst of triggers
  ending and starting does not churn clients; whatever lives on the lease (the watcher) is told
  first, through :meth:`ClientLease.on_close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Awaitable, Callable, ClassVar

from airflow_gpu.jobs.backend import BackendTarget, JobBackend, backend_class
from airflow_gpu.jobs.backoff import SharedBackoff
from airflow_gpu.jobs.shared import PerLoop, detached_task
from airflow_gpu.jobs.spec import JobSpecError

log = logging.getLogger(__name__)


class LeaseClosed(RuntimeError):
    """The lease was closed while a user still needed its backend."""


_LEASES: PerLoop[BackendTarget, ClientLease] = PerLoop()


class ClientLease:
    #: Seconds the client stays open after the last user leaves.
    grace_period: ClassVar[float] = 5.0

    def __init__(self, target: BackendTarget) -> None:
        self.target = target
        self._users = 0
        self._backend_task: asyncio.Task[JobBackend] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._closer: asyncio.Task[None] | None = None
        self._on_close: list[Callable[[], Awaitable[None]]] = []
        self._closed = False

    @classmethod
    def shared(cls, target: BackendTarget) -> ClientLease:
        """The running loop's lease for ``target``, created on first use (and again once closed)."""
        return _LEASES.get(target, cls, stale=lambda lease: lease._closed)

    @classmethod
    async def close_all(cls) -> None:
        """Close every lease of the running loop now (its loop is about to end)."""
        for lease in _LEASES.values():
            await lease.aclose()

    @property
    def idle(self) -> bool:
        """No user: closing now takes nothing from anyone."""
        return self._users == 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def instance(self) -> JobBackend | None:
        """The backend if it is open (for tests and for links that need no call)."""
        task = self._backend_task
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            return task.result()
        return None

    # -- users ------------------------------------------------------------------------------------

    def acquire(self) -> None:
        self._users += 1
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def release(self) -> None:
        self._users -= 1
        if self._users == 0 and not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # released after its loop stopped: nothing left to schedule on
                return
            self._close_timer = loop.call_later(self.grace_period, self._close_if_idle)

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback()`` when the lease closes, before its client does (the watcher stops polling)."""
        self._on_close.append(callback)

    @contextlib.asynccontextmanager
    async def backend(self) -> AsyncIterator[JobBackend]:
        """The backend, for the length of the ``async with``; the lease stays open meanwhile."""
        self.acquire()
        try:
            yield await self.open()
        finally:
            self.release()

    # -- opening ----------------------------------------------------------------------------------

    async def open(self) -> JobBackend:
        """The backend, opened on first use; an opening that failed is tried again by the next call."""
        if self._closed:
            raise LeaseClosed(f"the client lease for {self.target} is closed")
        task = self._backend_task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            opener = backend_class(self.target.backend).open(self.target)
            task = self._backend_task = detached_task(opener, f"airflow-gpu open {self.target}")
        return await asyncio.shield(task)

    async def open_retrying(self, backoff: SharedBackoff, *, give_up_after: float) -> JobBackend:
        """The backend, its opening retried through ``backoff`` (a connection or role lookup that
        fails for a while fails nothing) until it has failed for ``give_up_after`` seconds: then
        :class:`~airflow_gpu.jobs.backoff.StillFailing`. A connection set up wrong (JobSpecError) and
        a closed lease raise at once; ``backoff`` must not call them transient."""

        async def attempt() -> JobBackend:
            try:
                return await self.open()
            except (LeaseClosed, JobSpecError):
                raise
            except Exception as exc:
                log.warning("Cannot open %s for %s yet: %s", self.target.backend, self.target, exc)
                raise

        return await backoff.call_within(attempt, grace=give_up_after)

    # -- closing ----------------------------------------------------------------------------------

    def _close_if_idle(self) -> None:
        self._close_timer = None
        if self._users == 0 and not self._closed:
            self._closer = detached_task(self.aclose(), f"airflow-gpu close {self.target}")

    async def aclose(self) -> None:
        """Close now: tell what lives on the lease, then close the client."""
        if self._closed:
            return
        self._closed = True
        _LEASES.forget(self.target, self)
        if self._close_timer is not None:
            self._close_timer.cancel()
        for callback in self._on_close:
            await callback()
        task = self._backend_task
        if task is not None:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            elif not task.cancelled() and task.exception() is None:
                await task.result().aclose()
