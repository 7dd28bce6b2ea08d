"""The three services as real processes: SIGKILL or restart any of them mid-window, lose nothing."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.conftest import insert_appointments, subscribe
from tests.support import wait_for
from tests.support.processes import Stack, service_env
from tests.support.receiver import Receiver, sleep_then

pytestmark = pytest.mark.acceptance

SERVICES = ("producer", "committer", "worker")


def watermark_covers(conn: psycopg.Connection[Any], num: int) -> bool:
    row = conn.execute(
        "SELECT s.date_time_start >= (SELECT max(datetstamp) FROM appointment) "
        "FROM apievents.subscription s WHERE subscription_num = %s",
        (num,),
    ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("victim", SERVICES)
def test_service_stopped_mid_window_loses_nothing(
    victim: str, how: str, database_url: str, stack: Stack, receiver: Receiver
) -> None:
    receiver.behaviours["/slow"] = sleep_then(0.3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        num = subscribe(conn, receiver.url("/slow"), customer_key="CK-MARKER-7f3a")
        keys = insert_appointments(conn, 4500, note="PHI-MARKER-91c2")
        for name in SERVICES:
            stack.start(name)
        wait_for(lambda: len(receiver.batches("/slow")) >= 1, 30, "the window under way")
        service = stack.services[victim]
        if how == "SIGKILL":
            service.kill()
        else:
            assert service.terminate() == 0, service.output()
            assert '"event": "stopped"' in service.output().replace('":"', '": "')
        more = insert_appointments(conn, 3)
        stack.start(victim)
        wait_for(lambda: watermark_covers(conn, num), 60, "the watermark past every change")
        got = [r["AptNum"] for r in receiver.delivered("/slow")]
        assert set(got) == set(keys + more)
        assert got[-3:] == more  # later changes follow the earlier window, in order
        assert receiver.delivered("/slow")[0]["Note"] == "PHI-MARKER-91c2"
        for name in SERVICES:
            out = stack.services[name].output()
            assert "Traceback" not in out, out
            assert "PHI-MARKER" not in out and "CK-MARKER" not in out  # no payload, no key


def test_producer_refuses_a_role_that_cannot_see_all_transactions(
    database_url: str, prefix: str
) -> None:
    import subprocess
    import uuid

    from tests.support.processes import APIEVENTS
    from tests.support.services import admin

    role = f"apievents_t_{uuid.uuid4().hex[:8]}"
    admin(f'CREATE ROLE "{role}" LOGIN')
    try:
        url = database_url.replace("postgres@", f"{role}@", 1)
        env = service_env(url, prefix)
        done = subprocess.run(
            [APIEVENTS, "producer"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2
        assert done.stderr.splitlines()[-1].startswith("apievents: error: the database role")
        assert "pg_read_all_stats" in done.stderr
    finally:
        admin(f'DROP ROLE IF EXISTS "{role}"')
