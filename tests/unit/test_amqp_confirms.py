"""Publisher confirms: each burst learns its own fate, even when another burst timed out."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from pika.spec import Basic

from apievents.common.amqp import AmqpSession
from apievents.common.broker import Unconfirmed
from apievents.common.topology import Topology


class Channel:
    """Stands in for pika's channel: only counts what is published."""

    def __init__(self) -> None:
        self.published = 0

    def add_on_close_callback(self, callback: Any) -> None:
        pass

    def basic_publish(self, *args: Any) -> None:
        self.published += 1


def confirm(session: AmqpSession, tag: int, multiple: bool = False, ok: bool = True) -> None:
    method = (Basic.Ack if ok else Basic.Nack)(delivery_tag=tag, multiple=multiple)
    session._on_confirm(SimpleNamespace(method=method))


def test_a_burst_that_times_out_leaves_the_next_bursts_confirms_alone() -> None:
    async def main() -> tuple[object, object]:
        session = AmqpSession(SimpleNamespace(is_open=False), Channel(), Topology("x"))  # type: ignore[arg-type]
        a = asyncio.ensure_future(session.publish([b"a"], "outcomes", 0.2))  # tag 1: no confirm
        await asyncio.sleep(0.1)
        b = asyncio.ensure_future(session.publish([b"b"], "outcomes", 1.0))  # tag 2
        await asyncio.sleep(0.2)  # a has timed out
        confirm(session, 2, multiple=True)  # the broker confirms 1..2
        ra, rb = await asyncio.gather(a, b, return_exceptions=True)
        return ra, rb

    ra, rb = asyncio.run(main())
    assert isinstance(ra, Unconfirmed)
    assert rb is None


def test_a_refused_message_names_its_position() -> None:
    async def main() -> None:
        session = AmqpSession(SimpleNamespace(is_open=False), Channel(), Topology("x"))  # type: ignore[arg-type]
        burst = asyncio.ensure_future(session.publish([b"a", b"b", b"c"], "outcomes", 1.0))
        await asyncio.sleep(0)
        confirm(session, 1)
        confirm(session, 2, ok=False)
        confirm(session, 3)
        await burst

    with pytest.raises(Unconfirmed) as raised:
        asyncio.run(main())
    assert (raised.value.indexes, raised.value.refused) == ([1], [1])
