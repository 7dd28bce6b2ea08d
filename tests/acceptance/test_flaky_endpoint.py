"""An endpoint that fails a few POSTs at random catches up: partial progress never backs off."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

from tests.acceptance.test_faults import final_versions
from tests.integration.conftest import subscribe
from tests.support import wait_for
from tests.support.processes import Stack, service_env
from tests.support.receiver import Receiver

pytestmark = pytest.mark.acceptance

WRITE_SECONDS = 30.0
POLLING_SECONDS = 1
SUBSCRIPTIONS = [  # (path, WatchTable, table, key column, JSON key)
    ("/flaky", "Appointment", "appointment", "aptnum", "AptNum"),
    ("/steady", "Appointment", "appointment", "aptnum", "AptNum"),
    ("/patients", "Patient", "patient", "patnum", "PatNum"),
]


class FivePercent:
    """Answers 500 to 5% of POSTs, at random."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.failed = 0

    def __call__(self, n: int) -> int:
        with self.lock:
            if self.rng.random() < 0.05:
                self.failed += 1
                return 500
        return 200


def busy_writer(url: str, seed: int, stop: threading.Event, errors: list[BaseException]) -> None:
    """About 500 new or changed appointments a second, and a few patients."""
    rng = random.Random(seed)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                with conn.transaction():
                    (top,) = conn.execute(  # type: ignore[misc]
                        "WITH ins AS (INSERT INTO appointment (patnum, note) "
                        "SELECT g, 'new' FROM generate_series(1, 10) g RETURNING aptnum) "
                        "SELECT max(aptnum) FROM ins"
                    ).fetchone()
                    conn.execute(
                        "UPDATE appointment SET note = %s WHERE aptnum = ANY(%s)",
                        (f"v{rng.randint(0, 10**6)}", [rng.randint(1, top) for _ in range(2)]),
                    )
                    if rng.random() < 0.1:
                        conn.execute("INSERT INTO patient (lname) VALUES ('L')")
                stop.wait(0.02)
    except BaseException as e:  # a bug in the writer must fail the test, not hide
        errors.append(e)


def lag_seconds(conn: psycopg.Connection[Any], num: int, table: str) -> float:
    """Age of the oldest change the subscription still owes (0 when it owes none)."""
    row = conn.execute(
        f"SELECT extract(epoch FROM now() - min(t.datetstamp)) FROM {table} t, "
        "apievents.subscription s WHERE s.subscription_num = %s AND t.datetstamp > "
        "s.date_time_start",
        (num,),
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


@pytest.fixture
def stack(database_url: str, prefix: str) -> Iterator[Stack]:
    # The real backoff (5 s doubling), which is what made a flaky endpoint fall behind.
    env = service_env(
        database_url,
        prefix,
        APIEVENTS_RETRY_BASE_SECONDS="5",
        APIEVENTS_RETRY_CAP_SECONDS="3600",
        # About 10 POSTs per window at this write rate: at 5% each, a third of the windows fail.
        APIEVENTS_BATCH_SIZE="100",
    )
    s = Stack(env)
    yield s
    s.close()


def test_a_flaky_endpoint_catches_up_within_a_minute(
    request: pytest.FixtureRequest, database_url: str, stack: Stack, receiver: Receiver
) -> None:
    seed: int = request.config.getoption("--fault-seed")
    flaky = FivePercent(seed)
    receiver.behaviours["/flaky"] = flaky
    nums: dict[str, int] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for path, watch_table, *_ in SUBSCRIPTIONS:
            nums[path] = subscribe(
                conn, receiver.url(path), watch_table, polling_seconds=POLLING_SECONDS
            )
    for name in ("producer", "committer", "worker"):
        stack.start(name)
    stop, errors = threading.Event(), []  # type: ignore[var-annotated]
    writers = [
        threading.Thread(target=busy_writer, args=(database_url, seed + i, stop, errors))
        for i in range(2)
    ]
    for w in writers:
        w.start()
    stop.wait(WRITE_SECONDS)
    stop.set()
    for w in writers:
        w.join(30)
    assert not errors, errors

    with psycopg.connect(database_url, autocommit=True) as conn:
        for path, _, table, key, field in SUBSCRIPTIONS:
            expected = final_versions(conn, table, key)

            def arrived(path: str = path, field: str = field, expected: Any = expected) -> bool:
                got = {
                    (r[field], datetime.fromisoformat(r["DateTStamp"]))
                    for r in receiver.delivered(path)
                }
                return bool(expected <= got)

            wait_for(arrived, 60, f"every final version at {path}")
        assert lag_seconds(conn, nums["/flaky"], "appointment") < 3 * POLLING_SECONDS
    assert flaky.failed > 10, "the endpoint failed too rarely to test anything"
    for name, service in stack.services.items():
        assert "Traceback" not in service.output(), f"{name}:\n{service.output()}"
