"""The administrative commands: schema, WatchTables, subscriptions and API keys.

Each prints one JSON value on stdout; bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import orjson
import psycopg

from apievents.common import (
    api_keys,
    db,
    inputs,
    migrate_mysql,
    opendental,
    registry,
    sources,
    subscriptions,
)
from apievents.common.migrate import migrate as apply_migrations
from apievents.common.settings import Settings
from apievents.common.ssrf import EndpointPolicy

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 1


def fail(message: str, code: int) -> int:
    """Say what went wrong on one line; returns the exit status."""
    print(f"apievents: error: {message}", file=sys.stderr)
    return code


def emit(obj: Any) -> None:
    """Print one JSON value."""
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")


def screened(
    args: argparse.Namespace, settings: Settings, policy: EndpointPolicy, creating: bool
) -> inputs.Screened:
    """The subscription flags checked, the endpoint's DNS included, before connecting."""
    values = {c: getattr(args, c) for c in subscriptions.FIELDS if hasattr(args, c)}
    return inputs.screen(
        values, policy, dns_timeout=settings.dns_timeout_seconds, creating=creating
    )


def migrate_cmd(args: argparse.Namespace, settings: Settings) -> int:
    if args.sample_schema and args.opendental_schema:  # before connecting: nothing to do
        return fail(
            "--opendental-schema: not with --sample-schema; they are alternatives for one database",
            EXIT_USAGE,
        )
    if args.source is not None and not args.opendental_schema:
        return fail("--source: only with --opendental-schema", EXIT_USAGE)
    with db.connect(settings.database_url) as conn:
        if args.source is not None:
            applied = apply_migrations(conn)
            applied += migrate_mysql.migrate(conn, args.source, settings.source_timeout_seconds)
        else:
            applied = apply_migrations(
                conn, sample_schema=args.sample_schema, opendental_schema=args.opendental_schema
            )
    emit({"applied": applied})
    return 0


def source_add(args: argparse.Namespace, settings: Settings) -> int:
    sources.check_name(args.name)  # before connecting: nothing to do
    sources.MySQLAddress.parse(args.url)
    return _with_conn(
        settings, lambda c: sources.add(c, args.name, args.url, args.customer_key).to_json()
    )


def source_list(args: argparse.Namespace, settings: Settings) -> int:
    return _with_conn(settings, lambda c: [s.to_json() for s in sources.list_all(c)])


def source_remove(args: argparse.Namespace, settings: Settings) -> int:
    return _with_conn(settings, lambda c: sources.remove(c, args.name).to_json())


def _pairs(flag: str, specs: list[str], what: str) -> list[tuple[str, str]]:
    """COLUMN=VALUE arguments of a repeated flag."""
    out = []
    for spec in specs:
        column, sep, value = spec.partition("=")
        if not sep or not column.strip():
            raise registry.RegistryError(f"{flag}: expected COLUMN={what}, got {spec!r}")
        out.append((column.strip(), value.strip()))
    return out


def wt_add(args: argparse.Namespace, settings: Settings) -> int:
    fields = _pairs("--field", args.field, "JsonName")
    where = [
        (c, int(v) if v.lstrip("-").isdigit() else v)
        for c, v in _pairs("--where", args.where, "VALUE")
    ]
    if args.enum and args.format != "opendental":
        raise registry.RegistryError("--enum: only with --format opendental")
    try:
        enums = [(c, opendental.enum_map(v)) for c, v in _pairs("--enum", args.enum, "ENUM")]
    except opendental.EnumError as e:
        raise registry.RegistryError(f"--enum: {e}") from None
    with db.connect(settings.database_url) as conn, conn.transaction():
        derived: list[registry.Derived] = []
        if args.format == "opendental":
            schema, table = registry.split_table(args.table)
            shape = opendental.rendering(conn, schema, table, fields, enums)
            fields, enums, derived = shape.fields, shape.enums, shape.derived
        wt = registry.add(
            conn,
            args.name,
            args.table,
            args.key_column,
            args.timestamp_column,
            fields,
            stamped_by_application=args.stamped_by_application,
            payload_format=args.format,
            enums=enums,
            derived=derived,
            row_filter=where,
        )
    emit(wt.to_json())
    return 0


