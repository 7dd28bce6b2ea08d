"""Run every benchmark scenario against the local PostgreSQL and RabbitMQ; print one table.

    make bench                      # all scenarios
    python -m bench.run 2 3         # some of them

Each scenario runs the pipeline ("ours", real processes) and, in the same invocation, the
seed's sequential loop and the raw limit (bench/baselines.py) and, for most, the seed's
algorithm as Celery tasks (bench/celery_peer.py). The headline is the ratio to those, printed
last, because absolute numbers drift on a shared machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

from apievents.common import queries, registry
from apievents.common.migrate import migrate
from bench import celery_peer
from tests.support.mariadb import add_office, mariadb_database
from tests.support.services import ADMIN_URL, BROKER_URL, admin, db_url, delete_topology

PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
BACKFILL_ROWS = int(os.environ.get("BENCH_BACKFILL_ROWS", "1000000"))
MARIADB_ROWS = int(os.environ.get("BENCH_MARIADB_ROWS", "300000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
CONCURRENCY = os.environ.get("BENCH_WORKER_CONCURRENCY", "32")
# Only these forms (comma-separated, e.g. "ours" while profiling); every form by default.
FORMS = {f.strip() for f in os.environ.get("BENCH_FORMS", "").split(",") if f.strip()}


def wanted(form: str) -> bool:
    """Whether BENCH_FORMS lets ``form`` run ("ours" stands for every form of ours)."""
    return not FORMS or form in FORMS or ("ours" in FORMS and form.startswith("ours"))


OURS = "ours, 1 worker"
# The live scenarios: subscriptions per receiver path, all polling every second.
LIVE = (
    ("2 1000 subs @1s", {"/live": 1000}),
    ("3 100 slow subs", {"/slow": 100}),
    ("6 300 fast + 100 slow", {"/live": 300, "/slow": 100}),
)


class Proc:
    """A child process whose CPU time and peak RSS we read from /proc before stopping it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.p = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def cpu(self) -> float:
        stat = Path(f"/proc/{self.p.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()


@dataclass
class Row:
    scenario: str
    form: str
    rate: str
    p50: float | None = None
    p99: float | None = None
    cpu_per_1000: float | None = None
    rss: dict[str, float] = field(default_factory=dict)
    note: str = ""
    per_second: float | None = None  # the throughput as a number, for the ratios
    complete: bool = True  # every row the scenario inserted reached the receiver
    cpu_per_1000_windows: float | None = None  # a window is one POST: one keyset page
    # the same, counting only the CPU spent while rows flowed (no start-up, no warm-up)
    cpu_per_1000_windows_flowing: float | None = None
    rows_per_window: float | None = None

    def markdown(self) -> str:
        def s(v: float | None, unit: str = "s") -> str:
            return "-" if v is None else f"{v:.3f}{unit}" if v < 10 else f"{v:.1f}{unit}"

        rss = ", ".join(f"{k} {v:.0f}" for k, v in self.rss.items()) or "-"
        return (
            f"| {self.scenario} | {self.form} | {self.rate} | {s(self.p50)} | {s(self.p99)} "
            f"| {s(self.cpu_per_1000, '')} | {rss} | {self.note} |"
        )


class Rows(list[Row]):
    """Results, each printed as soon as it exists (a long run should not end empty-handed)."""

    def append(self, row: Row) -> None:
        super().append(row)
        print(row.markdown(), flush=True)


class Bench:
    def __init__(self) -> None:
        self.name = f"apievents_bench_{uuid.uuid4().hex[:8]}"
        self.url = db_url(self.name)
        self.prefix = f"bench.{uuid.uuid4().hex[:8]}"
        self.port = _free_port()
        self.split: dict[str, float] = {}
        self.receiver = f"http://127.0.0.1:{self.port}"
        self.rows = Rows()

    # -- plumbing -----------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("APIEVENTS_")}
        return (
            base
            | {
                "APIEVENTS_DATABASE_URL": self.url,
                "APIEVENTS_BROKER_URL": BROKER_URL,
                "APIEVENTS_QUEUE_PREFIX": self.prefix,
                "APIEVENTS_LOG_LEVEL": "WARNING",
                "APIEVENTS_WORKER_CONCURRENCY": CONCURRENCY,
                "APIEVENTS_ALLOWED_NETWORKS": "127.0.0.0/8",  # the receiver is on loopback
            }
            | extra
        )

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.receiver}/stats", timeout=30).json()  # type: ignore[no-any-return]

    def subscriptions(self, groups: dict[str, int], start: str = "now()") -> None:
        """Replace every subscription with ``groups[path]`` ones on each receiver path."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DELETE FROM apievents.subscription")
            for path, n in groups.items():
                conn.execute(
                    "INSERT INTO apievents.subscription (endpoint_url, watch_table,"
                    f" polling_seconds, date_time_start, secret) SELECT %s || g, 'Appointment', 1,"
                    f" {start}, %s FROM generate_series(1, %s) g",
                    (f"{self.receiver}{path}/", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", n),
                )
        httpx.post(f"{self.receiver}/reset")

    @contextmanager
    def ours(self, workers: int, **extra: str) -> Iterator[list[Proc]]:
        env = self.env(**extra)
        procs = [
            Proc("producer", [PY, "-m", "apievents", "producer"], env),
            Proc("committer", [PY, "-m", "apievents", "committer"], env),
        ]
        procs += [
            Proc(f"worker{i}", [PY, "-m", "apievents", "worker"], env) for i in range(workers)
        ]
        try:
            yield procs
        finally:
            for p in procs:
                p.stop()

    @contextmanager
    def baseline(self, mode: str, seconds: float) -> Iterator[list[Proc]]:
        proc = Proc(mode, [PY, "-m", "bench.baselines", mode, self.url, str(seconds)], self.env())
        try:
            yield [proc]
        finally:
            proc.stop()

    @contextmanager
    def celery(self, seconds: float) -> Iterator[list[Proc]]:
        """The Celery peer: its scheduler and one thread-pool worker, then its queue deleted.

        Yields once the worker consumes: Celery's boot (several seconds here) is not what the
        live scenarios measure, and their fixed 3 s warm-up is too short for it."""
        env = self.env()
        procs = [
            Proc("scheduler", [PY, "-m", "bench.celery_peer", str(seconds)], env),
            Proc(
                "celery",
                [PY, "-m", "celery", "-A", "bench.celery_peer", *celery_peer.WORKER_ARGS],
                env,
            ),
        ]
        try:
            _wait(lambda: celery_peer.consuming(BROKER_URL, self.prefix), 60)
            yield procs
        finally:
            for p in procs:
                p.stop()
            celery_peer.delete_queue(BROKER_URL, self.prefix)

    def measure(self, procs: list[Proc], rows: int) -> tuple[float, dict[str, float]]:
        self.split = {p.name: p.cpu() for p in procs}
        cpu = sum(self.split.values())
        return (cpu / max(rows, 1) * 1000, {p.name: p.peak_rss_mb() for p in procs})

    def cpu_split(self) -> str:
        """Where the CPU went, per process (seconds), for the note column."""
        return "CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in self.split.items())

    # -- scenarios ----------------------------------------------------------------------------

    def backfill(
        self, form: str, run: Any, label: str = "1 backfill", rows: int | None = None
    ) -> None:
        if rows is None:
            self.subscriptions({"/backfill": 1}, "'2000-01-01'")
        else:
            httpx.post(f"{self.receiver}/reset")
        rows = rows or BACKFILL_ROWS
        started = time.time()
        with run as procs:
            _wait(lambda: self.stats()["rows"] >= rows, 900)
            cpu, rss = self.measure(procs, rows)
        st = self.stats()
        rate = rows / (st["last"] - st["first"])  # steady state: first to last row
        note = f"{st['first'] - started:.1f}s from launch to first row; {self.cpu_split()}"
        self.rows.append(
            Row(label, form, f"{rate:,.0f} rows/s", None, None, cpu, rss, note, per_second=rate)
        )

    def live(self, label: str, form: str, run: Any, groups: dict[str, int]) -> None:
        """``groups[path]`` subscriptions per receiver path, polling every second; one new row
        per second. One result row per path group, each with its own latencies."""
        self.subscriptions(groups)
        with run as procs:
            time.sleep(3)  # let every subscription take its first (empty) look
            before = sum(p.cpu() for p in procs)  # start-up and warm-up are behind us
            inserted = self.insert_live()
            expected = {path.strip("/"): inserted * n for path, n in groups.items()}
            _wait(lambda: self.delivered(expected), 30)
            cpu, rss = self.measure(procs, sum(expected.values()))
            flowing = sum(self.split.values()) - before
        st = self.stats()
        windows = sum(g["posts"] for g in st["groups"].values())
        for i, (group, want) in enumerate(expected.items()):
            got = st["groups"].get(group, {"rows": 0, "posts": 0, "p50": None, "p99": None})
            scenario = label if len(groups) == 1 else f"{label}: {group}"
            row = Row(
                scenario, form, f"{got['rows'] / SECONDS:,.0f} rows/s", got["p50"], got["p99"]
            )
            row.per_second, row.complete = got["rows"] / SECONDS, got["rows"] >= want
            row.note = f"{got['rows']:,} of {want:,} rows delivered"
            if i == 0:  # the processes are shared by every group: their costs go on one row
                row.cpu_per_1000, row.rss = cpu, rss
                row.cpu_per_1000_windows = sum(self.split.values()) / max(windows, 1) * 1000
                row.cpu_per_1000_windows_flowing = flowing / max(windows, 1) * 1000
                row.rows_per_window = st["rows"] / max(windows, 1)
                row.note += f"; {self.cpu_split()}"
            self.rows.append(row)

    def insert_live(self) -> int:
        """One row a second for SECONDS; how many were inserted."""
        inserted = 0
        with psycopg.connect(self.url, autocommit=True) as conn:
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                conn.execute("INSERT INTO appointment (patnum, note) VALUES (1, 'live')")
                inserted += 1
                time.sleep(1)
        return inserted

    def delivered(self, expected: dict[str, int]) -> bool:
        """Whether each path group has received all of its rows."""
        groups = self.stats()["groups"]
        return all(groups.get(g, {"rows": 0})["rows"] >= n for g, n in expected.items())

    def idle(self, form: str, run: Any) -> None:
        self.subscriptions({"/idle": 10_000})
        with run as procs:
            time.sleep(3)
            before = {p.name: p.cpu() for p in procs}
            time.sleep(SECONDS)
            used = {p.name: (p.cpu() - before[p.name]) / SECONDS * 100 for p in procs}
            rss = {p.name: p.peak_rss_mb() for p in procs}
        busiest = "producer" if "producer" in used else procs[0].name
        self.rows.append(
            Row(
                "4 10k idle subs",
                form,
                f"{used[busiest]:.1f}% of a core ({busiest})",
                None,
                None,
                None,
                rss,
                ", ".join(f"{k} {v:.1f}%" for k, v in used.items()),
            )
        )

    def run(self, which: set[str]) -> None:
        admin(f'CREATE DATABASE "{self.name}"')
        receiver = subprocess.Popen([PY, "-m", "bench.receiver", str(self.port)])  # noqa: S603
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                migrate(conn, sample_schema=True)
            _wait(lambda: _up(self.receiver), 30)
            self.backfills(which)
            if "7" in which:
                self.mariadb_backfill()
            self.lives(which)
            if "4" in which:
                self.idle(OURS, self.ours(1))
                if wanted("seed loop"):
                    self.idle("seed loop", self.baseline("seed", SECONDS + 10))
        finally:
            receiver.terminate()
            receiver.wait()
            admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            delete_topology(self.prefix)

    def mariadb_backfill(self) -> None:
        """Scenario 7: MARIADB_ROWS old rows of a MariaDB source's Open Dental appointment
        table to one subscription; ours against the raw MariaDB loop (bench/mariadb.py)."""
        with mariadb_database() as url, psycopg.connect(self.url, autocommit=True) as conn:
            office = add_office(conn, "bench", url)
            with office.connect() as c:
                c.cursor().execute(
                    "INSERT INTO appointment (PatNum, Note) "
                    f"SELECT seq % 1000, 'backfill row' FROM seq_1_to_{MARIADB_ROWS}"
                )
                c.cursor().execute("ANALYZE TABLE appointment")
            wt = registry.get(conn, "bench.Appointment")
            row = conn.execute(queries.REGISTRY_GET, (wt.name,)).fetchone()
            conn.execute("DELETE FROM apievents.subscription")
            conn.execute(
                "INSERT INTO apievents.subscription (endpoint_url, watch_table, polling_seconds,"
                " date_time_start, secret) VALUES (%s, %s, 1, '2000-01-01', %s)",
                (f"{self.receiver}/backfill/1", wt.name, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            )
            raw_argv = [PY, "-m", "bench.mariadb", url, orjson.dumps(list(row or ())).decode()]
            raw_argv += [f"{self.receiver}/backfill/1", "900"]
            for form, run in (
                (OURS, lambda: self.ours(1)),
                ("raw limit", lambda: _procs(Proc("raw", raw_argv, self.env()))),
            ):
                if wanted(form):
                    self.backfill(form, run(), "7 MariaDB backfill", rows=MARIADB_ROWS)
                    conn.execute(
                        "UPDATE apievents.subscription SET date_time_start = '2000-01-01', "
                        "cursor_key = NULL, next_attempt_at = now()"
                    )
            conn.execute("DELETE FROM apievents.subscription")
            conn.execute("DELETE FROM apievents.watch_table WHERE source = 'bench'")
            conn.execute("DELETE FROM apievents.source WHERE name = 'bench'")

    def backfills(self, which: set[str]) -> None:
        """Scenarios 1 and 5: BACKFILL_ROWS old rows to one subscription that starts in 2000."""
        if not which & {"1", "5"}:
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO appointment (patnum, note) SELECT g %% 1000, "
                "'backfill row' FROM generate_series(1, %s) g",
                (BACKFILL_ROWS,),
            )
            # Every form then reads settled pages: the first reader of fresh rows would
            # otherwise pay for setting their hint bits, and ours reads first.
            conn.execute("VACUUM (ANALYZE) appointment")
        if "1" in which:
            for form, run in (
                (OURS, lambda: self.ours(1)),
                ("seed loop", lambda: self.baseline("seed", 900)),
                ("raw limit", lambda: self.baseline("raw", 900)),
                ("celery", lambda: self.celery(900)),
            ):
                if wanted(form):
                    self.backfill(form, run())
        if "5" in which:
            self.backfill("ours, 2 workers", self.ours(2), "5 backfill, 2 workers")
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("TRUNCATE appointment")

    def lives(self, which: set[str]) -> None:
        """Scenarios 2, 3 and 6 in every form; scenario 5's second half rides on 2's setup."""
        for label, groups in LIVE:
            if label[0] not in which:
                continue
            for form, run in (
                (OURS, lambda: self.ours(1)),
                ("seed loop", lambda: self.baseline("seed", SECONDS + 40)),
                ("raw limit", lambda: self.baseline("raw", SECONDS + 40)),
                ("celery", lambda: self.celery(SECONDS + 40)),
            ):
                if wanted(form):
                    self.live(label, form, run(), groups)
            if label[0] == "2" and "5" in which:
                self.live("5 1000 subs, 2 workers", "ours, 2 workers", self.ours(2), groups)

    def table(self) -> str:
        head = (
            "| scenario | form | throughput | p50 latency | p99 latency | CPU s / 1000 rows "
            "| peak RSS MB | note |\n|---|---|---|---|---|---|---|---|"
        )
        return "\n".join([head, *(r.markdown() for r in self.rows)])

    def windows(self) -> str:
        """Scenario 2's cost per window: what 1000 subscriptions polling every second cost."""
        lines = [
            "\n\nscenario 2: CPU s per 1000 windows, all processes of the form "
            "(a window = one POST; CPU s / 1000 rows above is the same only at 1 row a window; "
            "the whole run counts each process from its launch, start-up and warm-up included)"
        ]
        for r in self.rows:
            if r.scenario.startswith("2 ") and r.cpu_per_1000_windows is not None:
                lines.append(
                    f"- {r.form}: {r.cpu_per_1000_windows:.3f} CPU s / 1000 windows over the "
                    f"whole run, {r.cpu_per_1000_windows_flowing or 0:.3f} while rows flowed "
                    f"({r.rows_per_window:.2f} rows a window)"
                )
        return "\n".join(lines) if len(lines) > 1 else ""

    def ratios(self) -> str:
        """The headline: each scenario's peers measured against ours, in one line each."""
        lines = [
            "\n\nratios (live: the peer's p99 over ours, so 2.0x better = half the peer's p99;"
            " backfill: ours rows/s over the raw limit's)"
        ]
        for scenario, forms in _by_scenario(self.rows).items():
            ours = forms.get(OURS)
            if ours is not None and ours.p99 is not None:
                lines.append(f"- {scenario}: {_p99_ratios(ours, forms)}")
            elif ours is not None and "raw limit" in forms:
                lines.append(f"- {scenario}: {_backfill_ratio(ours, forms['raw limit'])}")
        return "\n".join(lines) if len(lines) > 1 else ""


