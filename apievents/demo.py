"""`make run`: the whole pipeline on one machine, with a status line every second.

It uses PostgreSQL and RabbitMQ as configured. A missing PostgreSQL is replaced by an embedded
one (the optional `pgserver` package), and a missing RabbitMQ by kombu's in-process memory
transport, with every service as a thread of one `apievents run --all-in-one` process.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kombu
import orjson
import psycopg
from psycopg import conninfo, sql

from apievents.common import (
    logs,
    migrate_mysql,
    mysql,
    queries,
    queries_pg,
    registry,
    sources,
    subscriptions,
)
from apievents.common.broker import TRANSIENT_ERRORS
from apievents.common.migrate import migrate
from apievents.common.settings import Settings
from apievents.common.sources import MySQLAddress
from apievents.common.ssrf import EndpointPolicy

# Private endpoints are refused by default. The demo's receiver is on loopback, so the demo opts
# in to loopback, and only to loopback, for its subscriptions and its services.
LOOPBACK = "127.0.0.0/8,::1/128"
LOOPBACK_POLICY = EndpointPolicy(allowed=Settings(allowed_networks=LOOPBACK).networks())

NOTE = "apievents demo"
OFFICE, OFFICE_DATABASE = "office", "apievents_demo_office"  # make run-office
FEEDS = [("Appointment", "/appointments"), ("Patient", "/patients")]


class Receiver:
    """A webhook endpoint that counts the rows it was sent, per path."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        lock = threading.Lock()
        counts = self.rows

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    counts[self.path] = counts.get(self.path, 0) + len(orjson.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Demo:
    """Sets everything up, prints status until Ctrl-C (or ``duration``), then tears down."""

    def __init__(
        self,
        settings: Settings,
        folder: str,
        database: str,
        duration: float,
        office_server: str | None = None,
    ) -> None:
        self.settings = settings
        self.office_server = office_server  # mysql://user:pass@host:port of a MariaDB server
        self.dir = Path(folder).resolve()
        self.database = database
        self.duration = duration
        self.embedded: Any = None
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stop = threading.Event()

    def run(self) -> int:
        warnings.filterwarnings("ignore", module="platformdirs")  # pgserver's XDG notice
        self.dir.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        receiver = Receiver()
        try:
            url = self._database()
            broker = self._broker()
            with psycopg.connect(url, autocommit=True) as conn:
                migrate(conn, sample_schema=True)
                subs = self._subscriptions(conn, receiver)
                office = self._office(conn, receiver, subs) if self.office_server else None
            self._start_services(url, broker)
            generator = threading.Thread(target=self._generate, args=(url,), daemon=True)
            generator.start()
            if office is not None:
                threading.Thread(target=self._generate_office, args=(office,), daemon=True).start()
            self._status(url, subs, receiver)
            generator.join(10)
        finally:
            self._stop_services()
            receiver.close()
            if self.embedded is not None:
                self.embedded.cleanup()
        print("demo: stopped cleanly", flush=True)
        return 0

    # -- setup ----------------------------------------------------------------------------------

    def _database(self) -> str:
        server = self.settings.database_url
        try:
            with psycopg.connect(
                conninfo.make_conninfo(server, dbname="postgres", connect_timeout=3)
            ):
                pass
            params = conninfo.conninfo_to_dict(server)
            where = f"PostgreSQL at {params.get('host', 'localhost')}:{params.get('port', 5432)}"
        except psycopg.OperationalError:
            server = self._embedded_postgres()
            where = f"embedded PostgreSQL 16 in {self.dir / 'pg'} (none reachable as configured)"
        admin = conninfo.make_conninfo(server, dbname="postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        print(f"demo: database {self.database!r} on {where}", flush=True)
        return conninfo.make_conninfo(server, dbname=self.database)

    def _embedded_postgres(self) -> str:
        try:
            import pgserver
        except ImportError:
            sys.exit("demo: no PostgreSQL reachable and pgserver missing: pip install -e '.[demo]'")
        self.embedded = pgserver.get_server(self.dir / "pg", cleanup_mode="stop")
        return str(self.embedded.get_uri())

    def _broker(self) -> str:
        url = self.settings.broker_url
        try:
            with kombu.Connection(url, connect_timeout=3) as conn:
                conn.connect()
            print(f"demo: broker RabbitMQ at {kombu.Connection(url).as_uri()}", flush=True)
            return url
        except TRANSIENT_ERRORS:  # nothing listening, or refused: use the memory transport
            print(
                "demo: broker in-process (kombu memory transport; no RabbitMQ reachable), "
                "services run as threads of `apievents run --all-in-one`",
                flush=True,
            )
            return "memory://"

    def _subscriptions(self, conn: psycopg.Connection[Any], receiver: Receiver) -> list[Any]:
        for sub in subscriptions.list_all(conn):
            if sub["Note"] == NOTE:
                subscriptions.remove(conn, sub["SubscriptionNum"])
        created = []
        for table, path in FEEDS:
            sub = subscriptions.create(
                conn,
                {
                    "endpoint_url": receiver.url(path),
                    "watch_table": table,
                    "polling_seconds": 1,
                    "note": NOTE,
                    "customer_key": "demo-key",
                },
                LOOPBACK_POLICY,
                self.settings.watermark_margin_seconds,
            )
            created.append((sub["SubscriptionNum"], table, path))
        return created

    def _office(self, conn: psycopg.Connection[Any], receiver: Receiver, subs: list[Any]) -> str:
        """An Open Dental-shaped MariaDB office next to the PostgreSQL one: its own database
        (OFFICE_DATABASE) on the given server, registered as source ``office``."""
        server = (self.office_server or "").rstrip("/")
        url = f"{server}/{OFFICE_DATABASE}"
        asyncio.run(
            _office_statements(server, [f"CREATE DATABASE IF NOT EXISTS {OFFICE_DATABASE}"])
        )
        if OFFICE not in {s.name for s in sources.list_all(conn)}:
            sources.add(conn, OFFICE, url)
        migrate_mysql.migrate(conn, OFFICE, self.settings.source_timeout_seconds)
        sub = subscriptions.create(
            conn,
            {
                "endpoint_url": receiver.url("/office"),
                "watch_table": "Appointment",
                "polling_seconds": 1,
                "note": NOTE,
                "customer_key": "demo-office-key",
            },
            LOOPBACK_POLICY,
            self.settings.watermark_margin_seconds,
            source=OFFICE,
        )
        subs.append((sub["SubscriptionNum"], f"{OFFICE}.Appointment", "/office"))
        print(f"demo: MariaDB office {OFFICE_DATABASE!r} as source {OFFICE!r}", flush=True)
        return url

    def _generate_office(self, url: str) -> None:
        """The MariaDB office at work: appointments booked and moved."""
        rng = random.Random()  # noqa: S311 - demo data
        while not self.stop.wait(rng.uniform(0.1, 0.5)):
            statement = (
                "INSERT INTO appointment (PatNum, AptStatus, Note) VALUES (7, 1, 'booked')"
                if rng.random() < 0.7
                else "UPDATE appointment SET Note = 'moved' ORDER BY AptNum DESC LIMIT 1"
            )
            try:
                asyncio.run(_office_statements(url, [statement]))
            except Exception as e:  # a demo generator: say so, keep going
                print(f"demo: office write failed: {logs.error_text(e)}", flush=True)

    def _start_services(self, database_url: str, broker_url: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("APIEVENTS_")} | {
            "APIEVENTS_DATABASE_URL": database_url,
            "APIEVENTS_BROKER_URL": broker_url,
            "APIEVENTS_QUEUE_PREFIX": f"{self.database}.demo",
            "APIEVENTS_LOG_LEVEL": self.settings.log_level,
            "APIEVENTS_ALLOWED_NETWORKS": LOOPBACK,
        }
        exe = [sys.executable, "-m", "apievents"]
        if broker_url == "memory://":
            commands = [("all-in-one", [*exe, "run", "--all-in-one", "--workers", "2"])]
        else:
            commands = [(n, [*exe, n]) for n in ("producer", "committer", "worker", "worker")]
        for i, (name, argv) in enumerate(commands):
            log = open(self.dir / f"{name}-{i}.log", "ab")  # noqa: SIM115 - owned by the child
            # A session of their own: Ctrl-C reaches only the demo, which stops them once.
            self.processes.append(
                (
                    name,
                    subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                        argv,
                        env=env,
                        stdout=log,
                        stderr=log,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    ),
                )
            )
        print(f"demo: started {', '.join(n for n, _ in commands)} (logs in {self.dir})", flush=True)

    def _stop_services(self) -> None:
        for _, p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in self.processes:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()

    # -- running --------------------------------------------------------------------------------

    def _generate(self, url: str) -> None:
        """An office at work: appointments booked and moved, patients edited, some deleted."""
        rng = random.Random()  # noqa: S311 - demo data
        with psycopg.connect(url, autocommit=True) as conn:
            while not self.stop.wait(rng.uniform(0.05, 0.4)):
                roll = rng.random()
                if roll < 0.4:
                    conn.execute(
                        "INSERT INTO appointment (patnum, aptstatus, note, aptdatetime) "
                        "VALUES (%s, 1, 'booked', now() + %s * interval '1 hour')",
                        (rng.randint(1, 50), rng.randint(1, 500)),
                    )
                elif roll < 0.6:
                    conn.execute(
                        "UPDATE appointment SET aptdatetime = aptdatetime + interval "
                        "'1 day', note = 'moved' WHERE aptnum = (SELECT max(aptnum) "
                        "FROM appointment) - %s",
                        (rng.randint(0, 20),),
                    )
                elif roll < 0.9:
                    conn.execute(
                        "INSERT INTO patient (lname, fname, email) VALUES (%s, %s, %s)",
                        (
                            rng.choice(["Smith", "Nguyen", "Garcia"]),
                            rng.choice(["Ann", "Bo", "Cy"]),
                            "demo@example.com",
                        ),
                    )
                else:
                    conn.execute(
                        "DELETE FROM appointment WHERE aptnum = (SELECT min(aptnum) "
                        "FROM appointment)"
                    )

    def _status(self, url: str, subs: list[Any], receiver: Receiver) -> None:
        started = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            while not self.stop.wait(1.0):
                parts = []
                for num, table, path in subs:
                    sub = subscriptions.get(conn, num)
                    if "." in table:  # a source's table: its lag is not in PostgreSQL
                        parts.append(
                            f"{table}: delivered {receiver.rows.get(path, 0)} "
                            f"(failures {sub['ConsecutiveFailures']})"
                        )
                        continue
                    lag = _lag(conn, table, sub["DateTimeStart"])
                    parts.append(
                        f"{table}: delivered {receiver.rows.get(path, 0)} "
                        f"(lag {lag:.1f}s, failures {sub['ConsecutiveFailures']})"
                    )
                dead = [name for name, p in self.processes if p.poll() is not None]
                tail = f" | EXITED: {dead}" if dead else ""
                print(
                    f"[{time.monotonic() - started:5.0f}s] " + " | ".join(parts) + tail, flush=True
                )
                if self.duration and time.monotonic() - started >= self.duration:
                    self.stop.set()


async def _office_statements(url: str, statements: list[str]) -> None:
    pool = mysql.Pool(
        OFFICE, MySQLAddress.parse(url if url.count("/") > 2 else url + "/mysql"), 1, 10
    )
    try:
        for statement in statements:
            await pool.fetch(statement)
    finally:
        pool.close()


def _lag(conn: psycopg.Connection[Any], table: str, start: str) -> float:
    wt = registry.get(conn, table)
    row = conn.execute(
        queries_pg.oldest_change_after(wt, inclusive=False), {"start": start}
    ).fetchone()
    if row is None or row[0] is None:
        return 0.0
    (now,) = conn.execute(queries.SERVER_CLOCK).fetchone() or (row[0],)
    return max(0.0, float((now - row[0]).total_seconds()))
