"""Daemon threads for blocking calls made from an event loop.

``asyncio.to_thread`` and ``ThreadPoolExecutor`` threads are joined when the loop closes and
when the interpreter exits, so a call that never returns (a database that stopped answering
mid-statement, a DNS lookup that hangs) keeps a stopping service alive. These threads are
daemons: whoever waits on a call decides how long, and the process exits without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class DaemonThreads:
    """Up to ``size`` daemon threads, started as calls need them, serving calls in order."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on one of the threads; its result (or error) on the running loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:  # an idle thread is reserved for this call, or a new one started
            if self._closed:
                raise RuntimeError(f"{self.name} threads are shut down")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.size:
                thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                thread.start()  # counted only once it runs
                self._threads.append(thread)
        self._calls.put(_Call(loop, future, fn, args))
        return future

    def shutdown(self) -> None:
        """Let idle threads end; busy ones end when their call returns. No call may follow."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._calls.put(None)

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            if call.future.cancelled():  # its caller stopped waiting (a lookup that timed
                with self._lock:  # out while queued): fresher calls must not wait behind it
                    self._idle += 1
                continue
            try:
                result, error = call.fn(*call.args), None
            except BaseException as e:  # handed to whoever awaits the future
                result, error = None, e
            with contextlib.suppress(RuntimeError):  # that loop has closed meanwhile
                call.loop.call_soon_threadsafe(_settle, call.future, result, error)
            with self._lock:
                self._idle += 1


@dataclass(frozen=True)
class _Call:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by a caller that stopped waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
