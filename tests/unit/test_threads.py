"""Blocking calls on daemon threads: results and errors come back, and a call that never
returns holds neither the loop's close nor a stopping service."""

from __future__ import annotations

import asyncio
import threading

import pytest

from apievents.common.lifecycle import Abandoned, Blocking, Lifecycle
from apievents.common.threads import DaemonThreads


def test_results_and_errors_come_back_on_daemon_threads_within_the_bound() -> None:
    seen: set[threading.Thread] = set()
    gate = threading.Barrier(3, timeout=5)

    def work(n: int) -> int:
        seen.add(threading.current_thread())
        gate.wait()  # three at once: three threads
        return n * 2

    def fail() -> None:
        raise ValueError("refused")

    async def main() -> list[int]:
        threads = DaemonThreads(3, "t")
        results = await asyncio.gather(*(threads.submit(work, n) for n in (1, 2, 3)))
        with pytest.raises(ValueError, match="refused"):
            await threads.submit(fail)
        threads.shutdown()
        return list(results)

    assert asyncio.run(main()) == [2, 4, 6]
    assert len(seen) == 3 and all(t.daemon for t in seen)


def test_a_call_that_never_returns_does_not_hold_the_loops_close() -> None:
    never = threading.Event()

    async def main() -> None:
        threads = DaemonThreads(1, "t")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(threads.submit(never.wait), 0.2)

    asyncio.run(main())  # returns: nothing joins the stuck thread
    never.set()


def test_a_stopping_service_abandons_a_stuck_call_after_its_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Blocking, "ABANDON_AFTER", 0.3)
    lifecycle = Lifecycle()
    never = threading.Event()

    async def main() -> None:
        blocking = Blocking(lifecycle)
        assert await blocking(sum, [1, 2]) == 3
        call = asyncio.ensure_future(blocking(never.wait))
        await asyncio.sleep(0.3)
        assert not call.done()  # not stopping: a slow call is waited for
        lifecycle.stop.set()
        with pytest.raises(Abandoned):
            await asyncio.wait_for(call, 5)

    asyncio.run(main())
    never.set()


def test_a_call_whose_caller_stopped_waiting_is_skipped() -> None:
    gate = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        threads = DaemonThreads(1, "t")
        first = threads.submit(gate.wait)
        stale = threads.submit(ran.append, "stale")
        stale.cancel()  # as asyncio.wait_for does when a lookup times out in the queue
        fresh = threads.submit(ran.append, "fresh")
        gate.set()
        await first
        await fresh

    asyncio.run(main())
    assert ran == ["fresh"]


def test_no_call_is_taken_after_shutdown() -> None:
    async def main() -> None:
        threads = DaemonThreads(2, "t")
        assert await threads.submit(len, "ab") == 2
        threads.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            threads.submit(len, "ab")

    asyncio.run(main())