def wt_list(args: argparse.Namespace, settings: Settings) -> int:
    with db.connect(settings.database_url) as conn:
        emit([wt.to_json() for wt in registry.all_tables(conn)])
    return 0


def wt_remove(args: argparse.Namespace, settings: Settings) -> int:
    with db.connect(settings.database_url) as conn, conn.transaction():
        emit(registry.remove(conn, args.name).to_json())
    return 0


def _with_conn(settings: Settings, fn: Callable[[psycopg.Connection[Any]], Any]) -> int:
    with db.connect(settings.database_url) as conn:
        emit(fn(conn))
    return 0


def _with_subs(settings: Settings, fn: Callable[[psycopg.Connection[Any]], Any]) -> int:
    """Print subscriptions in the CLI's JSON form (subscriptions.cli_form)."""
    return _with_conn(settings, lambda c: subscriptions.cli_form(fn(c)))


def sub_add(args: argparse.Namespace, settings: Settings) -> int:
    policy = EndpointPolicy.from_settings(settings)
    values = screened(args, settings, policy, creating=True)
    return _with_subs(
        settings,
        lambda c: subscriptions.create(
            c, values, policy, settings.watermark_margin_seconds, source=args.source
        ),
    )


def sub_list(args: argparse.Namespace, settings: Settings) -> int:
    return _with_subs(settings, subscriptions.list_all)


def sub_show(args: argparse.Namespace, settings: Settings) -> int:
    return _with_subs(settings, lambda c: subscriptions.get(c, args.num))


def sub_update(args: argparse.Namespace, settings: Settings) -> int:
    policy = EndpointPolicy.from_settings(settings)
    values = screened(args, settings, policy, creating=False)
    return _with_subs(
        settings,
        lambda c: subscriptions.update(
            c, args.num, values, policy, settings.secret_overlap_seconds
        ),
    )


def sub_attempts(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.limit <= 1000:
        return fail("--limit: must be 1 to 1000", EXIT_USAGE)
    return _with_conn(settings, lambda c: subscriptions.attempts(c, args.num, args.limit))


def sub_rewind(args: argparse.Namespace, settings: Settings) -> int:
    return _with_subs(settings, lambda c: subscriptions.rewind(c, args.num, args.to))


def sub_pause(args: argparse.Namespace, settings: Settings) -> int:
    return _with_subs(settings, lambda c: subscriptions.set_status(c, args.num, "paused"))


def sub_resume(args: argparse.Namespace, settings: Settings) -> int:
    return _with_subs(settings, lambda c: subscriptions.set_status(c, args.num, "active"))


def sub_remove(args: argparse.Namespace, settings: Settings) -> int:
    return _with_subs(settings, lambda c: subscriptions.remove(c, args.num))


def key_create(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.developer_key is not None:
            return _with_conn(
                settings,
                lambda c: api_keys.create_pair(c, args.customer_key, args.developer_key),
            )
        return _with_conn(settings, lambda c: api_keys.create(c, args.customer_key))
    except ValueError as e:
        return fail(str(e), EXIT_USAGE)


def key_revoke(args: argparse.Namespace, settings: Settings) -> int:
    if args.developer_key is not None:
        if args.customer_key is None:
            return fail("--developer-key: needs --customer-key", EXIT_USAGE)
        pair = api_keys.odfhir(args.developer_key, args.customer_key)
        return _with_conn(settings, lambda c: api_keys.revoke(c, pair))
    return _with_conn(settings, lambda c: api_keys.revoke(c, args.api_key, args.customer_key))


def key_list(args: argparse.Namespace, settings: Settings) -> int:
    return _with_conn(settings, api_keys.list_all)
