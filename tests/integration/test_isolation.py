"""One subscription's trouble costs no other: registry changes, slow tables, timeouts."""

from __future__ import annotations

from typing import Any

import psycopg

from apievents.common import registry, subscriptions
from tests.integration.conftest import caught_up, insert_appointments, state, subscribe
from tests.support import wait_for
from tests.support.receiver import Receiver
from tests.support.services import Pipeline, connect, fast_settings


def stamped_table(conn: psycopg.Connection[Any], name: str, tag: str) -> None:
    conn.execute(
        f"CREATE TABLE {name} (id int PRIMARY KEY, what text NOT NULL DEFAULT '{tag}', "
        "stamp timestamptz NOT NULL DEFAULT now())"
    )
    conn.execute(
        f"CREATE TRIGGER {name}_stamp BEFORE INSERT OR UPDATE ON {name} FOR EACH ROW "
        "EXECUTE FUNCTION apievents.stamp_now('stamp')"
    )


def test_a_name_registered_again_for_another_table_reads_the_new_table(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    stamped_table(conn, "old_gadgets", "old table")
    stamped_table(conn, "new_gadgets", "new table")
    registry.add(conn, "Gadget", "old_gadgets", "id", "stamp")
    first = subscribe(conn, receiver.url("/first"), watch_table="Gadget")
    pipeline.start_all()
    conn.execute("INSERT INTO old_gadgets (id) VALUES (1)")
    wait_for(lambda: receiver.delivered("/first"), 30, "a delivery (the worker knows Gadget)")
    # The operator fixes a mistake: the name now means another table.
    subscriptions.remove(conn, first)
    registry.remove(conn, "Gadget")
    registry.add(conn, "Gadget", "new_gadgets", "id", "stamp")
    num = subscribe(conn, receiver.url("/second"), watch_table="Gadget")
    conn.execute("INSERT INTO new_gadgets (id) VALUES (10), (11)")
    conn.execute("INSERT INTO old_gadgets (id) VALUES (2)")
    wait_for(lambda: len(receiver.delivered("/second")) >= 2, 30, "the new table's rows")
    assert [(r["id"], r["what"]) for r in receiver.delivered("/second")] == [
        (10, "new table"),
        (11, "new table"),
    ]
    assert state(conn, num)["LastError"] is None


def test_a_watch_table_registered_meanwhile_stalls_no_batch(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    other = subscribe(conn, receiver.url("/other"))
    p = Pipeline(fast_settings(database_url, prefix, lease_seconds=30, worker_linger_seconds=0.2))
    p.start_all()
    try:
        keys = insert_appointments(conn, 2)
        wait_for(
            lambda: caught_up(conn, other, keys), 30, "warm-up (the worker knows the registry)"
        )
        stamped_table(conn, "scan", "scan")
        registry.add(conn, "Scan", "scan", "id", "stamp")
        new = subscribe(conn, receiver.url("/new"), watch_table="Scan")
        conn.execute("INSERT INTO scan (id) VALUES (1)")
        keys = insert_appointments(conn, 2)
        # Both due in one tick, so their jobs meet in one batch of the worker.
        conn.execute("UPDATE apievents.subscription SET next_attempt_at = now() + interval '0.5 s'")
        wait_for(lambda: caught_up(conn, other, keys), 10, "the other subscription, unstalled")
        wait_for(lambda: receiver.delivered("/new"), 10, "the new table's row")
    finally:
        p.stop_all()
    assert state(conn, new)["LastError"] is None


def test_a_table_whose_reads_time_out_fails_alone(
    database_url: str, prefix: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """A statement_timeout (here: a read waiting on another session's lock) cancels one
    table's queries. That is a failure of its subscriptions, never "the database is away":
    the others flow, and it backs off with the error recorded."""
    stamped_table(conn, "locked", "locked")
    registry.add(conn, "Locked", "locked", "id", "stamp")
    conn.execute("INSERT INTO locked (id) VALUES (1)")
    slow = subscribe(conn, receiver.url("/locked"), watch_table="Locked")
    innocent = subscribe(conn, receiver.url("/innocent"))
    keys = insert_appointments(conn, 3)  # before the lock's transaction, so not held back
    name = database_url.rsplit("/", 1)[1]
    conn.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '300ms'")
    with connect(database_url) as locker, locker.transaction():
        locker.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        p = Pipeline(fast_settings(database_url, prefix)).start_all()
        try:
            wait_for(lambda: caught_up(conn, innocent, keys), 30, "the innocent subscription")
            wait_for(lambda: state(conn, slow)["ConsecutiveFailures"] >= 1, 30, "a failure")
            assert "QueryCanceled" in (state(conn, slow)["LastError"] or "")
        finally:
            p.stop_all()
    assert receiver.delivered("/locked") == []
