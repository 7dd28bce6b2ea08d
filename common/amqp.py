"""RabbitMQ through pika's asyncio adapter: the Session of common/broker.py for ``amqp://``.

Everything runs on the service's event loop: pika reads and writes the socket there and answers
heartbeats however busy the service's own coroutines are, as long as none of them blocks the
loop. Publisher confirms are streamed: many messages go out, then one wait for all the acks.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.spec import Basic

from apievents.common.broker import BrokerLost, Message, OnMessage, Unconfirmed
from apievents.common.topology import CONTENT_TYPE, DEAD, Queue, Topology

PERSISTENT = pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2)
OPEN_TIMEOUT = 15.0
_PIKA_ERRORS = (pika.exceptions.AMQPError, AttributeError)  # AttributeError: a closed channel


class AmqpSession:
    """One AMQP connection with one channel in confirm mode."""

    def __init__(self, conn: AsyncioConnection, channel: Any, topology: Topology) -> None:
        self.conn = conn
        self.channel = channel
        self.topology = topology
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.closed.add_done_callback(_retrieved)
        self._closing = False
        self._next_tag = 1
        self._waiting: OrderedDict[int, tuple[_Batch, int]] = OrderedDict()
        self._outstanding: deque[int] = deque()  # delivered, not yet settled, in tag order
        self._acked: set[int] = set()
        self._flush_due = False
        self._consumer: str | None = None
        channel.add_on_close_callback(self._on_channel_closed)

    @classmethod
    async def open(cls, url: str, topology: Topology, heartbeat: int) -> AmqpSession:
        """Connect, declare the topology and turn on confirms; BrokerLost if that fails."""
        loop = asyncio.get_running_loop()
        params = pika.URLParameters(url)
        params.virtual_host = virtual_host(url)
        params.heartbeat = heartbeat
        params.connection_attempts = 1
        params.socket_timeout = 10
        opened: asyncio.Future[None] = loop.create_future()
        holder: list[AmqpSession] = []

        def on_close(conn: AsyncioConnection, reason: BaseException) -> None:
            if not opened.done():
                _fail(opened, BrokerLost(f"cannot connect: {reason}"))
            elif holder:
                holder[0]._on_connection_closed(reason)

        conn = AsyncioConnection(
            params,
            on_open_callback=lambda c: _resolve(opened, None),
            on_open_error_callback=lambda c, e: _fail(opened, BrokerLost(f"cannot connect: {e}")),
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        try:
            await asyncio.wait_for(opened, OPEN_TIMEOUT)
            await _declare(conn, topology)
            session = cls(conn, await _channel(conn), topology)
            holder.append(session)
            await session._rpc(session.channel.confirm_delivery, session._on_confirm)
        except BaseException:
            _close_quietly(conn)
            raise
        return session

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, bodies: Sequence[bytes], routing_key: str, timeout: float) -> None:
        """Publish every body, then wait once for all their confirms."""
        if not bodies:
            return
        batch = _Batch(len(bodies), self.loop)
        first = self._next_tag
        for i, body in enumerate(bodies):
            try:
                self.channel.basic_publish(self.topology.exchange, routing_key, body, PERSISTENT)
            except _PIKA_ERRORS as e:
                raise BrokerLost(f"publish failed: {e!r}") from None
            self._waiting[self._next_tag] = (batch, i)
            self._next_tag += 1
        await asyncio.wait(
            [batch.done, self.closed], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if batch.left:  # a confirm arriving later has no one to tell: forget this burst's
            for tag in range(first, first + len(bodies)):  # tags, and only this burst's
                self._waiting.pop(tag, None)
        if batch.left and self.closed.done():
            raise BrokerLost("the connection closed before the broker confirmed")
        if batch.refused or batch.left:
            raise Unconfirmed(sorted(batch.refused + batch.missing()), sorted(batch.refused))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        tag = method.delivery_tag
        if not method.multiple:
            found = self._waiting.pop(tag, None)
            if found is not None:
                found[0].settle(found[1], ok)
            return
        while self._waiting and next(iter(self._waiting)) <= tag:  # tags only grow
            _, (batch, i) = self._waiting.popitem(last=False)
            batch.settle(i, ok)

    # -- consuming ----------------------------------------------------------------------------

    async def consume(self, role: str, prefetch: int, on_message: OnMessage) -> None:
        """Deliver the queue's messages to ``on_message``, at most ``prefetch`` unsettled."""
        await self._rpc(self.channel.basic_qos, prefetch_count=prefetch)

        def deliver(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            self._outstanding.append(method.delivery_tag)
            on_message(Message(body, method.delivery_tag, self))

        queue = self.topology.queue(role).name
        self._consumer = self.channel.basic_consume(queue, deliver, auto_ack=False)

    async def cancel(self) -> None:
        """Stop consuming (a graceful shutdown); settle what was delivered as usual."""
        if self._consumer is not None and not self.closed.done():
            consumer, self._consumer = self._consumer, None
            await self._rpc(self.channel.basic_cancel, consumer)

    def ack(self, message: Message) -> None:
        """Ack at the end of this loop pass, with one multiple-ack for a contiguous run."""
        self._acked.add(message.tag)
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_acks)

    def requeue(self, message: Message) -> None:
        """Negative-ack with requeue."""
        self._settle(message.tag, lambda: self.channel.basic_nack(message.tag, requeue=True))

    def reject(self, message: Message) -> None:
        """Reject without requeue: the queue dead-letters it."""
        self._settle(message.tag, lambda: self.channel.basic_reject(message.tag, requeue=False))

    def _settle(self, tag: int, send: Callable[[], None]) -> None:
        self._flush_acks()  # earlier acks first, so a multiple-ack never covers this tag
        try:
            self._outstanding.remove(tag)
            send()
        except (ValueError, *_PIKA_ERRORS):
            pass  # unknown here, or the channel is gone and the broker requeued it

    def _flush_acks(self) -> None:
        self._flush_due = False
        if not self._acked or self.closed.done():
            self._acked.clear()
            return
        last = 0
        while self._outstanding and self._outstanding[0] in self._acked:
            last = self._outstanding.popleft()
            self._acked.discard(last)
        try:
            if last:
                self.channel.basic_ack(last, multiple=True)
            for tag in sorted(self._acked):  # the rest, behind a window still in flight
                self._outstanding.remove(tag)
                self.channel.basic_ack(tag)
        except (ValueError, *_PIKA_ERRORS):
            pass  # the channel is gone: the broker redelivers, and take-over sorts it out
        self._acked.clear()

    # -- the rest -----------------------------------------------------------------------------

    async def dead_letters(self) -> int:
        """Messages waiting in the dead-letter queue (a passive declare)."""
        frame = await self._rpc(
            self.channel.queue_declare, self.topology.queue(DEAD).name, passive=True
        )
        return int(frame.method.message_count)

    async def close(self) -> None:
        """Close; the broker requeues whatever is unsettled."""
        self._closing = True
        if not self.closed.done():
            self._flush_acks()  # acks deferred to the end of this loop pass go out first
            _close_quietly(self.conn)
            await asyncio.wait([self.closed], timeout=5)

    async def _rpc(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a pika method that reports through ``callback``; fail if the session closes."""
        future: asyncio.Future[Any] = self.loop.create_future()
        try:
            method(*args, callback=lambda frame: _resolve(future, frame), **kwargs)
        except _PIKA_ERRORS as e:
            raise BrokerLost(f"{getattr(method, '__name__', 'call')} failed: {e!r}") from None
        await asyncio.wait(
            [future, self.closed], timeout=OPEN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if not future.done():  # closed, or a broker that stopped answering (heartbeats
            raise BrokerLost("the broker connection closed or did not answer")  # take longer)
        return future.result()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        self._on_connection_closed(reason)
        _close_quietly(self.conn)

    def _on_connection_closed(self, reason: BaseException) -> None:
        if self.closed.done():
            return
        if self._closing:
            self.closed.set_result(None)
        else:
            self.closed.set_exception(BrokerLost(f"the broker connection closed: {reason}"))


class _Batch:
    """The confirms one publish() waits for."""

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.settled = [False] * size
        self.left = size
        self.refused: list[int] = []
        self.done: asyncio.Future[None] = loop.create_future()

    def settle(self, index: int, ok: bool) -> None:
        if self.settled[index]:
            return
        self.settled[index] = True
        self.left -= 1
        if not ok:
            self.refused.append(index)
        if not self.left and not self.done.done():
            self.done.set_result(None)

    def missing(self) -> list[int]:
        return [i for i, s in enumerate(self.settled) if not s]


async def _channel(conn: AsyncioConnection) -> Any:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    conn.channel(on_open_callback=lambda ch: _resolve(future, ch))
    return await asyncio.wait_for(future, OPEN_TIMEOUT)


async def _declare(conn: AsyncioConnection, topology: Topology) -> None:
    """Declare exchanges and queues on a channel of their own: a queue declared earlier with
    other arguments (a dead-letter queue from before its length cap) closes that channel, and
    is then used as it is, without closing the session."""
    channel = await _channel(conn)
    await _call(channel.exchange_declare, topology.exchange, exchange_type="direct", durable=True)
    await _call(
        channel.exchange_declare, topology.dead_exchange, exchange_type="fanout", durable=True
    )
    for queue in topology.queues():
        channel = await _declare_queue(conn, channel, queue)
    _close_quietly(channel)


async def _declare_queue(conn: AsyncioConnection, channel: Any, queue: Queue) -> Any:
    try:
        await _call(channel.queue_declare, queue.name, durable=True, arguments=queue.arguments)
    except BrokerLost as e:
        if "PRECONDITION_FAILED" not in str(e):
            raise
        import logging

        logging.getLogger(__name__).warning(
            "queue_arguments_differ", extra={"queue": queue.name, "error": str(e)[:200]}
        )
        channel = await _channel(conn)
        await _call(channel.queue_declare, queue.name, passive=True)
    await _call(channel.queue_bind, queue.name, queue.exchange, routing_key=queue.routing_key)
    return channel


async def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A pika call on a setup channel: its callback's frame, or BrokerLost if the channel
    closes first (the close reason names the broker's error)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    channel = getattr(method, "__self__")  # noqa: B009 - a bound pika method

    channel.add_on_close_callback(lambda ch, reason: _fail(future, BrokerLost(str(reason))))
    method(*args, callback=lambda frame: _resolve(future, frame), **kwargs)
    return await asyncio.wait_for(future, OPEN_TIMEOUT)


def virtual_host(url: str) -> str:
    """The vhost of an AMQP URL as kombu and RabbitMQ's docs read it: "/" when the path is
    empty, "/" or "//", else the path without its leading slash, unquoted."""
    path = urlsplit(url).path
    if path in ("", "/", "//"):
        return "/"
    return unquote(path[1:])


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _close_quietly(closable: Any) -> None:
    try:
        if closable.is_open:
            closable.close()
    except _PIKA_ERRORS:
        pass


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark a lost connection's error as seen even if no one awaits it."""
    if not future.cancelled():
        future.exception()
