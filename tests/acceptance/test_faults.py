"""Fault injection: writers, flaky endpoints, killed services and restarted servers; no loss.

Seeded (``--fault-seed``) and about a minute long; ``--soak SECONDS`` runs longer by hand:
    .venv/bin/pytest tests/acceptance/test_faults.py --soak 600 -s
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.acceptance.test_restarts import restart_postgresql, restart_rabbitmq
from tests.integration.conftest import subscribe
from tests.support import wait_for
from tests.support.processes import Stack, service_env
from tests.support.receiver import Receiver

pytestmark = pytest.mark.acceptance

QUICK_SECONDS = 40.0
SERVICES = ("producer", "committer", "worker0", "worker1")
# Subscriptions: (path, WatchTable, table, key column, flaky endpoint?)
SUBSCRIPTIONS = [
    ("/apt-flaky", "Appointment", "appointment", "aptnum", True),
    ("/apt-steady", "Appointment", "appointment", "aptnum", False),
    ("/deleted", "AppointmentDeleted", "appointmentdeleted", "aptnum", True),
    ("/patients", "Patient", "patient", "patnum", True),
]
KEY_FIELD = {"appointment": "AptNum", "appointmentdeleted": "AptNum", "patient": "PatNum"}


class FlakyEndpoint:
    """Answers 200 mostly; otherwise 500, a timeout, a reset connection, or a slow 200."""

    def __init__(self, seed: int, timeout: float) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.timeout = timeout
        self.healthy = False

    def __call__(self, n: int) -> int | str:
        with self.lock:
            roll = self.rng.random()
        if self.healthy or roll < 0.70:
            return 200
        if roll < 0.80:
            return 500
        if roll < 0.85:
            time.sleep(self.timeout + 0.3)  # the worker has given up: a failure
            return 500
        if roll < 0.90:
            return "close"
        time.sleep(0.3)
        return 200


def writer(
    url: str, seed: int, stop: threading.Event, top: list[int], errors: list[BaseException]
) -> None:
    """Inserts, updates and deletes; one transaction in ten stays open across polls."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                while not stop.is_set():
                    with conn.transaction():
                        for _ in range(rng.randint(1, 4)):
                            _one_change(conn, rng, top)
                        if rng.random() < 0.1:
                            stop.wait(rng.uniform(1.5, 3.0))
                    stop.wait(rng.uniform(0.01, 0.1))
        except psycopg.OperationalError:
            stop.wait(0.5)  # a server restart: reconnect; the database says what committed
        except BaseException as e:  # a bug in the writer must fail the test, not hide
            errors.append(e)
            return


def _one_change(conn: psycopg.Connection[Any], rng: random.Random, top: list[int]) -> None:
    roll = rng.random()
    if roll < 0.45:
        (last,) = conn.execute(
            "WITH ins AS (INSERT INTO appointment (patnum, note) SELECT g, 'new' "
            "FROM generate_series(1, %s) g RETURNING aptnum) SELECT max(aptnum) FROM ins",
            (rng.randint(1, 30),),
        ).fetchone() or (0,)
        top[0] = max(top[0], last)
    elif roll < 0.75:
        conn.execute(
            "UPDATE appointment SET note = %s, aptstatus = %s WHERE aptnum = %s",
            (f"v{rng.randint(0, 10**6)}", rng.randint(1, 5), rng.randint(1, top[0] + 1)),
        )
    elif roll < 0.85:
        conn.execute("DELETE FROM appointment WHERE aptnum = %s", (rng.randint(1, top[0] + 1),))
    else:
        conn.execute(
            "INSERT INTO patient (lname, fname) VALUES (%s, 'F')", (f"L{rng.randint(0, 999)}",)
        )
        conn.execute(
            "UPDATE patient SET email = %s WHERE patnum = %s",
            (f"e{rng.randint(0, 999)}@x", rng.randint(1, 50)),
        )


def fault_plan(rng: random.Random, seconds: float) -> list[tuple[float, str]]:
    """When to do what: every kind of fault at least once, then random ones."""
    kinds = [f"kill {s}" for s in SERVICES] + [
        "term worker1",
        "term producer",
        "restart rabbitmq",
        "restart postgresql",
    ]
    rng.shuffle(kinds)
    while len(kinds) * 4.0 < seconds - 8:
        kinds.append(rng.choice(kinds))
    step = (seconds - 6) / len(kinds)
    return [(3 + i * step + rng.uniform(0, step / 3), k) for i, k in enumerate(kinds)]


def server_restarts_allowed() -> dict[str, str | None]:
    """Why a server restart cannot run here, or None where it can."""
    return {
        "rabbitmq": None if shutil.which("rabbitmqctl") else "rabbitmqctl not found",
        "postgresql": None
        if Path("/etc/postgresql").is_dir() and shutil.which("pg_ctlcluster")
        else "pg_ctlcluster not found",
    }


