"""Topology on the real RabbitMQ: quorum queues, dead letters, nothing crash-loops."""

from __future__ import annotations

import subprocess
from typing import Any

import kombu
import psycopg
import pytest

from apievents.common.broker import Broker, Unconfirmed
from tests.integration.conftest import insert_appointments, subscribe
from tests.support import wait_for
from tests.support.receiver import Receiver
from tests.support.services import BROKER_URL, Pipeline


def test_queues_are_durable_quorum_queues(prefix: str) -> None:
    broker = Broker(BROKER_URL, prefix)
    broker.connection().release()
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type", "durable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ours = sorted(line.split() for line in listing.splitlines() if line.startswith(prefix + "."))
    assert ours == [[f"{prefix}.{n}", "quorum", "true"] for n in ("dead", "jobs", "outcomes")]


def test_unparseable_messages_are_dead_lettered_and_services_carry_on(
    prefix: str, conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    pipeline.start_all()
    broker = Broker(BROKER_URL, prefix)
    with broker.connection() as bconn:
        publisher = broker.stream_publisher(bconn)
        publisher.publish_all([b"\x00 not a job"], "jobs")
        publisher.publish_all([b'{"v": 1, "type": "outcome"}'], "outcomes")
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
    broker = Broker(BROKER_URL, prefix)
    with kombu.Connection(BROKER_URL) as conn:
        channel = conn.channel()
        broker.topology.exchange(channel).declare()
        small = kombu.Queue(
            f"{prefix}.small",
            broker.topology.exchange,
            routing_key="jobs",
            queue_arguments={"x-max-length": 2, "x-overflow": "reject-publish"},
        )
        small(channel).declare()
    try:
        with broker.connection() as conn:
            publisher = broker.stream_publisher(conn)
            with pytest.raises(Unconfirmed) as refused:
                publisher.publish_all([b"%d" % i for i in range(5)], "jobs")
            assert refused.value.indexes == [2, 3, 4]
    finally:
        with kombu.Connection(BROKER_URL) as conn:
            conn.channel().queue_delete(f"{prefix}.small")
