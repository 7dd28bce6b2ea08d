"""Each service's /metrics, /healthz and /readyz, scraped from real processes under load."""

from __future__ import annotations

import signal
import socket
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import insert_appointments, subscribe
from tests.support import wait_for
from tests.support.processes import Service, Stack, service_env
from tests.support.receiver import Receiver, status

pytestmark = pytest.mark.acceptance


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status_of(port: int, path: str) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_metrics_health_and_readiness_under_load(
    database_url: str, prefix: str, receiver: Receiver
) -> None:
    ports = {name: free_port() for name in ("producer", "committer", "worker")}
    stack = Stack(service_env(database_url, prefix))
    try:
        for name, port in ports.items():
            stack.env = service_env(database_url, prefix, APIEVENTS_METRICS_PORT=str(port))
            stack.start(name)
        with psycopg.connect(database_url, autocommit=True) as conn:
            receiver.behaviours["/down"] = status(500)
            subscribe(conn, receiver.url("/up"))
            subscribe(conn, receiver.url("/down"), date_time_start="2020-01-01T00:00:00Z")
            insert_appointments(conn, 2500)
        for port in ports.values():
            wait_for(lambda p=port: status_of(p, "/readyz") == 200, 30, "ready")  # type: ignore[misc]
            assert status_of(port, "/healthz") == 200
        wait_for(lambda: len(receiver.delivered("/up")) == 2500, 30, "the load")

        def moved() -> bool:
            p, w, c = (scrape(ports[n]) for n in ("producer", "worker", "committer"))
            return (
                value(p, "apievents_jobs_published_total") >= 2
                and value(p, "apievents_subscription_lag_seconds") > 0
                and ("apievents_subscriptions_due", ()) in p
                and ("apievents_watermark_hold_seconds", ()) in p
                and value(w, "apievents_deliveries_total", outcome="success") >= 3
                and value(w, "apievents_deliveries_total", outcome="http_error") >= 1
                and value(w, "apievents_rows_delivered_total") >= 2500
                and value(w, "apievents_delivery_duration_seconds_count") >= 4
                and ("apievents_windows_in_flight", ()) in w
                and value(c, "apievents_windows_committed_total", result="advanced") >= 1
                and value(c, "apievents_windows_committed_total", result="failed") >= 1
                and value(c, "apievents_commit_batch_size_count") >= 1
            )

        wait_for(moved, 30, "every named metric family to move")
    finally:
        stack.close()


def test_readyz_fails_while_the_broker_is_unreachable(database_url: str, prefix: str) -> None:
    port = free_port()
    env = service_env(
        database_url,
        prefix,
        APIEVENTS_METRICS_PORT=str(port),
        APIEVENTS_BROKER_URL="amqp://guest:guest@127.0.0.1:1//",
    )
    worker = Service("worker", env)
    try:
        wait_for(lambda: status_of(port, "/healthz") == 200, 30, "alive")
        assert status_of(port, "/readyz") == 503
    finally:
        worker.close()


def test_sigusr1_writes_every_threads_stack_and_the_service_goes_on(
    database_url: str, prefix: str
) -> None:
    port = free_port()
    producer = Service(
        "producer", service_env(database_url, prefix, APIEVENTS_METRICS_PORT=str(port))
    )
    try:
        wait_for(lambda: status_of(port, "/readyz") == 200, 30, "ready")
        producer.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: "Current thread" in producer.output(), 10, "the stacks written")
        assert "apievents/producer/service.py" in producer.output()
        assert status_of(port, "/readyz") == 200  # still serving
        assert producer.terminate() == 0
    finally:
        producer.close()
