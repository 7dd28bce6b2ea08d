"""Fair share between customers: one customer's hanging endpoints cannot hold every worker."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.integration.conftest import caught_up, insert_appointments, subscribe
from tests.support import wait_for
from tests.support.receiver import Receiver, sleep_then
from tests.support.services import Pipeline, fast_settings


def test_a_customer_with_hanging_endpoints_takes_at_most_its_share(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # Six of customer A's endpoints accept and then hang; the worker has four slots. Without a
    # cap A's windows fill every slot, and customer B waits out A's timeouts.
    hanging = [f"/a{i}" for i in range(6)]
    for path in hanging:
        receiver.behaviours[path] = sleep_then(8)
        subscribe(conn, receiver.url(path), customer_key="A")
    b = subscribe(conn, receiver.url("/b"), customer_key="B")
    settings = fast_settings(
        database_url,
        prefix,
        worker_concurrency=4,
        max_windows_per_customer=2,
        http_timeout=10,
        lease_seconds=15,
    )
    p = Pipeline(settings).start_all()
    try:
        keys = insert_appointments(conn, 1)
        wait_for(lambda: sum(receiver.active(path) for path in hanging) == 2, 30, "A hanging")
        wait_for(lambda: caught_up(conn, b, keys), 5, "B, while A's POSTs hang")
        assert sum(receiver.active(path) for path in hanging) == 2
        more = insert_appointments(conn, 1)  # and again: B is never stuck behind A
        wait_for(lambda: caught_up(conn, b, more), 5, "B's next window")
    finally:
        p.stop_all()
    assert max(receiver.max_concurrent.get(path, 0) for path in hanging) == 1
    assert [r["AptNum"] for r in receiver.delivered("/b")] == keys + more
