"""End to end through the real broker and database: every change delivered, in order."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.conftest import insert_appointments, subscribe
from tests.support import wait_for
from tests.support.receiver import Receiver
from tests.support.services import Pipeline


def expect_all(receiver: Receiver, keys: list[int], path: str = "/hook") -> None:
    wait_for(lambda: len(receiver.delivered(path)) >= len(keys), 60, f"{len(keys)} rows")
    got = [r["AptNum"] for r in receiver.delivered(path)]
    assert got == keys  # exactly once here (no failures injected), in (DateTStamp, key) order


@pytest.mark.parametrize("n", [999, 1000, 1001, 2500])
def test_rows_arrive_in_batches_of_at_most_1000(
    n: int, conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url())
    keys = insert_appointments(conn, n)
    pipeline.start_all()
    expect_all(receiver, keys)
    sizes = [len(b.rows) for b in receiver.batches()]
    assert all(1 <= s <= 1000 for s in sizes)
    assert sizes == [1000] * (n // 1000) + ([n % 1000] if n % 1000 else [])
