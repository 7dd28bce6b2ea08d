"""Services reconnect by themselves when RabbitMQ or PostgreSQL restarts.

These restart the machine's shared servers, so they run last and wait until both are back.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.acceptance.test_processes import SERVICES, watermark_covers
from tests.integration.conftest import insert_appointments, subscribe
from tests.support import wait_for
from tests.support.processes import Stack
from tests.support.receiver import Receiver

pytestmark = pytest.mark.acceptance
SERVICES_SH = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"


def restart_rabbitmq() -> None:
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, timeout=120)
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, timeout=120)
    subprocess.run(["bash", str(SERVICES_SH)], check=True, timeout=180)


def restart_postgresql() -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        timeout=120,
    )
    subprocess.run(["bash", str(SERVICES_SH)], check=True, timeout=180)


@pytest.mark.parametrize(
    "restart", [restart_rabbitmq, restart_postgresql], ids=["rabbitmq", "postgresql"]
)
def test_services_recover_from_a_server_restart(
    restart: Any, database_url: str, stack: Stack, receiver: Receiver
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        num = subscribe(conn, receiver.url())
        first = insert_appointments(conn, 5)
    for name in SERVICES:
        stack.start(name)
    wait_for(lambda: len(receiver.delivered()) >= 5, 30, "delivery before the restart")
    restart()
    with psycopg.connect(database_url, autocommit=True) as conn:
        later = insert_appointments(conn, 5)
        wait_for(lambda: watermark_covers(conn, num), 90, "delivery after the restart")
    assert set(first + later) <= {r["AptNum"] for r in receiver.delivered()}
    for name in SERVICES:
        assert stack.services[name].proc.poll() is None, stack.services[name].output()
