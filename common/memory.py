"""kombu's in-process memory transport: the Session of common/broker.py for ``memory://``.

For unit tests and the all-in-one mode, where every service is a thread of one process and
there is no RabbitMQ. The transport has no I/O, so it is polled from the event loop; it has no
publisher confirms (a publish is final) and no dead-lettering (a rejected message is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import kombu

from apievents.common.broker import Message, OnMessage
from apievents.common.topology import CONTENT_TYPE, Topology

POLL_SECONDS = 0.005


class MemorySession:
    """One kombu connection to the memory transport."""

    def __init__(self, conn: kombu.Connection, topology: Topology) -> None:
        self.conn = conn
        self.topology = topology
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._exchange = kombu.Exchange(topology.exchange, type="direct", durable=True)
        self._producer = kombu.Producer(conn.channel(), exchange=self._exchange)
        self._consumer: kombu.Consumer | None = None
        self._poller: asyncio.Task[None] | None = None
        self._tags = 0

    @classmethod
    async def open(cls, url: str, topology: Topology) -> MemorySession:
        """Connect and declare the queues (there is nothing to fail on)."""
        conn = kombu.Connection(url)
        conn.connect()
        session = cls(conn, topology)
        for queue in topology.queues():
            session._queue(queue.name, queue.routing_key).declare()
        return session

    def _queue(self, name: str, routing_key: str) -> kombu.Queue:
        return kombu.Queue(name, self._exchange, routing_key=routing_key)(self.conn.default_channel)

    async def publish(self, bodies: Sequence[bytes], routing_key: str, timeout: float) -> None:
        """Publish each body; the memory transport has nothing to confirm."""
        for body in bodies:
            self._producer.publish(
                body, routing_key=routing_key, content_type=CONTENT_TYPE, serializer=None
            )

    async def consume(self, role: str, prefetch: int, on_message: OnMessage) -> None:
        """Deliver the queue's messages to ``on_message``, polling the transport."""
        queue = self.topology.queue(role)

        def deliver(message: kombu.Message) -> None:
            self._tags += 1
            body = message.body if isinstance(message.body, bytes) else message.body.encode()
            on_message(Message(body, self._tags, self, message))

        self._consumer = kombu.Consumer(
            self.conn.channel(),
            queues=[self._queue(queue.name, queue.routing_key)],
            on_message=deliver,
            prefetch_count=prefetch,
        )
        self._consumer.consume()
        self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            try:
                self.conn.drain_events(timeout=0)
            except TimeoutError:
                await asyncio.sleep(POLL_SECONDS)

    async def cancel(self) -> None:
        """Stop delivering."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._consumer is not None:
            self._consumer.cancel()

    def ack(self, message: Message) -> None:
        """Ack now."""
        message.handle.ack()

    def requeue(self, message: Message) -> None:
        """Back to the queue."""
        message.handle.requeue()

    def reject(self, message: Message) -> None:
        """Dropped: the memory transport has no dead-lettering."""
        message.handle.reject(requeue=False)

    async def dead_letters(self) -> int:
        """Always 0 here."""
        return 0

    async def close(self) -> None:
        """Stop and release the connection."""
        await self.cancel()
        self.conn.release()
        if not self.closed.done():
            self.closed.set_result(None)
