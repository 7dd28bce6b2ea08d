"""The worker's ack discipline, on kombu's memory transport with a scripted window runner.

The runner is a fake of pure logic (what a window ended as); no database or RabbitMQ behaviour
is claimed here. Delivery itself is proven in tests/integration against the real servers.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from apievents.common.broker import Broker
from apievents.common.lifecycle import Lifecycle
from apievents.common.messages import Job, Outcome, new_id
from apievents.worker.service import Worker
from apievents.worker.window import Disposition
from tests.support import wait_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class ScriptedRunner:
    def __init__(self, results: dict[int, Any], hold: threading.Event | None = None) -> None:
        self.results = results
        self.hold = hold
        self.seen: list[int] = []

    def run(self, job: Job, abort: threading.Event, report: Any) -> Outcome | Disposition:
        self.seen.append(job.subscription)
        if self.hold is not None:
            while not (self.hold.is_set() or abort.is_set()):
                abort.wait(0.01)
        result = self.results[job.subscription]
        if result == "ok":
            return Outcome(
                job.job_id,
                new_id(),
                job.subscription,
                job.window_start,
                job.window_end,
                job.failures,
                ok=True,
                rows=1,
                batches=1,
            )
        return result  # type: ignore[no-any-return]


@pytest.fixture
def broker() -> Broker:
    return Broker("memory://", f"unit.{uuid.uuid4().hex[:8]}")


def publish(broker: Broker, body: bytes) -> None:
    with broker.connection() as conn:
        broker.stream_publisher(conn).publish_all([body], "jobs")


def drain_queue(broker: Broker, name: str) -> list[bytes]:
    out = []
    with broker.connection() as conn:
        channel = conn.default_channel
        while (m := channel.basic_get(f"{broker.topology.prefix}.{name}", no_ack=True)) is not None:
            out.append(m.body)
    return out


@pytest.fixture
def run_worker(broker: Broker) -> Iterator[Any]:
    started: list[tuple[Lifecycle, threading.Thread]] = []

    def start(runner: ScriptedRunner, shutdown_timeout: float = 5) -> Lifecycle:
        lifecycle = Lifecycle()
        worker = Worker(
            broker,
            runner,
            lifecycle,
            concurrency=4,  # type: ignore[arg-type]
            shutdown_timeout=shutdown_timeout,
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((lifecycle, thread))
        return lifecycle

    yield start
    for lifecycle, thread in started:
        lifecycle.stop.set()
        thread.join(10)


def job(sub: int) -> bytes:
    return Job(new_id(), sub, T0, T0).to_bytes()


def test_outcome_is_handed_on_then_job_acked(broker: Broker, run_worker: Any) -> None:
    runner = ScriptedRunner({1: "ok", 2: Disposition.STALE})
    lifecycle = run_worker(runner)
    publish(broker, job(2))
    publish(broker, job(1))
    bodies: list[bytes] = []
    wait_for(lambda: bodies.extend(drain_queue(broker, "outcomes")) or bodies, 5, "an outcome")
    lifecycle.stop.set()
    assert [Outcome.from_bytes(b).subscription for b in bodies] == [1]
    assert sorted(runner.seen) == [1, 2]
    assert drain_queue(broker, "jobs") == []  # both acked: nothing came back on stop


def test_requeue_gives_the_job_back(broker: Broker, run_worker: Any) -> None:
    runner = ScriptedRunner({3: Disposition.REQUEUE})
    run_worker(runner)
    publish(broker, job(3))
    wait_for(lambda: runner.seen.count(3) >= 2, 5, "redelivery after requeue")


def test_unparseable_job_is_rejected_not_retried(broker: Broker, run_worker: Any) -> None:
    runner = ScriptedRunner({4: "ok"})
    run_worker(runner)
    publish(broker, b"{garbage")
    publish(broker, job(4))
    wait_for(lambda: runner.seen == [4], 5, "the good job after the bad one")
    assert drain_queue(broker, "jobs") == []


def test_shutdown_hands_back_windows_that_outlive_the_timeout(
    broker: Broker, run_worker: Any
) -> None:
    runner = ScriptedRunner({5: "ok"}, hold=threading.Event())
    lifecycle = run_worker(runner, shutdown_timeout=0.2)
    publish(broker, job(5))
    wait_for(lambda: runner.seen == [5], 5, "job started")
    lifecycle.stop.set()
    wait_for(lambda: len(drain_queue(broker, "jobs")) == 1, 5, "job handed back")
    assert drain_queue(broker, "outcomes") == []
