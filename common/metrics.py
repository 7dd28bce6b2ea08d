"""Prometheus metrics of every service. Names are a contract; no label per subscription."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS_PUBLISHED = Counter("apievents_jobs_published", "Jobs published to the broker.")
SUBSCRIPTIONS_DUE = Gauge("apievents_subscriptions_due", "Due subscriptions in the last tick.")
WATERMARK_HOLD = Gauge(
    "apievents_watermark_hold_seconds",
    "How far open transactions (and the safety margin) hold window ends behind the DB clock.",
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


def serve(port: int) -> None:
    """Serve /metrics on ``port`` (0 disables)."""
    if port:
        start_http_server(port)
