"""A fast webhook receiver for benchmarks (its own process): counts rows and their latency.

Latency is arrival time minus the row's DateTStamp; both come from this machine's clock.
POST /slow/... waits 100 ms before answering. GET /stats summarises; POST /reset clears.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime
from typing import Any

import orjson
import uvicorn

STATE: dict[str, Any] = {"rows": 0, "posts": 0, "latency": [], "first": None, "last": None}


def reset() -> None:
    STATE.update(rows=0, posts=0, latency=[], first=None, last=None)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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
        lat = STATE["latency"]
        out = orjson.dumps(
            {
                "rows": STATE["rows"],
                "posts": STATE["posts"],
                "p50": percentile(lat, 0.50),
                "p99": percentile(lat, 0.99),
                "first": STATE["first"],
                "last": STATE["last"],
            }
        )
    elif method == "POST":
        if path.startswith("/slow"):
            await asyncio.sleep(0.1)
        now = time.time()
        rows = orjson.loads(body)
        STATE["rows"] += len(rows)
        STATE["posts"] += 1
        STATE["first"] = STATE["first"] or now
        STATE["last"] = now
        if path.startswith(("/live", "/slow")):  # backfills have no meaningful latency
            STATE["latency"].extend(
                now - datetime.fromisoformat(r["DateTStamp"]).timestamp() for r in rows
            )
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
