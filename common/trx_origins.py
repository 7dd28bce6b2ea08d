"""Where an open InnoDB transaction's rows may be stamped from, remembered across readings.

InnoDB starts a transaction at its first row operation, but a row's DateTStamp is the start
of the statement that wrote it. A statement that spends time before it touches a row (a lock
or metadata-lock wait, a slow expression) therefore writes stamps older than its
transaction's ``trx_started``. While it runs, the process list shows its start; once it has
ended and its transaction stays open, only a memory of the earlier readings still knows it.

So each reading of a server is compared with the one before. A transaction seen for the first
time started during a statement that either ran at the previous reading (whose start that
reading saw) or started after the previous reading's clock: the earlier of those, and of its
own ``trx_started``, bounds its stamps for as long as it stays open. A transaction already
open at the first reading has no such proof; it is counted as unproven, and the window end
stays at the frontier while it is open (common/watermark.mysql_safe_end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

Thread = int
Transaction = tuple[Thread, datetime]  # its session's thread id and its trx_started


@dataclass(frozen=True)
class Bound:
    """The earliest stamp one open transaction may write, and whether a reading proved it."""

    earliest: datetime
    proven: bool


@dataclass
class Origins:
    """What the previous reading of one server saw; fed every complete reading in order."""

    clock: datetime | None = None  # the previous reading's clock, None before the first
    running: dict[Thread, datetime] = field(default_factory=dict)  # thread -> statement start
    bounds: dict[Transaction, Bound] = field(default_factory=dict)

    def observe(
        self,
        clock: datetime,
        running: dict[Thread, datetime],
        transactions: list[Transaction],
    ) -> tuple[datetime | None, int]:
        """Take a reading (its clock and running statements were read before its open
        transactions). Returns the earliest stamp an open transaction may write, and how many
        open transactions have no proven bound."""
        bounds: dict[Transaction, Bound] = {}
        for trx in transactions:
            bound = self.bounds.get(trx)
            if bound is None:  # opened since the previous reading, or before the first
                thread, started = trx
                candidates = [started, self.running.get(thread, self.clock), running.get(thread)]
                bound = Bound(
                    min(t for t in candidates if t is not None), proven=self.clock is not None
                )
            bounds[trx] = bound
        self.clock, self.running, self.bounds = clock, dict(running), bounds
        earliest = min((b.earliest for b in bounds.values()), default=None)
        return earliest, sum(not b.proven for b in bounds.values())
