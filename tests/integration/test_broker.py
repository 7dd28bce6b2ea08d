"""The broker seam on the real RabbitMQ: topology, confirms, acks, dead letters."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import kombu
import psycopg
import pytest
from prometheus_client import REGISTRY

from apievents.common import broker, metrics
from apievents.common.broker import Message, Unconfirmed
from apievents.common.topology import DEAD_LETTER_CAP, JOBS, OUTCOMES
from tests.integration.conftest import insert_appointments, subscribe
from tests.support import wait_for
from tests.support.receiver import Receiver
from tests.support.services import BROKER_URL, Pipeline


def publish(prefix: str, bodies: list[bytes], routing_key: str) -> None:
    async def go() -> None:
        session = await broker.connect(BROKER_URL, prefix)
        try:
            await session.publish(bodies, routing_key, 10)
        finally:
            await session.close()

    asyncio.run(go())


def queues(prefix: str, *columns: str) -> list[list[str]]:
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", *columns],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(line.split("\t") for line in listing.splitlines() if line.startswith(prefix))


def test_queues_are_durable_quorum_queues_and_the_dead_letters_are_capped(prefix: str) -> None:
    publish(prefix, [], JOBS)
    assert [q[:3] for q in queues(prefix, "type", "durable")] == [
        [f"{prefix}.{n}", "quorum", "true"] for n in ("dead", "jobs", "outcomes")
    ]
    (dead,) = [q for q in queues(prefix, "arguments") if q[0] == f"{prefix}.dead"]
    assert f'{{"x-max-length",{DEAD_LETTER_CAP}}}' in dead[1]


def test_unparseable_messages_are_dead_lettered_and_services_carry_on(
    prefix: str, conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    metrics.DEAD_LETTERS.set(0)
    pipeline.start_all()
    publish(prefix, [b"\x00 not a job"], JOBS)
    publish(prefix, [b'{"v": 1, "type": "outcome"}'], OUTCOMES)
    wait_for(
        lambda: REGISTRY.get_sample_value("apievents_dead_letter_messages") == 2,
        30,
        "the producer to count the dead letters",
    )
    dead: list[bytes] = []

    def dead_letters() -> int:
        with kombu.Connection(BROKER_URL) as c:
            m = c.default_channel.basic_get(f"{prefix}.dead", no_ack=True)
            if m is not None:
                dead.append(m.body if isinstance(m.body, bytes) else m.body.encode())
        return len(dead) == 2

    wait_for(dead_letters, 30, "two dead letters")
    assert sorted(dead) == sorted([b"\x00 not a job", b'{"v": 1, "type": "outcome"}'])
    subscribe(conn, receiver.url())
    keys = insert_appointments(conn, 3)
    wait_for(lambda: [r["AptNum"] for r in receiver.delivered()] == keys, 30, "delivery")


def test_streamed_confirms_report_exactly_the_refused_messages(prefix: str) -> None:
    """A full queue with reject-publish makes RabbitMQ nack: those, and only those, come back."""
    publish(prefix, [], JOBS)  # the topology
    with kombu.Connection(BROKER_URL) as conn:
        channel = conn.channel()
        small = kombu.Queue(
            f"{prefix}.small",
            kombu.Exchange(prefix, type="direct", durable=True),
            routing_key="jobs",
            queue_arguments={"x-max-length": 2, "x-overflow": "reject-publish"},
        )
        small(channel).declare()
    try:
        with pytest.raises(Unconfirmed) as refused:
            publish(prefix, [b"%d" % i for i in range(5)], "jobs")
        assert refused.value.indexes == [2, 3, 4]
        assert refused.value.refused == [2, 3, 4]  # nacked: surely not routed
    finally:
        with kombu.Connection(BROKER_URL) as conn:
            conn.channel().queue_delete(f"{prefix}.small")


def test_acks_settle_exactly_the_acked_messages_and_requeues_come_back(prefix: str) -> None:
    """Acks go out in bursts (one multiple-ack for a contiguous run); a message still in
    hand, or requeued, is never covered by one."""
    bodies = [b"%d" % i for i in range(10)]
    publish(prefix, bodies, JOBS)

    async def consume_once() -> list[bytes]:
        session = await broker.connect(BROKER_URL, prefix)
        got: list[Message] = []
        try:
            await session.consume(JOBS, 100, got.append)
            while len(got) < 10:
                await asyncio.sleep(0.01)
            await session.cancel()  # a requeued message must not come straight back to us
            for m in got[1:4] + got[5:]:  # 0 stays in hand, 4 is requeued
                session.ack(m)
            session.requeue(got[4])
            await asyncio.sleep(0.2)
        finally:
            await session.close()  # 0 goes back with the connection
        return [m.body for m in got]

    assert asyncio.run(consume_once()) == bodies
    with kombu.Connection(BROKER_URL) as c:
        left = []
        while (m := c.default_channel.basic_get(f"{prefix}.jobs", no_ack=True)) is not None:
            left.append(m.body if isinstance(m.body, bytes) else m.body.encode())
    assert sorted(left) == [b"0", b"4"]


def test_acks_made_right_before_close_are_kept(prefix: str) -> None:
    """The committer acks its last batch and closes at once on SIGTERM: acks still waiting
    for the end of the loop pass go out before the connection closes."""
    publish(prefix, [b"a", b"b", b"c"], OUTCOMES)

    async def ack_then_close() -> int:
        session = await broker.connect(BROKER_URL, prefix)
        got: list[Message] = []
        await session.consume(OUTCOMES, 10, got.append)
        while len(got) < 3:
            await asyncio.sleep(0.05)
        await session.cancel()
        for m in got:
            session.ack(m)
        await session.close()
        after = await broker.connect(BROKER_URL, prefix)
        try:
            name = after.topology.queue(OUTCOMES).name  # type: ignore[attr-defined]
            frame = await after._rpc(after.channel.queue_declare, name, passive=True)  # type: ignore[attr-defined]
            return int(frame.method.message_count)
        finally:
            await after.close()

    assert asyncio.run(ack_then_close()) == 0  # none came back
