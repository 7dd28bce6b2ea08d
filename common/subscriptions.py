"""Subscriptions as operators and integrators see them: validation, storage, JSON form."""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from apievents.common import limits, mysql, mysql_horizon, queries, registry, sources, watermark

# The input rules live in inputs.py; InputError and FIELDS are known from here too.
from apievents.common.inputs import DNS_TIMEOUT, TIMES, Screened, parse_time, screen
from apievents.common.inputs import FIELDS as FIELDS
from apievents.common.inputs import InputError as InputError
from apievents.common.logs import error_text
from apievents.common.ssrf import EndpointPolicy

log = logging.getLogger(__name__)


class NotFound(LookupError):
    """No subscription with that number."""


def validate(
    conn: psycopg.Connection[Any],
    values: Mapping[str, Any],
    *,
    partial: bool,
    policy: EndpointPolicy,
    dns_timeout: float = DNS_TIMEOUT,
    source: str | None = None,
) -> dict[str, Any]:
    """Check and normalise input; every problem is an InputError naming its field.

    A WatchTable is looked up in ``source`` (a source's WatchTables are ``source.Name``); by
    default in the source of the CustomerKey (``sources add --customer-key``), else among
    apievents' own PostgreSQL tables.

    ``values`` that ``screen`` already checked are not screened again: the API screens them,
    DNS included, before it takes a database connection.
    """
    if not isinstance(values, Screened):
        values = screen(values, policy, dns_timeout=dns_timeout, creating=not partial)
    out = dict(values)
    if "watch_table" in out:
        try:
            own = sources.of_customer(conn, str(out.get("customer_key") or ""))
            if source is None:
                source = own
            else:
                if source:
                    sources.get(conn, source)
                if own and own != source:  # its customer would see another office's rows
                    raise _wrong_source(own, source)
            wt = registry.resolve(conn, out["watch_table"], source)
            if wt.source != source:  # a qualified name of another source, or of none
                raise registry.RegistryError(_foreign(out["watch_table"], source))
            out["watch_table"] = wt.name
        except sources.SourceError as e:
            raise InputError("source", str(e).removeprefix("--source: ")) from None
        except registry.RegistryError as e:
            raise InputError("watch_table", str(e)) from None
    for column in TIMES:
        if out.get(column) is not None:
            out[column] = _in_db_zone(conn, column, out[column])
    if not partial:
        for column in ("endpoint_url", "watch_table", "polling_seconds"):
            if column not in out:
                raise InputError(column, "is required")
    start, stop = out.get("date_time_start"), out.get("date_time_stop")
    if start is not None and stop is not None and stop <= start:
        raise InputError("date_time_stop", "must be after DateTimeStart")
    return out


def new_secret() -> str:
    """A fresh signing secret."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _in_db_zone(conn: psycopg.Connection[Any], column: str, t: datetime) -> datetime:
    """A naive time read in the database server's zone, and checked against the bounds again."""
    if t.tzinfo is not None:
        return t
    row = conn.execute(queries.AS_TIMESTAMPTZ, (t,)).fetchone()
    assert row is not None
    problem = limits.time_problem(row[0])
    if problem:
        raise InputError(column, problem)
    return row[0]  # type: ignore[no-any-return]


def create(
    conn: psycopg.Connection[Any],
    values: Mapping[str, Any],
    policy: EndpointPolicy,
    margin: float = 0.05,
    *,
    max_per_customer: int = 0,
    dns_timeout: float = DNS_TIMEOUT,
    source: str | None = None,
    source_timeout: float = 10.0,
) -> dict[str, Any]:
    """Validate and insert; returns the JSON form, with the signing secret shown this once.

    The default DateTimeStart is the safe window end (``margin`` is the producer's
    --watermark-margin-seconds), not now(): a transaction open at creation may still commit
    rows stamped before now(), and they belong to the new subscription.

    ``max_per_customer`` (0: no cap) bounds the subscriptions of the CustomerKey; the API sets
    it, the operator's CLI does not.
    """
    clean = validate(
        conn, values, partial=False, policy=policy, dns_timeout=dns_timeout, source=source
    )
    clean.setdefault("secret", new_secret())
    defaults: dict[str, Any] = {
        "workstation": "",
        "customer_key": "",
        "note": "",
        "ui_event_type": "",
    }
    params = dict.fromkeys(FIELDS) | defaults | clean
    with conn.transaction():
        if max_per_customer:
            _within_cap(conn, str(params["customer_key"]), max_per_customer)
        if params["date_time_start"] is None:
            start = _safe_start(conn, str(clean["watch_table"]), margin, source_timeout)
            stop = params["date_time_stop"]
            if stop is not None and stop <= start:
                raise InputError("date_time_stop", "must be after DateTimeStart")
            params["date_time_start"] = start
        row = conn.execute(queries.SUBSCRIPTION_INSERT, params).fetchone()
    return to_json(row) | {"Secret": clean["secret"]}


