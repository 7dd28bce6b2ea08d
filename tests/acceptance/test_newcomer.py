"""`make run`'s demo and the all-in-one mode, with real services and with none at all."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import insert_appointments, subscribe
from tests.support import wait_for
from tests.support.processes import APIEVENTS, Service, service_env
from tests.support.receiver import Receiver
from tests.support.services import ADMIN_URL, admin, delete_topology

pytestmark = pytest.mark.acceptance
DELIVERED = re.compile(r"Appointment: delivered (\d+).*Patient: delivered (\d+)")


class Demo:
    def __init__(self, env: dict[str, str], folder: Path, database: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [APIEVENTS, "demo", "--dir", str(folder), "--database-name", database],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def delivered_both(self) -> bool:
        counts = [DELIVERED.search(line) for line in self.lines]
        return any(m and int(m[1]) > 0 and int(m[2]) > 0 for m in counts)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        return self.proc.wait(90)

    def output(self) -> str:
        return "\n".join(self.lines)


def run_until_delivered(env: dict[str, str], folder: Path, database: str) -> str:
    """Start the demo, wait for both subscriptions to show deliveries, Ctrl-C it; its output."""
    demo = Demo(env, folder, database)
    try:
        wait_for(demo.delivered_both, 60, "a positive delivered count")
    finally:
        code = demo.interrupt()
    assert code == 0, demo.output()
    return demo.output()


def test_all_in_one_with_the_memory_broker(database_url: str, receiver: Receiver) -> None:
    env = service_env(database_url, "unused", APIEVENTS_BROKER_URL="memory://")
    with psycopg.connect(database_url, autocommit=True) as conn:
        subscribe(conn, receiver.url())
        keys = insert_appointments(conn, 2500)
    service = Service("all-in-one", env, ["run", "--all-in-one", "--workers", "2"])
    try:
        wait_for(lambda: len(receiver.delivered()) >= 2500, 60, "delivery in one process")
        assert [r["AptNum"] for r in receiver.delivered()] == keys
        assert service.terminate(60) == 0, service.output()
    finally:
        service.close()


@pytest.fixture
def no_services_env(tmp_path: Path) -> dict[str, str]:
    return service_env(
        "postgresql://127.0.0.1:1/nowhere",
        "unused",
        APIEVENTS_BROKER_URL="amqp://guest:guest@127.0.0.1:1//",
    )


def test_demo_falls_back_to_embedded_postgres_and_in_process_broker(
    no_services_env: dict[str, str], tmp_path: Path
) -> None:
    out = run_until_delivered(no_services_env, tmp_path / "demo", "apievents_demo")
    assert "embedded PostgreSQL 16" in out and "in-process" in out, out
    assert out.splitlines()[-1] == "demo: stopped cleanly"
    assert not (tmp_path / "demo" / "pg" / "postmaster.pid").exists()  # embedded server stopped


@pytest.fixture
def demo_database() -> Iterator[str]:
    """A database name for the demo to create; it and the demo's queues go afterwards."""
    name = f"apievents_t_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        delete_topology(f"{name}.demo")


def test_demo_with_real_postgresql_and_rabbitmq(demo_database: str, tmp_path: Path) -> None:
    out = run_until_delivered(service_env(ADMIN_URL, "unused"), tmp_path / "demo", demo_database)
    assert "demo: broker RabbitMQ" in out and f"database {demo_database!r} on PostgreSQL" in out
