"""The worker's ack discipline, on kombu's memory transport with scripted windows.

The windows are a fake of pure logic (what each window ended as); no database or RabbitMQ
behaviour is claimed here. Delivery itself is proven in tests/integration against the real
servers.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kombu
import pytest

from apievents.common.lifecycle import Lifecycle
from apievents.common.messages import Job, Outcome, jobs_to_bytes, new_id, parse_jobs, parse_reports
from apievents.common.settings import Settings
from apievents.common.topology import Topology
from apievents.worker.delivery import Disposition
from apievents.worker.service import Worker
from apievents.worker.windows import Result
from tests.support import stays, wait_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)
URL = "memory://"


class ScriptedWindows:
    """Each subscription's window ends as scripted: "ok", a Disposition, or after ``hold``."""

    def __init__(
        self,
        results: dict[int, Any],
        hold: threading.Event | None = None,
        held: set[int] | None = None,  # the subscriptions ``hold`` holds (default: all)
    ) -> None:
        self.results = results
        self.hold = hold
        self.held = held
        self.seen: list[int] = []
        self.batches: list[int] = []
        self.handed_back: list[int] = []

    async def start(self, jobs: Sequence[Job]) -> dict[str, asyncio.Future[Result]]:
        self.batches.append(len(jobs))
        return {j.job_id: asyncio.ensure_future(self._run(j)) for j in jobs}

    async def _run(self, job: Job) -> Result:
        self.seen.append(job.subscription)
        held = self.held is None or job.subscription in self.held
        while held and self.hold is not None and not self.hold.is_set():
            await asyncio.sleep(0.01)
        result = self.results[job.subscription]
        if result != "ok":
            return result  # type: ignore[no-any-return]
        return Outcome(
            job.job_id, new_id(), job.subscription, job.window_start, job.window_end, 0, ok=True
        )

    async def hand_back(self, jobs: Sequence[Job]) -> None:
        self.handed_back += [j.subscription for j in jobs]

    async def close(self) -> None:
        pass


@pytest.fixture
def prefix() -> str:
    return f"unit.{uuid.uuid4().hex[:8]}"


def publish(prefix: str, body: bytes) -> None:
    with kombu.Connection(URL) as conn:  # declared first: a job before the worker is kept
        exchange = kombu.Exchange(Topology(prefix).exchange, type="direct", durable=True)
        queue = Topology(prefix).queue("jobs")
        kombu.Queue(queue.name, exchange, routing_key="jobs")(conn.channel()).declare()
        kombu.Producer(conn.channel(), exchange=exchange).publish(
            body, routing_key="jobs", serializer=None
        )


def drain_queue(prefix: str, role: str) -> list[bytes]:
    bodies = []
    with kombu.Connection(URL) as conn:
        channel = conn.channel()
        while (m := channel.basic_get(Topology(prefix).queue(role).name, no_ack=True)) is not None:
            bodies.append(m.body if isinstance(m.body, bytes) else m.body.encode())
    return bodies


@pytest.fixture
def run_worker(prefix: str) -> Iterator[Callable[..., Lifecycle]]:
    started: list[tuple[Lifecycle, threading.Thread]] = []

    def start(windows: ScriptedWindows, **overrides: Any) -> Lifecycle:
        settings = replace(Settings(broker_url=URL, queue_prefix=prefix), **overrides)
        lifecycle = Lifecycle()

        async def scripted(s: Settings, report: Any) -> ScriptedWindows:
            return windows

        worker = Worker(settings, lifecycle, scripted)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((lifecycle, thread))
        wait_for(lifecycle.connected.is_set, 5, "the worker's session")
        return lifecycle

    yield start
    for lifecycle, thread in started:
        lifecycle.stop.set()
        thread.join(10)
        assert not thread.is_alive()


def job(sub: int) -> bytes:
    return Job(new_id(), sub, T0, T0).to_bytes()


def stop(lifecycle: Lifecycle) -> None:
    lifecycle.stop.set()
    wait_for(lambda: not lifecycle.connected.is_set(), 10, "the worker to stop")


def test_outcome_is_handed_on_then_job_acked(prefix: str, run_worker: Any) -> None:
    windows = ScriptedWindows({1: "ok", 2: Disposition.STALE})
    lifecycle = run_worker(windows)
    publish(prefix, job(2))
    publish(prefix, job(1))
    bodies: list[bytes] = []
    wait_for(lambda: bodies.extend(drain_queue(prefix, "outcomes")) or bodies, 5, "an outcome")
    stop(lifecycle)
    assert [r.subscription for b in bodies for r in parse_reports(b)] == [1]
    assert sorted(windows.seen) == [1, 2]
    assert drain_queue(prefix, "jobs") == []  # both acked: nothing came back on stop


