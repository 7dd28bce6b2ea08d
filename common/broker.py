"""The broker seam: an explicit RabbitMQ topology, publish with confirm, consume with ack.

kombu picks the transport from the URL: ``amqp://`` for RabbitMQ, ``memory://`` for unit
tests and the all-in-one mode. Queues are durable quorum queues; messages are persistent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import amqp.exceptions
import kombu
import kombu.exceptions
import psycopg
import psycopg_pool
from kombu import Exchange, Queue

# Errors after which reconnecting may help: broker or database restarts, network trouble.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    kombu.exceptions.OperationalError,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.RecoverableConnectionError,
    amqp.exceptions.RecoverableChannelError,
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
)
# Past this many deliveries a message is dead-lettered instead of crash-looping a service.
# Nothing is lost: the window's claim expires and the producer issues it again.
DELIVERY_LIMIT = 20
CONTENT_TYPE = "application/json"
# Every message: persistent, raw JSON bytes (kombu must not serialise them again).
MESSAGE = {
    "content_type": CONTENT_TYPE,
    "content_encoding": "utf-8",
    "delivery_mode": 2,
    "serializer": None,
}


@dataclass(frozen=True)
class Topology:
    """Exchanges and queues, all named from one prefix."""

    prefix: str

    @property
    def exchange(self) -> Exchange:
        """Direct exchange for jobs and outcomes."""
        return Exchange(self.prefix, type="direct", durable=True)

    @property
    def dead_exchange(self) -> Exchange:
        """Where rejected (unparseable or poison) messages go."""
        return Exchange(f"{self.prefix}.dead", type="fanout", durable=True)

    def _queue(self, name: str, exchange: Exchange, dead_letter: bool = True) -> Queue:
        args: dict[str, Any] = {"x-queue-type": "quorum"}
        if dead_letter:
            args |= {
                "x-dead-letter-exchange": f"{self.prefix}.dead",
                "x-delivery-limit": DELIVERY_LIMIT,
            }
        return Queue(
            f"{self.prefix}.{name}",
            exchange,
            routing_key=name,
            durable=True,
            auto_delete=False,
            queue_arguments=args,
        )

    @property
    def jobs(self) -> Queue:
        """Windows to deliver, consumed by workers."""
        return self._queue("jobs", self.exchange)

    @property
    def outcomes(self) -> Queue:
        """What workers did, consumed by the committer."""
        return self._queue("outcomes", self.exchange)

    @property
    def dead(self) -> Queue:
        """Dead letters, kept for an operator to inspect."""
        return self._queue("dead", self.dead_exchange, dead_letter=False)

    def queues(self) -> list[Queue]:
        """Every queue, for declaring."""
        return [self.jobs, self.outcomes, self.dead]


class Broker:
    """Connections, declarations and confirmed publishing for one topology."""

    def __init__(self, url: str, prefix: str, heartbeat: float = 30.0) -> None:
        self.url = url
        self.topology = Topology(prefix)
        self.heartbeat = heartbeat

    @property
    def in_memory(self) -> bool:
        """True for kombu's memory transport (one process, no RabbitMQ)."""
        return self.url.startswith("memory://")

    def connection(self) -> kombu.Connection:
        """A new, connected kombu connection; raises a TRANSIENT_ERROR if the broker is down.

        Publishing goes through a StreamPublisher, which waits for confirms once per batch.
        """
        heartbeat = 0 if self.in_memory else self.heartbeat
        conn = kombu.Connection(self.url, heartbeat=heartbeat, connect_timeout=10)
        conn.connect()
        self.declare(conn)
        return conn

    def declare(self, conn: kombu.Connection) -> None:
        """Declare the topology (idempotent)."""
        channel = conn.default_channel
        self.topology.exchange(channel).declare()
        self.topology.dead_exchange(channel).declare()
        for queue in self.topology.queues():
            queue(channel).declare()

    def stream_publisher(self, conn: kombu.Connection) -> StreamPublisher:
        """A publisher with streamed confirms on its own channel of ``conn``."""
        return StreamPublisher(conn, self.topology, self.in_memory)


class Unconfirmed(Exception):
    """The broker refused (nacked) or did not confirm some messages in time.

    ``indexes`` are all of them; ``refused`` the nacked ones, which were surely not routed.
    The others may have been routed after all.
    """

    def __init__(self, indexes: list[int], refused: list[int] | None = None) -> None:
        super().__init__(f"{len(indexes)} message(s) not confirmed")
        self.indexes = indexes
        self.refused = refused or []


class StreamPublisher:
    """Publishes a batch with streamed confirms: send all, then wait once for the acks.

    One round trip per batch instead of one per message. On the memory transport there is
    nothing to confirm.
    """

    def __init__(self, conn: kombu.Connection, topology: Topology, in_memory: bool) -> None:
        self.conn = conn
        self.channel = conn.channel()
        self._producer = kombu.Producer(self.channel, exchange=topology.exchange)
        self._confirms = not in_memory
        self._next_tag = 1
        self._waiting: dict[int, int] = {}  # delivery tag -> index in the current batch
        self._refused: list[int] = []
        if self._confirms:
            self.channel.confirm_select()
            self.channel.events["basic_ack"].add(self._on_ack)
            self.channel.events["basic_nack"].add(self._on_nack)

    def publish_all(self, bodies: list[bytes], routing_key: str, timeout: float = 10) -> None:
        """Publish every body; return once all are confirmed, else raise Unconfirmed."""
        self._waiting.clear()
        self._refused = []
        for i, body in enumerate(bodies):
            self._producer.publish(body, routing_key=routing_key, **MESSAGE)
            if self._confirms:
                self._waiting[self._next_tag] = i
                self._next_tag += 1
        deadline = time.monotonic() + timeout
        while self._waiting and time.monotonic() < deadline:
            drain(self.conn, min(1.0, max(0.01, deadline - time.monotonic())))
        failed = sorted(self._refused + list(self._waiting.values()))
        if failed:
            raise Unconfirmed(failed, sorted(self._refused))

    def _settle(self, tag: int, multiple: bool) -> list[int]:
        tags = [t for t in self._waiting if t <= tag] if multiple else [tag]
        return [self._waiting.pop(t) for t in tags if t in self._waiting]

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._refused += self._settle(delivery_tag, multiple)


def drain(conn: kombu.Connection, timeout: float) -> bool:
    """Process broker events for up to ``timeout`` seconds; keeps heartbeats flowing."""
    try:
        conn.drain_events(timeout=timeout)
        got = True
    except TimeoutError:
        got = False
    conn.heartbeat_check()
    return got