def _by_scenario(rows: list[Row]) -> dict[str, dict[str, Row]]:
    grouped: dict[str, dict[str, Row]] = {}
    for r in rows:
        grouped.setdefault(r.scenario, {})[r.form] = r
    return grouped


def _p99_ratios(ours: Row, forms: dict[str, Row]) -> str:
    """One line: ours' p99, then how many times better (or worse) than celery's and seed's."""
    assert ours.p99 is not None
    parts = []
    for peer in ("celery", "seed loop"):
        other = forms.get(peer)
        if other is None or other.p99 is None:
            continue
        ratio = other.p99 / ours.p99
        verdict = f"{ratio:.1f}x better" if ratio >= 1 else f"{1 / ratio:.1f}x worse"
        lost = "" if other.complete else ", rows missing"
        parts.append(f"{verdict} than {peer} ({other.p99:.3f}s{lost})")
    lost = "" if ours.complete else ", rows missing"
    return f"ours p99 {ours.p99:.3f}s{lost}: " + ", ".join(parts)


def _backfill_ratio(ours: Row, raw: Row) -> str:
    if not ours.per_second or not raw.per_second:
        return "-"
    return (
        f"ours {ours.per_second:,.0f} rows/s = {ours.per_second / raw.per_second:.2f}x "
        f"the raw limit ({raw.per_second:,.0f} rows/s)"
    )


@contextmanager
def _procs(*procs: Proc) -> Iterator[list[Proc]]:
    try:
        yield list(procs)
    finally:
        for p in procs:
            p.stop()


def _wait(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/stats", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    which = set(sys.argv[1:]) or {"1", "2", "3", "4", "5", "6", "7"}
    bench = Bench()
    print(
        f"bench: scenarios {sorted(which)}, {BACKFILL_ROWS:,} backfill rows, {SECONDS:.0f}s "
        f"live runs, worker concurrency {CONCURRENCY}, admin {ADMIN_URL.rsplit('@')[-1]}",
        flush=True,
    )
    print(bench.table().split("\n", 2)[0] + "\n" + bench.table().split("\n", 2)[1], flush=True)
    bench.run(which)
    print("\n" + bench.table() + bench.windows() + bench.ratios())
