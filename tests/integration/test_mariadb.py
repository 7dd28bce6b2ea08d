"""A MariaDB office source: every change delivered, in order, whatever the window edges."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from apievents.common import metrics
from tests.integration.conftest import subscribe
from tests.support import stays, wait_for
from tests.support.mariadb import Office, add_office, mariadb_database
from tests.support.receiver import Receiver
from tests.support.services import Pipeline


@pytest.fixture
def office(conn: psycopg.Connection[Any]) -> Iterator[Office]:
    with mariadb_database() as url:
        yield add_office(conn, "office", url)


def hold(source: str = "office") -> float:
    value = REGISTRY.get_sample_value("apievents_source_watermark_hold_seconds", {"source": source})
    return value or 0.0


def keys(receiver: Receiver, path: str = "/hook") -> list[int]:
    return [r["AptNum"] for r in receiver.delivered(path)]


@pytest.mark.parametrize("n", [999, 1000, 1001, 2500])
def test_every_row_arrives_once_in_order_in_batches_of_at_most_1000(
    n: int,
    conn: psycopg.Connection[Any],
    office: Office,
    pipeline: Pipeline,
    receiver: Receiver,
) -> None:
    subscribe(conn, receiver.url(), "Appointment", source="office")
    pipeline.start_all()
    inserted = office.insert_appointments(n)
    wait_for(lambda: len(receiver.delivered()) >= n, 20, f"{n} rows")
    assert keys(receiver) == inserted
    sizes = [len(b.rows) for b in receiver.batches()]
    assert max(sizes) <= 1000 and sum(sizes) == n
    first = receiver.delivered()[0]
    assert first["AptStatus"] == "Scheduled" and first["TimeLocked"] == "false"
    # Open Dental's yyyy-MM-dd HH:mm:ss, as a session in the server's own zone shows it
    with office.connect() as c, c.cursor() as cur:
        cur.execute("SET time_zone = DEFAULT")
        cur.execute("SELECT DateTStamp FROM appointment WHERE AptNum = %s", (first["AptNum"],))
        (stamp,) = cur.fetchone()  # type: ignore[misc]
    assert first["DateTStamp"] == stamp.isoformat(" ")


def test_3000_rows_stamped_within_one_second(
    conn: psycopg.Connection[Any], office: Office, pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url(), "Appointment", source="office")
    pipeline.start_all()
    inserted = office.insert_appointments(3000)
    wait_for(lambda: len(receiver.delivered()) >= 3000, 60, "3000 rows")
    rows = receiver.delivered()
    assert [r["AptNum"] for r in rows] == inserted
    assert len({r["DateTStamp"] for r in rows}) == 1


def test_a_transaction_held_open_across_windows_is_delivered_after_it_commits(
    conn: psycopg.Connection[Any], office: Office, pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url(), "Appointment", source="office")
    pipeline.start_all()
    before = office.insert_appointments(2)
    wait_for(lambda: len(receiver.delivered()) == 2, 30, "the rows before")
    with office.connect() as writer:
        cur = writer.cursor()
        cur.execute("BEGIN")
        cur.execute("INSERT INTO appointment (Note) VALUES ('held open')")
        late = int(cur.lastrowid)
        after = office.insert_appointments(3)  # committed, in later seconds
        wait_for(lambda: hold() > 3, 30, "the window held behind the open transaction")
        assert keys(receiver) == before  # several windows went by; none passed it
        cur.execute("COMMIT")
    wait_for(lambda: len(receiver.delivered()) == 6, 30, "everything after the commit")
    assert keys(receiver) == [*before, late, *after]


def test_a_write_waiting_for_a_table_lock_keeps_its_second_writable(
    conn: psycopg.Connection[Any], office: Office, pipeline: Pipeline, receiver: Receiver
) -> None:
    """The waiting INSERT is in no InnoDB transaction yet, but it has its stamp already: only
    its statement in the process list holds the window below it."""
    subscribe(conn, receiver.url(), "Appointment", source="office")
    pipeline.start_all()
    before = office.insert_appointments(1)
    wait_for(lambda: len(receiver.delivered()) == 1, 30, "the row before")
    done: list[int] = []
    with office.connect() as locker:
        locker.cursor().execute("LOCK TABLES appointment READ")

        def blocked_insert() -> None:
            done.extend(office.insert_appointments(1, "waited for the lock"))

        writer = threading.Thread(target=blocked_insert)
        writer.start()
        wait_for(lambda: hold() > 2.5, 30, "the window held behind the waiting statement")
        locker.cursor().execute("UNLOCK TABLES")
    writer.join(30)
    wait_for(lambda: len(receiver.delivered()) == 2, 30, "the waiting write")
    assert keys(receiver) == [*before, *done]


def test_a_transaction_whose_first_write_waited_for_a_lock_is_held_until_it_commits(
    conn: psycopg.Connection[Any], office: Office, pipeline: Pipeline, receiver: Receiver
) -> None:
    """InnoDB starts a transaction at its first row operation: an INSERT that waited for a
    lock shows a trx_started seconds after the stamp it took. Once the statement ends and the
    transaction stays open, only the memory of that statement holds the window below it."""
    subscribe(conn, receiver.url(), "Appointment", source="office")
    pipeline.start_all()
    before = office.insert_appointments(1)
    wait_for(lambda: len(receiver.delivered()) == 1, 30, "the row before")
    late: list[int] = []
    with office.connect() as locker, office.connect() as writer:
        cur = writer.cursor()

        def insert_then_hold() -> None:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO appointment (Note) VALUES ('waited, then held open')")
            late.append(int(cur.lastrowid))

        locker.cursor().execute("LOCK TABLES appointment READ")
        blocked = threading.Thread(target=insert_then_hold)
        blocked.start()
        wait_for(lambda: hold() > 3.5, 30, "the window held behind the waiting statement")
        locker.cursor().execute("UNLOCK TABLES")
        blocked.join(30)
        assert late, "the INSERT ran"
        after = office.insert_appointments(3)  # committed while the first is still open
        stays(lambda: keys(receiver) == before, 3.0, "no window passes the open transaction")
        cur.execute("COMMIT")
    wait_for(lambda: len(receiver.delivered()) == 5, 30, "everything after the commit")
    assert keys(receiver) == [*before, *late, *after]


def test_deletions_and_patients_arrive_from_the_source(
    conn: psycopg.Connection[Any], office: Office, pipeline: Pipeline, receiver: Receiver
) -> None:
    subscribe(conn, receiver.url("/deleted"), "AppointmentDeleted", source="office")
    subscribe(conn, receiver.url("/patients"), "Patient", source="office")
    pipeline.start_all()
    (gone,) = office.insert_appointments(1)
    with office.connect() as c:
        c.cursor().execute("DELETE FROM appointment WHERE AptNum = %s", (gone,))
        c.cursor().execute("INSERT INTO patient (LName, Premed) VALUES ('Doe', 1)")
    wait_for(lambda: receiver.delivered("/deleted"), 30, "the deletion")
    wait_for(lambda: receiver.delivered("/patients"), 30, "the patient")
    (deleted,) = receiver.delivered("/deleted")
    assert deleted["AptNum"] == gone and deleted["HistApptAction"] == "Deleted"
    (patient,) = receiver.delivered("/patients")
    assert patient["LName"] == "Doe" and patient["Premed"] == "true"
    assert receiver.batches("/patients")[0].headers["Event-Type"] == "WatchTable: Patient"


def test_the_source_is_healthy_in_the_metrics(
    conn: psycopg.Connection[Any], office: Office, pipeline: Pipeline, receiver: Receiver
) -> None:
    metrics.SOURCE_UP.labels("office").set(0)
    subscribe(conn, receiver.url(), "Appointment", source="office")
    pipeline.start_all()
    wait_for(
        lambda: REGISTRY.get_sample_value("apievents_source_up", {"source": "office"}) == 1,
        30,
        "the source up",
    )
    stays(lambda: not receiver.delivered(), 0.5, "no rows without changes")


@pytest.mark.parametrize("zone", ["Australia/Sydney", "America/Los_Angeles"])
def test_an_open_transaction_bounds_the_end_on_a_server_in_local_time(zone: str) -> None:
    # InnoDB shows trx_started in the server's OS time zone, whatever the session's. On a
    # server east of UTC, read as UTC it lies hours ahead and bounds nothing: rows of a
    # transaction held open would be passed. West of UTC it would hold deliveries for hours.
    import asyncio
    from datetime import timedelta

    from apievents.common import mysql
    from apievents.common.mysql_horizon import read
    from apievents.common.sources import MySQLAddress
    from tests.support.mariadb import my_connect, private_server

    async def reading(url: str) -> Any:
        pool = mysql.Pool("zone", MySQLAddress.parse(url), 1, 10.0)
        try:
            return await read(pool, [])
        finally:
            pool.close()

    with private_server(zone) as server, mariadb_database(server) as url:
        with my_connect(url) as c:
            c.cursor().execute("CREATE TABLE t (id int PRIMARY KEY) ENGINE=InnoDB")
        with my_connect(url) as writer:
            cur = writer.cursor()
            cur.execute("BEGIN")
            cur.execute("INSERT INTO t VALUES (1)")
            cur.execute("SELECT NOW()")  # UTC: the session's zone (my_connect)
            (began,) = cur.fetchone()  # type: ignore[misc]
            r = asyncio.run(reading(url))
            assert r.oldest_transaction is not None
            opened = began.replace(tzinfo=r.clock.tzinfo)
            assert abs(r.oldest_transaction - opened) <= timedelta(seconds=2), (
                r.oldest_transaction,
                opened,
            )
            assert r.unproven == 1  # a reading without memory proves no transaction
            # a frontier far ahead, so that only the transaction's own bound holds the end
            far = opened + timedelta(hours=12)
            assert r.horizon(timedelta(seconds=0.05), far).end < opened
            cur.execute("ROLLBACK")


@pytest.mark.parametrize("time_ms", [True, False], ids=["TIME_MS", "whole-seconds-TIME"])
def test_a_running_statement_bounds_the_reading_with_either_processlist(
    time_ms: bool, office: Office, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MariaDB shows a statement's elapsed time in milliseconds; Oracle MySQL only in whole
    seconds, truncated, so its start may be up to a second earlier than NOW() - TIME."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from apievents.common import mysql, mysql_horizon
    from apievents.common.sources import MySQLAddress

    address = MySQLAddress.parse(office.url)
    key = (address.host, address.port)
    if time_ms:  # detected from the server: MariaDB has TIME_MS
        monkeypatch.delitem(mysql_horizon._TIME_MS, key, raising=False)
    else:  # as on Oracle MySQL
        monkeypatch.setitem(mysql_horizon._TIME_MS, key, False)

    async def reading() -> Any:
        pool = mysql.Pool("office", address, 1, 10.0)
        try:
            return await mysql_horizon.read(pool, [])
        finally:
            pool.close()

    with office.connect() as locker:
        locker.cursor().execute("LOCK TABLES appointment READ")
        started = datetime.now(UTC)
        writer = threading.Thread(target=office.insert_appointments, args=(1,))
        writer.start()
        try:
            wait_for(lambda: (datetime.now(UTC) - started).total_seconds() > 1.6, 5, "a wait")
            r = asyncio.run(reading())
        finally:
            locker.cursor().execute("UNLOCK TABLES")
            writer.join(30)
    assert mysql_horizon._TIME_MS[key] is time_ms
    assert r.oldest_statement is not None
    assert r.oldest_statement <= started + timedelta(seconds=0.1)  # never after its start
    slack = timedelta(seconds=0.3 if time_ms else 1.3)
    assert r.oldest_statement >= started - slack, (r.oldest_statement, started)


def test_a_new_subscription_never_starts_after_a_transaction_no_reading_saw_open(
    conn: psycopg.Connection[Any], office: Office
) -> None:
    """A transaction already open when a source is first read may hold stamps from before its
    trx_started: a new subscription's default start is never taken past it."""
    from datetime import datetime, timedelta

    from apievents.common import subscriptions
    from apievents.common.ssrf import EndpointPolicy

    policy = EndpointPolicy(deny_private=False)
    values = {"endpoint_url": "http://192.168.1.14:2097/", "watch_table": "Appointment"}
    values |= {"polling_seconds": 5}

    def create() -> datetime:
        sub = subscriptions.create(conn, values, policy, source="office")
        return datetime.fromisoformat(sub["DateTimeStart"])

    def now() -> datetime:
        return conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]

    with office.connect() as writer:
        cur = writer.cursor()
        cur.execute("BEGIN")
        cur.execute("INSERT INTO appointment (Note) VALUES ('open before any reading')")
        opened = now()
        # no reading of this source ever proved an end: there is nothing safe to start from
        with pytest.raises(subscriptions.InputError, match="give a start"):
            create()
        cur.execute("ROLLBACK")
    first = create()  # nothing open: read from the server, and the frontier moves there
    with office.connect() as writer:
        cur = writer.cursor()
        cur.execute("BEGIN")
        cur.execute("INSERT INTO appointment (Note) VALUES ('open again')")
        assert create() <= first  # at most the frontier: this transaction is unproven too
        cur.execute("ROLLBACK")
    assert opened - timedelta(seconds=10) < first  # a start read from the server, not "never"