def test_ready_jobs_start_together_in_one_batch(prefix: str, run_worker: Any) -> None:
    for sub in range(10, 20):
        publish(prefix, job(sub))
    windows = ScriptedWindows(dict.fromkeys(range(10, 20), "ok"))
    run_worker(windows, worker_linger_seconds=0.2)
    wait_for(lambda: len(windows.seen) == 10, 5, "every job")
    assert windows.batches == [10]


def test_requeue_gives_the_job_back(prefix: str, run_worker: Any) -> None:
    windows = ScriptedWindows({3: Disposition.REQUEUE})
    run_worker(windows)
    publish(prefix, job(3))
    wait_for(lambda: windows.seen.count(3) >= 2, 5, "redelivery after requeue")


def test_unparseable_job_is_rejected_not_retried(prefix: str, run_worker: Any) -> None:
    windows = ScriptedWindows({4: "ok"})
    run_worker(windows)
    publish(prefix, b"{garbage")
    publish(prefix, job(4))
    wait_for(lambda: windows.seen == [4], 5, "the good job after the bad one")
    assert drain_queue(prefix, "jobs") == []


def test_shutdown_hands_back_windows_that_outlive_the_timeout(prefix: str, run_worker: Any) -> None:
    windows = ScriptedWindows({5: "ok"}, hold=threading.Event())
    lifecycle = run_worker(windows, shutdown_timeout=0.2)
    publish(prefix, job(5))
    wait_for(lambda: windows.seen == [5], 5, "job started")
    stop(lifecycle)
    assert windows.handed_back == [5]  # stepped down as holder: no POST is in flight
    wait_for(lambda: len(drain_queue(prefix, "jobs")) == 1, 5, "job handed back")
    assert drain_queue(prefix, "outcomes") == []


def several(*subs: int) -> bytes:
    return jobs_to_bytes([Job(new_id(), sub, T0, T0) for sub in subs])


def test_a_message_of_several_windows_hands_on_each_outcome_and_is_acked_after_all(
    prefix: str, run_worker: Any
) -> None:
    windows = ScriptedWindows({6: "ok", 7: "ok", 8: "ok"}, hold=threading.Event(), held={8})
    lifecycle = run_worker(windows, shutdown_timeout=0.2)
    publish(prefix, several(6, 7, 8))
    bodies: list[bytes] = []

    def handed_on() -> list[int]:
        bodies.extend(drain_queue(prefix, "outcomes"))
        return sorted(r.subscription for b in bodies for r in parse_reports(b))

    wait_for(lambda: handed_on() == [6, 7], 5, "the outcomes of the windows that ended")
    stop(lifecycle)  # 8 still runs: handed back, so its message goes back whole
    assert windows.handed_back == [8]
    back = drain_queue(prefix, "jobs")
    assert [[j.subscription for j in parse_jobs(b)] for b in back] == [[6, 7, 8]]


def test_a_window_given_back_requeues_its_message_once_the_others_end(
    prefix: str, run_worker: Any
) -> None:
    windows = ScriptedWindows({9: "ok", 10: Disposition.REQUEUE})
    run_worker(windows)
    publish(prefix, several(9, 10))
    wait_for(lambda: windows.seen.count(10) >= 2, 5, "redelivery after requeue")
    assert windows.seen.count(9) >= 2  # the whole message again: at least once, never lost


def test_a_job_repeated_in_a_message_runs_once(prefix: str, run_worker: Any) -> None:
    windows = ScriptedWindows({11: "ok"})
    run_worker(windows)
    again = Job(new_id(), 11, T0, T0)
    publish(prefix, jobs_to_bytes([again, again]))
    wait_for(lambda: drain_queue(prefix, "outcomes"), 5, "the outcome")
    assert windows.seen == [11]
    assert drain_queue(prefix, "jobs") == []


def test_windows_beyond_four_post_slots_wait_untaken_in_whole_messages(
    prefix: str, run_worker: Any
) -> None:
    subs = list(range(20, 30))
    windows = ScriptedWindows(dict.fromkeys(subs, "ok"), hold=threading.Event())
    run_worker(windows, worker_concurrency=1, worker_linger_seconds=0.05)
    for pair in zip(subs[::2], subs[1::2], strict=True):
        publish(prefix, several(*pair))
    wait_for(lambda: len(windows.seen) == 4, 5, "four windows taken over")
    stays(lambda: len(windows.seen) == 4, 0.5, "the others wait, not taken over")
    assert windows.hold is not None
    windows.hold.set()
    wait_for(lambda: sorted(windows.seen) == subs, 5, "every window, in the end")
