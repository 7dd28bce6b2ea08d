"""The window end never passes a write that can still commit, whatever hides the writer."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from apievents.common import metrics
from tests.integration.conftest import insert_appointments, subscribe
from tests.support import wait_for
from tests.support.processes import APIEVENTS, service_env
from tests.support.receiver import Receiver
from tests.support.services import Pipeline, connect, fast_settings, private_cluster


def hold() -> float:
    return REGISTRY.get_sample_value("apievents_watermark_hold_seconds") or 0.0


def held_open(conn: psycopg.Connection[Any], note: str) -> int:
    """Insert one appointment in ``conn``'s open transaction; returns its key."""
    row = conn.execute(
        "INSERT INTO appointment (note) VALUES (%s) RETURNING aptnum", (note,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def keys(receiver: Receiver, path: str = "/hook") -> list[int]:
    return [r["AptNum"] for r in receiver.delivered(path)]


def test_a_subscription_created_during_an_open_transaction_gets_its_rows(
    database_url: str, conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    with connect(database_url) as writer:
        with writer.transaction():
            late = held_open(writer, "stamped before the subscription existed")
            subscribe(conn, receiver.url())  # the default DateTimeStart
        after = insert_appointments(conn, 1)
    pipeline.start_all()
    wait_for(lambda: len(receiver.delivered()) >= 2, 30, "both rows")
    assert keys(receiver) == [late, *after]


def test_a_session_with_track_activities_off_holds_the_window(
    database_url: str, conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url())
    metrics.WATERMARK_HOLD.set(0)
    pipeline.start_all()
    with connect(database_url) as hidden:
        hidden.execute("SET track_activities = off")  # its transactions show no xact_start
        with hidden.transaction():
            late = held_open(hidden, "invisible in pg_stat_activity")
            after = insert_appointments(conn, 2)
            wait_for(lambda: hold() > 1.5, 30, "the window held behind the hidden session")
            assert receiver.delivered() == []
    wait_for(lambda: len(receiver.delivered()) == 3, 30, "everything after the commit")
    assert keys(receiver) == [late, *after]


def test_a_database_with_track_activities_off_makes_the_producer_refuse(
    database_url: str, prefix: str
) -> None:
    name = database_url.rsplit("/", 1)[1]
    with connect(database_url) as c:
        c.execute(f'ALTER DATABASE "{name}" SET track_activities = off')
    done = subprocess.run(
        [APIEVENTS, "producer"],
        env=service_env(database_url, prefix),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("apievents: error:")]
    assert "track_activities" in line


@pytest.fixture
def prepared_cluster() -> Iterator[str]:
    with private_cluster(max_prepared_transactions="4") as url:
        yield url


def test_a_prepared_transaction_holds_the_window_until_it_commits(
    prepared_cluster: str, prefix: str, receiver: Receiver
) -> None:
    url = prepared_cluster
    with connect(url) as conn:
        subscribe(conn, receiver.url())
        metrics.WATERMARK_HOLD.set(0)
        p = Pipeline(fast_settings(url, prefix)).start_all()
        try:
            with connect(url) as writer:
                writer.execute("BEGIN")
                late = held_open(writer, "prepared, not committed")
                writer.execute("PREPARE TRANSACTION 'apievents-test'")  # clears xact_start
            after = insert_appointments(conn, 2)
            wait_for(lambda: hold() > 1.5, 30, "the window held behind the prepared one")
            assert receiver.delivered() == []
            conn.execute("COMMIT PREPARED 'apievents-test'")
            wait_for(lambda: len(receiver.delivered()) == 3, 30, "everything after the commit")
            assert keys(receiver) == [late, *after]
        finally:
            p.stop_all()


def test_an_active_statement_bounds_the_window_before_its_xact_start_shows(
    database_url: str, conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    """A statement's timestamp is taken, then its query_start shows, then its xact_start.

    PostgreSQL gives no way to hold a real backend between the last two, so a view placed in
    front of pg_stat_activity (on this test's database only) shows one such backend: active,
    query_start set, xact_start not yet.
    """
    name = database_url.rsplit("/", 1)[1]
    (started,) = conn.execute("SELECT now()").fetchone()  # type: ignore[misc]
    conn.execute("CREATE SCHEMA shadow")
    conn.execute(
        "CREATE VIEW shadow.pg_stat_activity AS SELECT * FROM pg_catalog.pg_stat_activity "
        "UNION ALL SELECT datid, datname, 0, leader_pid, usesysid, usename, application_name, "
        "client_addr, client_hostname, client_port, backend_start, NULL::timestamptz, "
        f"'{started.isoformat()}'::timestamptz, state_change, wait_event_type, wait_event, "
        "'active', backend_xid, backend_xmin, query_id, query, 'client backend' "
        "FROM pg_catalog.pg_stat_activity WHERE pid = pg_backend_pid()"
    )
    conn.execute(f'ALTER DATABASE "{name}" SET search_path = shadow, pg_catalog, public')
    subscribe(conn, receiver.url())
    metrics.WATERMARK_HOLD.set(0)
    pipeline.start_all()
    insert_appointments(conn, 2)  # stamped after the shadow backend's query_start
    wait_for(lambda: hold() > 1.5, 30, "the window held behind the active statement")
    assert receiver.delivered() == []
    conn.execute("DROP VIEW shadow.pg_stat_activity")
    wait_for(lambda: len(receiver.delivered()) == 2, 30, "the rows once it is gone")
