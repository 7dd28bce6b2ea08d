"""A MariaDB source with real processes: any service stopped mid-window loses nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import subscribe
from tests.support import wait_for
from tests.support.mariadb import Office, add_office, mariadb_database
from tests.support.processes import Stack
from tests.support.receiver import Receiver, sleep_then

pytestmark = pytest.mark.acceptance

SERVICES = ("producer", "committer", "worker")


@pytest.fixture
def office(database_url: str) -> Iterator[Office]:
    with mariadb_database() as url, psycopg.connect(database_url, autocommit=True) as conn:
        yield add_office(conn, "office", url)


def watermark_covers(conn: psycopg.Connection[Any], office: Office, num: int) -> bool:
    with office.connect() as c:
        cur = c.cursor()
        cur.execute("SELECT MAX(DateTStamp) FROM appointment")
        (newest,) = cur.fetchone() or (None,)
    row = conn.execute(
        "SELECT date_time_start FROM apievents.subscription WHERE subscription_num = %s", (num,)
    ).fetchone()
    return bool(row and newest and row[0] >= newest.replace(tzinfo=UTC))


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("victim", SERVICES)
def test_service_stopped_mid_window_loses_nothing(
    victim: str, how: str, database_url: str, office: Office, stack: Stack, receiver: Receiver
) -> None:
    receiver.behaviours["/slow"] = sleep_then(0.3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        num = subscribe(conn, receiver.url("/slow"), source="office", customer_key="CK-MARKER-5d1e")
        keys = office.insert_appointments(4500, note="PHI-MARKER-2b7c")
        for name in SERVICES:
            stack.start(name)
        wait_for(lambda: len(receiver.batches("/slow")) >= 1, 30, "the window under way")
        service = stack.services[victim]
        if how == "SIGKILL":
            service.kill()
        else:
            assert service.terminate() == 0, service.output()
        more = office.insert_appointments(3)
        stack.start(victim)
        wait_for(lambda: watermark_covers(conn, office, num), 90, "the watermark past every change")
        got = [r["AptNum"] for r in receiver.delivered("/slow")]
        assert set(got) == set(keys + more)
        assert got[-3:] == more  # later changes follow the earlier window, in order
        for name in SERVICES:
            out = stack.services[name].output()
            assert "Traceback" not in out, out
            assert "PHI-MARKER" not in out and "CK-MARKER" not in out