def test_a_delayed_insert_holds_the_end_at_the_frontier(office: Office) -> None:
    """INSERT DELAYED returns at once; a handler thread writes its stamped rows later and shows
    no age in the process list, so while one exists no end passes the frontier."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from apievents.common import mysql
    from apievents.common.mysql_horizon import read
    from apievents.common.sources import MySQLAddress

    address = MySQLAddress.parse(office.url)

    async def reading() -> Any:
        pool = mysql.Pool("office", address, 1, 10.0)
        try:
            return await read(pool, [])
        finally:
            pool.close()

    with office.connect() as c:
        cur = c.cursor()
        cur.execute(
            "CREATE TABLE legacy (id int AUTO_INCREMENT PRIMARY KEY, s timestamp) ENGINE=MyISAM"
        )
        assert asyncio.run(reading()).hidden == 0
        with office.connect() as locker:
            locker.cursor().execute("LOCK TABLES legacy READ")
            cur.execute("INSERT DELAYED INTO legacy () VALUES ()")  # returns; the row waits
            try:
                r = asyncio.run(reading())
                assert r.hidden == 1
                frontier = datetime.now(UTC) - timedelta(minutes=1)
                assert r.horizon(timedelta(seconds=0.05), frontier).end == frontier
            finally:
                locker.cursor().execute("UNLOCK TABLES")
                cur.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST "
                    "WHERE COMMAND = 'Delayed insert' AND DB = DATABASE()"
                )
                for (thread,) in cur.fetchall():  # it would linger for delayed_insert_timeout
                    cur.execute(f"KILL {int(thread)}")
    wait_for(lambda: asyncio.run(reading()).hidden == 0, 10, "the handler gone")


def test_a_table_on_an_engine_the_reading_cannot_see_is_never_registered(
    conn: psycopg.Connection[Any],
) -> None:
    from apievents.common import migrate_mysql, registry, sources
    from tests.support.mariadb import my_connect

    with mariadb_database() as url:
        with my_connect(url) as c:  # an office's existing tables, kept by IF NOT EXISTS
            for statement in migrate_mysql.statements():
                c.cursor().execute(statement)
            c.cursor().execute("ALTER TABLE patient ENGINE=MRG_MyISAM")
        sources.add(conn, "merged", url)
        with pytest.raises(migrate_mysql.MySQLMigrateError, match="MRG_MyISAM engine"):
            migrate_mysql.migrate(conn, "merged", 10)
        assert not [wt for wt in registry.all_tables(conn) if wt.source == "merged"]


def test_a_watcher_stopped_mid_reading_stops(
    office: Office, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer's SIGTERM cancels each source's watcher. Cancelled while a reading's
    statement is still running on the server, the watcher must stop, not swallow the
    cancellation in its clean-up (a statement on that busy connection times out) and read on,
    which left the producer running forever after SIGTERM."""
    import asyncio

    from apievents.common import queries_mysql, sources
    from apievents.producer.sources import Watcher

    slow = "SELECT 1, NOW(), 0, 1 FROM (SELECT SLEEP(6)) AS s WHERE %s IS NOT NULL"
    monkeypatch.setattr(queries_mysql, "TRANSACTIONS_IN_FLIGHT", slow)
    source = sources.Source("office", "mysql", office.url)

    async def main() -> None:
        watcher = Watcher(source, 2, 2.0, 0.05)
        watcher.start()
        await asyncio.sleep(0.7)  # within the slow statement, before its 2 s timeout
        await watcher.stop()
        stopped.set()

    stopped = threading.Event()
    # On a loop of its own, in a thread: a watcher that reads on would hang the test itself.
    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    try:
        assert stopped.wait(15), "the watcher read on after it was stopped"
    finally:  # the server runs a closed connection's statement on: end it for later tests
        with office.connect() as c, c.cursor() as cur:
            cur.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE %s AND ID <> "
                "CONNECTION_ID()",
                ("%SLEEP(6)%",),
            )
            for (thread,) in cur.fetchall():
                cur.execute("KILL %s", (thread,))
