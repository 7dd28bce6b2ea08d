"""Graceful shutdown and reconnect loops shared by the long-running services."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from apievents.common import queries
from apievents.common.broker import TRANSIENT_ERRORS
from apievents.common.logs import error_text
from apievents.common.threads import DaemonThreads

log = logging.getLogger(__name__)
T = TypeVar("T")


class ConfigurationError(RuntimeError):
    """A service cannot run safely as configured; it exits with a one-line error."""


class Abandoned(ConnectionError):
    """A blocking call was still running when the service had to stop; it is left behind."""


class Lifecycle:
    """A stop event set by the first SIGTERM/SIGINT; a second signal exits at once.

    ``connected`` is set while a service's broker session is up (for /readyz). A service runs
    on an asyncio loop (``loop``) and only ever polls ``stop``: a signal handler does nothing
    but set it.
    """

    POLL_SECONDS = 0.05

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def install_signals(self) -> None:
        """Route SIGTERM and SIGINT here (main thread only). SIGUSR1 writes every thread's
        stack to stderr (code locations only, never values): where a stuck service waits."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            os._exit(1)
        self.stop.set()

    def serve(
        self,
        name: str,
        session: Callable[[], Awaitable[None]],
        cleanup: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Run the service on a new event loop until stopped (see run_until_stopped), then
        ``cleanup`` on the same loop."""

        async def main() -> None:
            try:
                await self.run_until_stopped(name, session)
            finally:
                if cleanup is not None:
                    await cleanup()

        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())

    async def run_until_stopped(self, name: str, session: Callable[[], Awaitable[None]]) -> None:
        """Run ``session`` again after each transient failure, with capped backoff, until stop.

        ``session`` returns normally only once stop is set and its work is handed back.
        """
        self.loop = asyncio.get_running_loop()
        delay = 0.5
        self.connected.clear()
        while not self.stop.is_set():
            try:
                await session()
                delay = 0.5
            except TRANSIENT_ERRORS as e:
                self.connected.clear()
                log.warning(
                    "reconnecting",
                    extra={"service": name, "error": error_text(e), "retry_in": delay},
                )
                await self.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.connected.clear()

    async def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stop, whichever comes first; True if stopping."""
        deadline = asyncio.get_running_loop().time() + seconds
        while not self.stop.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, self.POLL_SECONDS))
        return True


class Blocking:
    """Where a service runs its blocking calls (psycopg's sync pool): a daemon thread, so a
    call that never returns cannot hold the service's exit."""

    # How long a blocking call may still run once stop is set, before it is abandoned.
    ABANDON_AFTER = 10.0

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self.threads = DaemonThreads(1, "blocking")  # the service's calls run one at a time

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` off the event loop. Once stop is set, a call still running gets
        ABANDON_AFTER seconds; then Abandoned is raised and it is left behind. Whatever it was
        doing is redone by design: an uncommitted claim or commit rolls back with its
        connection, and unacked messages are redelivered."""
        loop = asyncio.get_running_loop()
        future = self.threads.submit(fn, *args)
        deadline = None
        while True:
            done, _ = await asyncio.wait([future], timeout=Lifecycle.POLL_SECONDS * 4)
            if done:
                return future.result()
            if self.lifecycle.stop.is_set():
                deadline = deadline or loop.time() + self.ABANDON_AFTER
                if loop.time() >= deadline:
                    name = getattr(fn, "__name__", "call")
                    log.warning("blocking_call_abandoned", extra={"call": name})
                    raise Abandoned(f"{name} still running at shutdown")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux and macOS): the same asyncio, in C, measured to
    cut the worker's CPU per window (docs/performance.md); the standard loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class Service(Protocol):
    """A long-running service."""

    def run(self) -> None:
        """Serve until the lifecycle's stop is set."""


@dataclass(frozen=True)
class Wired:
    """A service with what the process needs around it."""

    service: Service
    close: Callable[[], None]
    ready: Callable[[], bool]


def readiness(pool: ConnectionPool, lifecycle: Lifecycle) -> Callable[[], bool]:
    """Ready while the broker session is up and the database answers."""

    def ready() -> bool:
        if not lifecycle.connected.is_set():
            return False
        try:
            with pool.connection(timeout=2) as conn:
                conn.execute(queries.PING)
        except (psycopg.Error, PoolTimeout):
            return False
        return True

    return ready


def async_readiness(
    pool: Callable[[], AsyncConnectionPool | None], lifecycle: Lifecycle
) -> Callable[[], bool]:
    """Readiness for a service whose pool lives on its event loop; asked from another thread."""

    async def ping(pool: AsyncConnectionPool) -> None:
        async with pool.connection(timeout=2) as conn:
            await conn.execute(queries.PING)

    def ready() -> bool:
        loop, current = lifecycle.loop, pool()
        if not lifecycle.connected.is_set() or loop is None or loop.is_closed() or not current:
            return False
        try:
            asyncio.run_coroutine_threadsafe(ping(current), loop).result(timeout=3)
        except (psycopg.Error, PoolTimeout, TimeoutError, RuntimeError):
            return False
        return True

    return ready