def _foreign(name: str, source: str) -> str:
    """Why a WatchTable of another source is refused: a CustomerKey mapped to one office, or
    the PostgreSQL tables, never reach another office's tables by naming them in full."""
    where = f"source {source!r}" if source else "apievents' own PostgreSQL tables"
    return f"no WatchTable {name!r} among {where}"


def _safe_start(
    conn: psycopg.Connection[Any], watch_table: str, margin: float, timeout: float
) -> Any:
    """The safe window end of the WatchTable's database now (and the frontier moves there)."""
    wt = registry.get(conn, watch_table)
    if wt.source:
        try:
            return mysql_horizon.safe_start(conn, wt.source, timedelta(seconds=margin), timeout)
        except (mysql.SourceUnavailable, mysql.Error) as e:
            # The driver's text names hosts and ports: logged for the operator, never shown to
            # a customer of the API.
            log.warning("source_unreadable", extra={"source": wt.source, "error": error_text(e)})
            raise InputError(
                "date_time_start", f"source {wt.source!r} cannot be read now; give a start"
            ) from None
    start = watermark.read(conn, timedelta(seconds=margin)).end
    watermark.advance(conn, start)
    return start


def _within_cap(conn: psycopg.Connection[Any], customer_key: str, cap: int) -> None:
    """Refuse a subscription over the customer's cap. The lock makes two concurrent creates of
    one customer take turns, so they cannot both see room for one more."""
    conn.execute(queries.LOCK_CUSTOMER, (customer_key,))
    row = conn.execute(queries.SUBSCRIPTION_COUNT_FOR, (customer_key,)).fetchone()
    if row is not None and row[0] >= cap:
        raise InputError(
            "customer_key",
            f"already has {row[0]} subscriptions, the most allowed "
            "(APIEVENTS_MAX_SUBSCRIPTIONS_PER_CUSTOMER); delete one first",
        )


def get(conn: psycopg.Connection[Any], num: int) -> dict[str, Any]:
    """One subscription's JSON form; NotFound if there is none."""
    return to_json(conn.execute(queries.SUBSCRIPTION_GET, (num,)).fetchone(), num)


def list_all(
    conn: psycopg.Connection[Any], customer_key: str | None = None
) -> list[dict[str, Any]]:
    """Every subscription (of one customer, if given), by number."""
    if customer_key is None:
        cur = conn.execute(queries.SUBSCRIPTION_LIST)
    else:
        cur = conn.execute(queries.SUBSCRIPTION_LIST_FOR, (customer_key,))
    return [to_json(r) for r in cur.fetchall()]


def update(
    conn: psycopg.Connection[Any],
    num: int,
    values: Mapping[str, Any],
    policy: EndpointPolicy,
    secret_overlap: float = 86400.0,
    *,
    dns_timeout: float = DNS_TIMEOUT,
    source: str | None = None,
) -> dict[str, Any]:
    """Change only the named fields; drops any claim so the change takes effect at once.

    A new secret replaces the old one, which keeps signing for ``secret_overlap`` seconds.
    A CustomerKey or a WatchTable changed alone is checked against the other as the
    subscription has it: a customer of one office never watches another source.
    """
    if "watch_table" in values and "customer_key" not in values and source is None:
        source = sources.of_customer(conn, str(get(conn, num)["CustomerKey"] or ""))
    clean = validate(
        conn, values, partial=True, policy=policy, dns_timeout=dns_timeout, source=source
    )
    if "customer_key" in clean and "watch_table" not in clean:
        _owner_on_its_source(conn, num, str(clean["customer_key"] or ""))
    if not clean:
        return get(conn, num)
    with conn.transaction():
        current = conn.execute(queries.SUBSCRIPTION_LOCK, (num,)).fetchone()
        if current is None:
            raise NotFound(num)
        start = clean.get("date_time_start", current[0])
        stop = clean.get("date_time_stop", current[1])
        if start is not None and stop is not None and stop <= start:
            raise InputError("date_time_stop", "must be after DateTimeStart")
        row = conn.execute(
            queries.subscription_update(list(clean)),
            clean | {"num": num, "overlap": secret_overlap},
        ).fetchone()
    return to_json(row, num)


