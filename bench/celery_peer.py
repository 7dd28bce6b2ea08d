"""The Celery peer: the seed's algorithm as Celery tasks on RabbitMQ, in two processes.

scheduler  beat-style: every second, one task for each due subscription.
worker     ``celery -A bench.celery_peer worker`` with a thread pool; each task sends one
           subscription's window the seed's way (bench/baselines.py).

    python -m bench.celery_peer SECONDS      # the scheduler

Both read APIEVENTS_DATABASE_URL, APIEVENTS_BROKER_URL, APIEVENTS_QUEUE_PREFIX and
APIEVENTS_WORKER_CONCURRENCY, which bench/run.py sets for every form.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import httpx
import kombu
import psycopg
from celery import Celery
from psycopg_pool import ConnectionPool

from bench.baselines import move_window, send_window, server_clock

CONCURRENCY = int(os.environ.get("APIEVENTS_WORKER_CONCURRENCY", "32"))
# A subscription handed to a task is not due again for this long, so a backlog in the queue
# does not fill it with copies; the task's own reschedule replaces it.
LEASE = "60 seconds"
DUE = (
    "UPDATE apievents.subscription SET next_attempt_at = now() + %s::interval "
    "WHERE subscription_num IN (SELECT subscription_num FROM apievents.subscription "
    "WHERE status = 'active' AND next_attempt_at <= now() FOR UPDATE SKIP LOCKED) "
    "RETURNING subscription_num"
)
CLAIM = (
    "SELECT endpoint_url, date_time_start FROM apievents.subscription "
    "WHERE subscription_num = %s AND status = 'active' FOR UPDATE SKIP LOCKED"
)
WORKER_ARGS = [
    "worker",
    "--pool",
    "threads",
    "--concurrency",
    str(CONCURRENCY),
    "--loglevel",
    "WARNING",
    # Gossip, mingle and heartbeats declare queues and exchanges of their own; the bench
    # runs one worker and wants to leave nothing behind in RabbitMQ.
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
]


def queue_name(prefix: str) -> str:
    """The one queue (and direct exchange) the peer uses, unique to the bench run."""
    return f"{prefix}.celery"


def make_app() -> Celery:
    """A Celery app whose only queue is this bench run's, with no results and no pidbox."""
    queue = queue_name(os.environ.get("APIEVENTS_QUEUE_PREFIX", "bench"))
    app = Celery("bench", broker=os.environ.get("APIEVENTS_BROKER_URL"))
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        task_ignore_result=True,
        worker_enable_remote_control=False,  # its pidbox queue would outlive the run
        broker_connection_retry_on_startup=True,
    )
    return app


app = make_app()


class Resources:
    """The worker's database pool and HTTP client, opened by the first task (threads race)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.opened: tuple[ConnectionPool, httpx.Client] | None = None

    def get(self) -> tuple[ConnectionPool, httpx.Client]:
        with self.lock:
            if self.opened is None:
                limits = httpx.Limits(
                    max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY
                )
                # One connection per thread, opened up front as a deployment would size it.
                pool = ConnectionPool(
                    os.environ["APIEVENTS_DATABASE_URL"], min_size=CONCURRENCY, max_size=CONCURRENCY
                )
                self.opened = (pool, httpx.Client(limits=limits))
            return self.opened


RESOURCES = Resources()


@app.task(name="bench.deliver")
def deliver(num: int) -> None:
    """Send one subscription's window the seed's way, unless a task of it is already running."""
    pool, client = RESOURCES.get()
    # One transaction: the row lock is held while the window is sent, so a second task of
    # this subscription finds the row locked and gives up; the pool commits on exit.
    with pool.connection() as conn:
        row = conn.execute(CLAIM, (num,)).fetchone()
        if row is None:
            return
        endpoint, start = row
        end = server_clock(conn)
        move_window(conn, num, send_window(conn, client, endpoint, start, end), end)


def schedule(url: str, seconds: float) -> None:
    """Every second, hand each due subscription to a task, as celery beat would."""
    with psycopg.connect(url, autocommit=True) as conn:
        tick = time.monotonic()
        deadline = tick + seconds
        while tick < deadline:
            for (num,) in conn.execute(DUE, (LEASE,)).fetchall():
                deliver.delay(num)
            tick += 1  # on the second, however long enqueuing took
            time.sleep(max(0.0, tick - time.monotonic()))


def consuming(broker_url: str, prefix: str) -> bool:
    """Whether a worker consumes the peer's queue yet (Celery takes seconds to boot)."""
    with kombu.Connection(broker_url) as conn:
        try:
            _, _, consumers = conn.channel().queue_declare(queue_name(prefix), passive=True)
        except conn.channel_errors:  # the worker has not declared it yet
            return False
    return int(consumers) > 0


def delete_queue(broker_url: str, prefix: str) -> None:
    """Delete the peer's queue and exchange; Celery declares them but never removes them."""
    with kombu.Connection(broker_url) as conn:
        channel = conn.channel()
        channel.queue_delete(queue_name(prefix))
        channel.exchange_delete(queue_name(prefix))


if __name__ == "__main__":
    schedule(os.environ["APIEVENTS_DATABASE_URL"], float(sys.argv[1]))
