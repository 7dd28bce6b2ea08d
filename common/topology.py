"""The broker topology: every exchange and queue, named from one prefix, with its arguments.

Pure names and arguments; common/amqp.py and common/memory.py declare them on a broker.
Queues are durable quorum queues and messages persistent. A message redelivered more than
DELIVERY_LIMIT times is dead-lettered instead of crash-looping a service; nothing is lost by
that, because the window's claim expires and the producer issues it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DELIVERY_LIMIT = 20
# The dead-letter queue keeps the newest DEAD_LETTER_CAP messages for an operator to inspect;
# older ones are dropped, so a poison message that keeps coming cannot fill the broker.
DEAD_LETTER_CAP = 10_000
CONTENT_TYPE = "application/json"
JOBS, OUTCOMES, DEAD = "jobs", "outcomes", "dead"


@dataclass(frozen=True)
class Queue:
    """A queue, the exchange it is bound to, its routing key and its arguments."""

    name: str
    exchange: str
    routing_key: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Topology:
    """Exchanges and queues, all named from one prefix."""

    prefix: str

    @property
    def exchange(self) -> str:
        """Direct exchange for jobs and outcomes."""
        return self.prefix

    @property
    def dead_exchange(self) -> str:
        """Fanout exchange where rejected (unparseable or poison) messages go."""
        return f"{self.prefix}.dead"

    def queue(self, role: str) -> Queue:
        """The queue for ``role``: JOBS, OUTCOMES or DEAD."""
        args: dict[str, Any] = {"x-queue-type": "quorum"}
        if role == DEAD:
            args |= {"x-max-length": DEAD_LETTER_CAP, "x-overflow": "drop-head"}
            return Queue(f"{self.prefix}.{DEAD}", self.dead_exchange, DEAD, args)
        args |= {"x-dead-letter-exchange": self.dead_exchange, "x-delivery-limit": DELIVERY_LIMIT}
        return Queue(f"{self.prefix}.{role}", self.exchange, role, args)

    def queues(self) -> list[Queue]:
        """Every queue, for declaring."""
        return [self.queue(role) for role in (JOBS, OUTCOMES, DEAD)]
