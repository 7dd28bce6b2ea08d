"""MariaDB for tests: a database of its own per test, dropped afterwards, and a source for it.

Tests never drop anything they did not create: every database here is made with a unique
name by ``mariadb_database`` and dropped by it alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pymysql

from apievents.common import migrate_mysql, sources

MARIADB_URL = os.environ.get("APIEVENTS_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306")


def my_connect(url: str, **kw: Any) -> pymysql.connections.Connection[Any]:
    """An autocommit session in UTC to the database of ``url`` (or none)."""
    u = urlsplit(url)
    return pymysql.connect(
        host=u.hostname or "127.0.0.1",
        port=u.port or 3306,
        user=u.username or "root",
        password=u.password or "",
        database=u.path.lstrip("/") or None,
        autocommit=True,
        init_command="SET time_zone = '+00:00'",
        **kw,
    )


@contextmanager
def mariadb_database(server_url: str = MARIADB_URL) -> Iterator[str]:
    """A fresh database on the server; yields its URL; dropped on exit."""
    name = f"apievents_t_{uuid.uuid4().hex[:12]}"
    with my_connect(server_url) as c:
        c.cursor().execute(f"CREATE DATABASE `{name}`")
    try:
        yield f"{server_url}/{name}"
    finally:
        with my_connect(server_url) as c:
            c.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")


@dataclass(frozen=True)
class Office:
    """A MariaDB database with Open Dental's tables, registered as source ``name``."""

    name: str
    url: str

    def connect(self) -> pymysql.connections.Connection[Any]:
        return my_connect(self.url)

    def insert_appointments(self, n: int, note: str = "") -> list[int]:
        """n appointments in one statement (one DateTStamp for all); their keys, in order."""
        note = note or uuid.uuid4().hex
        with self.connect() as c:
            cur = c.cursor()
            cur.execute(
                "INSERT INTO appointment (PatNum, AptStatus, Note) "
                f"SELECT seq, 1, %s FROM seq_1_to_{int(n)}",
                (note,),
            )
            cur.execute("SELECT AptNum FROM appointment WHERE Note = %s ORDER BY AptNum", (note,))
            return [int(r[0]) for r in cur.fetchall()]


def add_office(conn: psycopg.Connection[Any], name: str, url: str) -> Office:
    """Register ``url`` as source ``name`` and give it Open Dental's schema and WatchTables."""
    sources.add(conn, name, url)
    migrate_mysql.migrate(conn, name, 10)
    return Office(name, url)


@contextmanager
def private_server(timezone: str) -> Iterator[str]:
    """A throw-away MariaDB server of this test's own, whose OS time zone is ``timezone`` (as an
    office server running in local time has); yields its URL; stopped and deleted on exit."""
    from tests.support.services import _free_port

    folder = Path(tempfile.mkdtemp(prefix="apievents-mariadb-"))
    port = _free_port()
    subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={folder / 'data'}",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
    )
    server = subprocess.Popen(
        [
            "mariadbd",
            "--no-defaults",
            f"--datadir={folder / 'data'}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={folder / 'sock'}",
            "--user=root",
            "--innodb-buffer-pool-size=32M",
            "--skip-log-bin",
            f"--log-error={folder / 'err'}",
        ],
        env=os.environ | {"TZ": timezone},
    )
    url = f"mysql://root@127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                my_connect(url).close()
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(folder, ignore_errors=True)
