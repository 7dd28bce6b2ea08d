"""A fast webhook receiver for benchmarks (its own process): counts rows and their latency.

Latency is arrival time minus the row's DateTStamp; both come from this machine's clock.
POST /slow/... waits 100 ms before answering. GET /stats summarises, in total and per path
group (``/live/7`` is in ``live``); POST /reset clears.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime
from typing import Any

import orjson
import uvicorn


def fresh() -> dict[str, Any]:
    """Empty counters: the totals, and the same per path group."""
    return {"rows": 0, "posts": 0, "latency": [], "first": None, "last": None, "groups": {}}


STATE = fresh()


def reset() -> None:
    STATE.clear()
    STATE.update(fresh())


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(counts: dict[str, Any]) -> dict[str, Any]:
    """Rows, POSTs and latency percentiles of one set of counters."""
    lat = counts["latency"]
    return {
        "rows": counts["rows"],
        "posts": counts["posts"],
        "p50": percentile(lat, 0.50),
        "p99": percentile(lat, 0.99),
    }


def stats() -> bytes:
    groups = {name: summary(counts) for name, counts in STATE["groups"].items()}
    return orjson.dumps(
        summary(STATE) | {"first": STATE["first"], "last": STATE["last"], "groups": groups}
    )


def record(path: str, body: bytes) -> None:
    """Count one POST's rows, in the totals and in its path group."""
    now = time.time()
    rows = orjson.loads(body)
    latencies = []
    if path.startswith(("/live", "/slow")):  # backfills have no meaningful latency
        latencies = [now - datetime.fromisoformat(r["DateTStamp"]).timestamp() for r in rows]
    group = STATE["groups"].setdefault(path.split("/")[1], {"rows": 0, "posts": 0, "latency": []})
    for counts in (STATE, group):
        counts["rows"] += len(rows)
        counts["posts"] += 1
        counts["latency"].extend(latencies)
    STATE["first"] = STATE["first"] or now
    STATE["last"] = now


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path, method = scope["path"], scope["method"]
    out = b"ok"
    if method == "POST" and path == "/reset":
        reset()
    elif method == "GET" and path == "/stats":
        out = stats()
    elif method == "POST":
        if path.startswith("/slow"):
            await asyncio.sleep(0.1)
        record(path, body)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(out)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": out})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=30,
    )