def inject(action: str, stack: Stack, say: Callable[[str], None]) -> None:
    verb, target = action.split()
    if verb == "restart":
        why_not = server_restarts_allowed()[target]
        if why_not:
            say(f"NOT RUN: {target} restart ({why_not})")
            return
        (restart_rabbitmq if target == "rabbitmq" else restart_postgresql)()
        return
    service = stack.services[target]
    if verb == "kill":
        service.kill()
    else:
        assert service.terminate() == 0, service.output()
    stack.start(target, "worker" if target.startswith("worker") else target)


def final_versions(
    conn: psycopg.Connection[Any], table: str, key: str
) -> set[tuple[int, datetime]]:
    return {(k, ts) for k, ts in conn.execute(f"SELECT {key}, datetstamp FROM {table}")}


def delivered_versions(receiver: Receiver, path: str, field: str) -> Counter[tuple[int, datetime]]:
    return Counter(
        (r[field], datetime.fromisoformat(r["DateTStamp"])) for r in receiver.delivered(path)
    )


def caught_up(conn: psycopg.Connection[Any], nums: dict[str, int]) -> bool:
    for path, _, table, _, _ in SUBSCRIPTIONS:
        row = conn.execute(
            f"SELECT s.cursor_key IS NULL AND s.date_time_start >= "
            f"coalesce((SELECT max(datetstamp) FROM {table}), '-infinity') "
            "FROM apievents.subscription s WHERE subscription_num = %s",
            (nums[path],),
        ).fetchone()
        if not (row and row[0]):
            return False
    return True


@pytest.fixture
def stack(database_url: str, prefix: str) -> Iterator[Stack]:
    env = service_env(
        database_url,
        prefix,
        APIEVENTS_HTTP_TIMEOUT="1",
        APIEVENTS_HTTP_CONNECT_TIMEOUT="0.5",
        APIEVENTS_LEASE_SECONDS="4",
        APIEVENTS_BATCH_SIZE="50",
        APIEVENTS_CHECKPOINT_BATCHES="2",
    )
    s = Stack(env)
    yield s
    s.close()


def test_no_change_is_lost_under_faults(
    request: pytest.FixtureRequest,
    database_url: str,
    stack: Stack,
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed: int = request.config.getoption("--fault-seed")
    seconds: float = request.config.getoption("--soak") or QUICK_SECONDS
    rng = random.Random(seed)
    lines: list[str] = [f"fault injection: seed {seed}, {seconds:.0f}s of faults"]
    flaky = FlakyEndpoint(seed, timeout=1.0)
    nums: dict[str, int] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for path, watch_table, _, _, is_flaky in SUBSCRIPTIONS:
            if is_flaky:
                receiver.behaviours[path] = flaky
            nums[path] = subscribe(conn, receiver.url(path), watch_table=watch_table)
    for name in SERVICES:
        stack.start(name, "worker" if name.startswith("worker") else name)

    stop = threading.Event()
    top = [0]
    errors: list[BaseException] = []
    writers = [
        threading.Thread(
            target=writer, args=(database_url, seed + i, stop, top, errors), daemon=True
        )
        for i in range(3)
    ]
    for w in writers:
        w.start()
    started = time.monotonic()
    try:
        for at, action in fault_plan(rng, seconds):
            stop.wait(max(0.0, started + at - time.monotonic()))
            lines.append(f"  t={time.monotonic() - started:5.1f}s {action}")
            inject(action, stack, lines.append)
        stop.wait(max(0.0, started + seconds - time.monotonic()))
    finally:
        stop.set()
        for w in writers:
            w.join(30)
    assert not errors, errors

    flaky.healthy = True
    with psycopg.connect(database_url, autocommit=True) as conn:
        wait_for(lambda: caught_up(conn, nums), 120, "every subscription to catch up")
        for path, _, table, key, _ in SUBSCRIPTIONS:
            expected = final_versions(conn, table, key)
            got = delivered_versions(receiver, path, KEY_FIELD[table])
            missing = expected - set(got)
            per_row = Counter(got[v] for v in expected)
            lines.append(
                f"  {path:12} {len(expected):6} final versions, {sum(got.values()):6} rows "
                f"delivered; deliveries per final version: "
                + ", ".join(f"{n}x: {c}" for n, c in sorted(per_row.items()))
            )
            assert not missing, f"{path}: {len(missing)} final versions never delivered"
            assert expected, f"{path}: the writers produced nothing to check"
            for batch in receiver.batches(path):
                order = [
                    (datetime.fromisoformat(r["DateTStamp"]), r[KEY_FIELD[table]])
                    for r in batch.rows
                ]
                assert order == sorted(order), "a batch out of (DateTStamp, key) order"
    for name, service in stack.services.items():
        assert service.proc.poll() is None, f"{name} died:\n{service.output()}"
        assert "Traceback" not in service.output(), service.output()
    with capsys.disabled():
        print("\n" + "\n".join(lines))
