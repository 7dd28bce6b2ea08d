"""The broker seam: publish with confirms, consume with ack, behind one small async interface.

Services talk to a Session and never to a client library. The URL picks the implementation:
``amqp://`` is RabbitMQ through pika's asyncio adapter (common/amqp.py), the cheapest client
measured on both hot paths (docs/performance.md); ``memory://`` is kombu's in-process memory
transport (common/memory.py), for unit tests and the all-in-one mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import psycopg_pool

from apievents.common.topology import Topology


class BrokerLost(ConnectionError):
    """The broker connection or channel closed; the service reconnects."""


# Errors after which reconnecting may help: broker or database restarts, network trouble.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes BrokerLost
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
)


class Unconfirmed(Exception):
    """The broker refused (nacked) or did not confirm some messages in time.

    ``indexes`` are all of them; ``refused`` the nacked ones, which were surely not routed.
    The others may have been routed after all.
    """

    def __init__(self, indexes: list[int], refused: list[int] | None = None) -> None:
        super().__init__(f"{len(indexes)} message(s) not confirmed")
        self.indexes = indexes
        self.refused = refused or []


@dataclass(frozen=True, eq=False)
class Message:
    """A delivered message. Settle it once, through the session that delivered it."""

    body: bytes
    tag: int
    session: Session
    handle: Any = None  # the library's own message, where it needs one to settle


OnMessage = Callable[[Message], None]


class Session(Protocol):
    """One broker connection and channel. Every method runs on the event loop's thread."""

    topology: Topology
    closed: asyncio.Future[None]  # fails with BrokerLost when the connection is lost

    async def publish(self, bodies: Sequence[bytes], routing_key: str, timeout: float) -> None:
        """Publish persistent messages; return once all are confirmed, else raise Unconfirmed."""

    async def consume(self, role: str, prefetch: int, on_message: OnMessage) -> None:
        """Deliver messages of the queue for ``role`` to ``on_message``, at most ``prefetch``
        unsettled at a time."""

    async def cancel(self) -> None:
        """Stop consuming; unsettled messages stay with this session until settled."""

    def ack(self, message: Message) -> None:
        """Done with it. Acks are sent in bursts, one for many where AMQP allows it."""

    def requeue(self, message: Message) -> None:
        """Hand it back to the queue for another consumer."""

    def reject(self, message: Message) -> None:
        """Dead-letter it (unparseable or poison)."""

    async def dead_letters(self) -> int:
        """Messages waiting in the dead-letter queue."""

    async def close(self) -> None:
        """Close the connection; unsettled messages go back to their queue."""


async def connect(url: str, prefix: str, heartbeat: int = 30) -> Session:
    """A connected session with the topology declared; raises BrokerLost if unreachable."""
    topology = Topology(prefix)
    if url.startswith("memory://"):
        from apievents.common.memory import MemorySession

        return await MemorySession.open(url, topology)
    from apievents.common.amqp import AmqpSession

    return await AmqpSession.open(url, topology, heartbeat)


def in_memory(url: str) -> bool:
    """True for kombu's memory transport (one process, no RabbitMQ)."""
    return url.startswith("memory://")