def _owner_on_its_source(conn: psycopg.Connection[Any], num: int, customer_key: str) -> None:
    """InputError unless a CustomerKey mapped to a source gets a subscription on that source."""
    own = sources.of_customer(conn, customer_key)
    if not own:
        return
    try:
        wt = registry.get(conn, str(get(conn, num)["WatchTable"]))
    except registry.RegistryError:
        return  # its WatchTable is gone: its windows fail, whoever owns it
    if wt.source != own:
        raise _wrong_source(own, wt.source)


def _wrong_source(own: str, source: str) -> InputError:
    return InputError("customer_key", f"belongs to source {own!r}, not {source or 'none'!r}")


def clear_expired_secrets(conn: psycopg.Connection[Any]) -> int:
    """Forget replaced secrets whose overlap has ended; returns how many were cleared.

    Once the overlap ends nothing signs with a replaced secret, so keeping it only keeps a
    credential around to leak. The producer calls this from its periodic prune.
    """
    return conn.execute(queries.CLEAR_EXPIRED_SECRETS).rowcount


def set_status(
    conn: psycopg.Connection[Any], num: int, status: str, reason: str | None = None
) -> dict[str, Any]:
    """Pause, resume (active) or disable."""
    row = conn.execute(
        queries.SUBSCRIPTION_SET_STATUS, {"status": status, "reason": reason, "num": num}
    ).fetchone()
    return to_json(row, num)


def rewind(conn: psycopg.Connection[Any], num: int, to: Any) -> dict[str, Any]:
    """Re-send everything changed after ``to``; safe while deliveries run."""
    when = _in_db_zone(conn, "to", parse_time("to", to))
    row = conn.execute(queries.REWIND, {"num": num, "to": when}).fetchone()
    if row is None:
        current = get(conn, num)  # NotFound if there is no such subscription
        raise InputError("to", f"must not be later than DateTimeStart {current['DateTimeStart']}")
    return to_json(row, num)


def attempts(conn: psycopg.Connection[Any], num: int, limit: int = 100) -> list[dict[str, Any]]:
    """The most recent delivery attempts, newest first."""
    get(conn, num)
    return [
        {
            "AttemptNum": a,
            "At": _iso(at),
            "WindowStart": _iso(ws),
            "WindowEnd": _iso(we),
            "Batch": batch,
            "Rows": n,
            "HttpStatus": status,
            "LatencyMs": ms,
            "ErrorClass": error_class,
        }
        for a, at, ws, we, batch, n, status, ms, error_class in conn.execute(
            queries.ATTEMPTS, (num, limit)
        ).fetchall()
    ]


def remove(conn: psycopg.Connection[Any], num: int) -> dict[str, Any]:
    """Delete; returns what was deleted."""
    return to_json(conn.execute(queries.SUBSCRIPTION_DELETE, (num,)).fetchone(), num)


def to_json(row: Sequence[Any] | None, num: int | None = None) -> dict[str, Any]:
    """Open Dental's field names, plus Status and the delivery state.

    The CLI prints it without UiEventType (``cli_form``): its JSON predates the field.
    """
    if row is None:
        raise NotFound(num)
    (
        sub_num,
        url,
        ws,
        ck,
        wt,
        polling,
        start,
        stop,
        note,
        status,
        reason,
        last_error,
        last_status,
        failures,
        next_at,
        last_attempt,
        last_success,
        in_flight,
        ui_event_type,
        last_error_class,
    ) = row
    return {
        "SubscriptionNum": sub_num,
        "EndPointUrl": url,
        "Workstation": ws,
        "CustomerKey": ck,
        "WatchTable": wt,
        "PollingSeconds": polling,
        "DateTimeStart": _iso(start),
        "DateTimeStop": _iso(stop),
        "Note": note,
        "Status": status,
        "StatusReason": reason,
        "LastError": last_error,
        "LastErrorClass": last_error_class,
        "LastHttpStatus": last_status,
        "ConsecutiveFailures": failures,
        "NextAttempt": _iso(next_at),
        "LastAttempt": _iso(last_attempt),
        "LastSuccess": _iso(last_success),
        "InFlight": in_flight,
        "UiEventType": ui_event_type,
    }


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def cli_form(obj: Any) -> Any:
    """A subscription (or a list of them) as the CLI prints it: without UiEventType, which
    the CLI cannot set and whose JSON is a contract from before it."""
    if isinstance(obj, list):
        return [cli_form(o) for o in obj]
    return {k: v for k, v in obj.items() if k != "UiEventType"}
