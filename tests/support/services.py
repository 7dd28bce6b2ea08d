"""Database, broker and pipeline fixtures' machinery, against the real servers."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import kombu
import psycopg

from apievents.common import db
from apievents.common.lifecycle import Lifecycle
from apievents.common.migrate import migrate
from apievents.common.settings import Settings
from apievents.common.ssrf import EndpointPolicy
from apievents.common.topology import Topology

ADMIN_URL = os.environ.get(
    "APIEVENTS_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BROKER_URL = os.environ.get("APIEVENTS_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
# Private endpoints are refused by default; the tests' receivers are on loopback, so the tests
# opt in to loopback, and only to loopback, like an operator would.
LOOPBACK = "127.0.0.0/8,::1/128"
LOOPBACK_POLICY = EndpointPolicy(
    allowed=tuple(ipaddress.ip_network(n) for n in LOOPBACK.split(","))
)


def db_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def admin(sql: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@contextmanager
def template_database() -> Iterator[str]:
    """A migrated database with the sample schema, built once per test session."""
    name = f"apievents_tmpl_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(db_url(name), autocommit=True) as conn:
            migrate(conn, sample_schema=True)
        yield name
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def cloned_database(template: str) -> Iterator[str]:
    """A fresh database for one test, cloned from the template; dropped afterwards."""
    name = f"apievents_t_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield db_url(name)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def queue_prefix() -> Iterator[str]:
    """A unique topology prefix; its exchanges and queues are deleted afterwards."""
    prefix = f"t.{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        delete_topology(prefix)


def delete_topology(prefix: str) -> None:
    """Delete the queues and exchanges a test's services declared under ``prefix``."""
    topology = Topology(prefix)
    with kombu.Connection(BROKER_URL) as conn:
        channel = conn.channel()
        for q in topology.queues():
            channel.queue_delete(q.name)
        for name in (topology.exchange, topology.dead_exchange):
            channel.exchange_delete(name)


def fast_settings(database_url: str, prefix: str, **overrides: Any) -> Settings:
    """Settings tuned for fast tests."""
    base = Settings(
        database_url=database_url,
        broker_url=BROKER_URL,
        queue_prefix=prefix,
        tick_seconds=0.05,
        lease_seconds=10,
        http_timeout=2,
        http_connect_timeout=1,
        retry_base_seconds=0.2,
        retry_cap_seconds=1,
        commit_linger_seconds=0.01,
        shutdown_timeout=5,
        worker_concurrency=4,
        allowed_networks=LOOPBACK,
    )
    return replace(base, **overrides)


@dataclass
class Pipeline:
    """Producer, worker(s) and committer as threads of this process, each with its own stop."""

    settings: Settings
    running: dict[str, tuple[Lifecycle, threading.Thread, Callable[[], None]]] = field(
        default_factory=dict
    )

    def start(self, name: str, kind: str | None = None) -> None:
        from apievents.committer.service import build as committer
        from apievents.producer.service import build as producer
        from apievents.worker.service import build as worker

        builders: dict[str, Any] = {"producer": producer, "worker": worker, "committer": committer}
        lifecycle = Lifecycle()
        wired = builders[kind or name](self.settings, lifecycle)
        thread = threading.Thread(target=wired.service.run, name=name, daemon=True)
        thread.start()
        self.running[name] = (lifecycle, thread, wired.close)

    def start_all(self, workers: int = 1) -> Pipeline:
        self.start("producer")
        self.start("committer")
        for i in range(workers):
            self.start(f"worker{i}", "worker")
        return self

    def stop(self, name: str) -> None:
        lifecycle, thread, close = self.running.pop(name)
        lifecycle.stop.set()
        thread.join(30)
        assert not thread.is_alive(), f"{name} did not stop"
        close()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


def connect(url: str) -> psycopg.Connection[Any]:
    return db.connect(url)


@contextmanager
def private_cluster(**server_settings: str) -> Iterator[str]:
    """A throw-away PostgreSQL cluster of this test's own, for server settings that the shared
    server must not be changed for (max_prepared_transactions needs a restart). Yields the URL
    of its database ``apievents``, migrated with the sample schema; removed afterwards.
    """
    bin_dir = Path(
        subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    folder = Path(tempfile.mkdtemp(prefix="apievents-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(folder, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()
    options = " ".join(
        f"-c {k}={v}"
        for k, v in {"listen_addresses": "127.0.0.1", "fsync": "off", **server_settings}.items()
    )

    def run(*argv: str) -> None:
        subprocess.run([*as_owner, *argv], check=True, capture_output=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "log"),
        "-o", f"-p {port} -k {folder} {options}", "start")  # fmt: skip
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/apievents"
        with psycopg.connect(url.replace("/apievents", "/postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE apievents")
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, sample_schema=True)
        yield url
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
