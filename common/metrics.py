"""Prometheus metrics of every service. Names are a contract; no label per subscription."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

JOBS_PUBLISHED = Counter("apievents_jobs_published", "Jobs published to the broker.")
SUBSCRIPTIONS_DUE = Gauge("apievents_subscriptions_due", "Due subscriptions in the last tick.")
SUBSCRIPTION_LAG = Gauge(
    "apievents_subscription_lag_seconds",
    "Largest age, among active subscriptions, of the oldest change not yet delivered.",
)
WATERMARK_HOLD = Gauge(
    "apievents_watermark_hold_seconds",
    "How far open transactions (and the safety margin) hold window ends behind the DB clock.",
)
# Sources (MariaDB/MySQL office databases): one series per source, none per subscription.
SOURCE_UP = Gauge(
    "apievents_source_up", "1 while the source answered its last read, else 0.", ["source"]
)
SOURCE_ERRORS = Counter(
    "apievents_source_errors", "Reads of a source that failed or timed out.", ["source"]
)
SOURCE_WATERMARK_HOLD = Gauge(
    "apievents_source_watermark_hold_seconds",
    "How far open transactions (and the margin) hold a source's window ends behind its clock.",
    ["source"],
)
DEAD_LETTERS = Gauge(
    "apievents_dead_letter_messages",
    "Messages in the dead-letter queue (it keeps the newest 10,000).",
)
DELIVERIES = Counter("apievents_deliveries", "Webhook POSTs by outcome.", ["outcome"])
ROWS_DELIVERED = Counter("apievents_rows_delivered", "Rows answered with 200 OK.")
DELIVERY_DURATION = Histogram(
    "apievents_delivery_duration_seconds",
    "Time from sending a batch to its answer.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60),
)
WINDOWS_IN_FLIGHT = Gauge("apievents_windows_in_flight", "Windows this worker is delivering.")
WINDOWS_COMMITTED = Counter(
    "apievents_windows_committed", "Outcomes applied by the committer.", ["result"]
)
COMMIT_BATCH_SIZE = Histogram(
    "apievents_commit_batch_size",
    "Outcomes applied per committer transaction.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)


def serve(port: int, ready: Callable[[], bool]) -> None:
    """Serve /metrics, /healthz (alive) and /readyz (``ready()``) on ``port``; 0 disables."""
    if not port:
        return
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _plain(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            if ready():
                return _plain(start_response, "200 OK", b"ready\n")
            return _plain(start_response, "503 Service Unavailable", b"not ready\n")
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    server = make_server("", port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


def _plain(start_response: Any, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not events worth a log line."""
