"""Run every benchmark scenario against the local PostgreSQL and RabbitMQ; print one table.

    make bench                      # all scenarios
    python -m bench.run 2 3         # some of them

Each scenario runs the pipeline ("ours", real processes) and, in the same invocation, the
seed's sequential loop and the raw limit (bench/baselines.py). The headline is the ratio to
those, because absolute numbers drift on a shared machine.
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
import psycopg

from apievents.common.migrate import migrate
from tests.support.services import ADMIN_URL, BROKER_URL, admin, db_url, delete_topology

PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
BACKFILL_ROWS = int(os.environ.get("BENCH_BACKFILL_ROWS", "1000000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "20"))
CONCURRENCY = os.environ.get("BENCH_WORKER_CONCURRENCY", "32")


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
            }
            | extra
        )

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.receiver}/stats", timeout=30).json()  # type: ignore[no-any-return]

    def subscriptions(self, n: int, path: str, start: str = "now()") -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DELETE FROM apievents.subscription")
            conn.execute(
                "INSERT INTO apievents.subscription (endpoint_url, watch_table, polling_seconds,"
                f" date_time_start, secret) SELECT %s || g, 'Appointment', 1, {start}, %s "
                "FROM generate_series(1, %s) g",
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

    def measure(self, procs: list[Proc], rows: int) -> tuple[float, dict[str, float]]:
        self.split = {p.name: p.cpu() for p in procs}
        cpu = sum(self.split.values())
        return (cpu / max(rows, 1) * 1000, {p.name: p.peak_rss_mb() for p in procs})

    def cpu_split(self) -> str:
        """Where the CPU went, per process (seconds), for the note column."""
        return "CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in self.split.items())

    # -- scenarios ----------------------------------------------------------------------------

    def backfill(self, form: str, run: Any, label: str = "1 backfill") -> None:
        self.subscriptions(1, "/backfill", "'2000-01-01'")
        started = time.time()
        with run as procs:
            _wait(lambda: self.stats()["rows"] >= BACKFILL_ROWS, 900)
            cpu, rss = self.measure(procs, BACKFILL_ROWS)
        st = self.stats()
        rate = BACKFILL_ROWS / (st["last"] - st["first"])  # steady state: first to last row
        note = f"{st['first'] - started:.1f}s from launch to first row; {self.cpu_split()}"
        self.rows.append(Row(label, form, f"{rate:,.0f} rows/s", None, None, cpu, rss, note))

    def live(self, label: str, form: str, run: Any, subs: int, path: str) -> None:
        """``subs`` subscriptions polling every second; one new row per second."""
        self.subscriptions(subs, path)
        inserted = 0
        with run as procs:
            time.sleep(3)  # let every subscription take its first (empty) look
            with psycopg.connect(self.url, autocommit=True) as conn:
                deadline = time.monotonic() + SECONDS
                while time.monotonic() < deadline:
                    conn.execute("INSERT INTO appointment (patnum, note) VALUES (1, 'live')")
                    inserted += 1
                    time.sleep(1)
            done = _wait(lambda: self.stats()["rows"] >= inserted * subs, 30)
            cpu, rss = self.measure(procs, inserted * subs)
        st = self.stats()
        note = self.cpu_split() + ("" if done else f"; only {st['rows']} of {inserted * subs}")
        self.rows.append(
            Row(
                label,
                form,
                f"{st['rows'] / SECONDS:,.0f} rows/s",
                st["p50"],
                st["p99"],
                cpu,
                rss,
                note,
            )
        )

    def idle(self, form: str, run: Any) -> None:
        self.subscriptions(10_000, "/idle")
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
            if "1" in which or "5" in which:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(
                        "INSERT INTO appointment (patnum, note) SELECT g %% 1000, "
                        "'backfill row' FROM generate_series(1, %s) g",
                        (BACKFILL_ROWS,),
                    )
                    conn.execute("ANALYZE appointment")
            if "1" in which:
                self.backfill("ours, 1 worker", self.ours(1))
                self.backfill("seed loop", self.baseline("seed", 900))
                self.backfill("raw limit", self.baseline("raw", 900))
            if "5" in which:
                self.backfill("ours, 2 workers", self.ours(2), "5 backfill, 2 workers")
            if "1" in which or "5" in which:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute("TRUNCATE appointment")
            for label, subs, path in (
                ("2 1000 subs @1s", 1000, "/live"),
                ("3 100 slow subs", 100, "/slow"),
            ):
                if label[0] not in which:
                    continue
                self.live(label, "ours, 1 worker", self.ours(1), subs, path)
                self.live(label, "seed loop", self.baseline("seed", SECONDS + 40), subs, path)
                self.live(label, "raw limit", self.baseline("raw", SECONDS + 40), subs, path)
                if label[0] == "2" and "5" in which:
                    self.live("5 1000 subs, 2 workers", "ours, 2 workers", self.ours(2), subs, path)
            if "4" in which:
                self.idle("ours, 1 worker", self.ours(1))
                self.idle("seed loop", self.baseline("seed", SECONDS + 10))
        finally:
            receiver.terminate()
            receiver.wait()
            admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            delete_topology(self.prefix)

    def table(self) -> str:
        head = (
            "| scenario | form | throughput | p50 latency | p99 latency | CPU s / 1000 rows "
            "| peak RSS MB | note |\n|---|---|---|---|---|---|---|---|"
        )
        return "\n".join([head, *(r.markdown() for r in self.rows)])


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
    which = set(sys.argv[1:]) or {"1", "2", "3", "4", "5"}
    bench = Bench()
    print(
        f"bench: scenarios {sorted(which)}, {BACKFILL_ROWS:,} backfill rows, {SECONDS:.0f}s "
        f"live runs, worker concurrency {CONCURRENCY}, admin {ADMIN_URL.rsplit('@')[-1]}",
        flush=True,
    )
    print(bench.table().split("\n", 2)[0] + "\n" + bench.table().split("\n", 2)[1], flush=True)
    bench.run(which)
    print("\n" + bench.table())
