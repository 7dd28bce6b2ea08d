"""The ``apievents`` command: schema, WatchTables, subscriptions, and the three services."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import psycopg

from apievents.common import api_keys, db, inputs, logs, metrics, registry, subscriptions
from apievents.common.lifecycle import ConfigurationError, Lifecycle, Wired
from apievents.common.migrate import migrate
from apievents.common.settings import Settings, SettingsError, add_arguments, from_namespace
from apievents.common.ssrf import EndpointPolicy

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 1

_SUB_FLAGS: list[tuple[str, str]] = [
    ("--endpoint-url", "URL that receives the POSTs (http or https)."),
    ("--watch-table", "Registered WatchTable to watch (see `watch-tables list`)."),
    ("--polling-seconds", "How often to look for changes, in seconds."),
    ("--customer-key", "Sent as the Authorization header of every POST."),
    ("--workstation", "Sent as the Workstation header (default: APIEVENTS_SENDER_NAME)."),
    ("--date-time-start", "Deliver changes after this ISO 8601 time (default: now)."),
    ("--date-time-stop", "Stop delivering at this ISO 8601 time (default: never)."),
    ("--note", "Free text for operators."),
    (
        "--secret",
        "Signing secret (whsec_ + base64 of 24-64 bytes); generated if omitted, "
        "shown only by `add`. On update, the old one keeps signing for "
        "--secret-overlap-seconds.",
    ),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = from_namespace(args)
    except SettingsError as e:
        return _fail(str(e), EXIT_USAGE)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        return handler(args, settings)
    except (subscriptions.InputError, registry.RegistryError) as e:
        flag = getattr(e, "flag", "")
        return _fail(f"{flag}: {e}" if flag else str(e), EXIT_USAGE)
    except subscriptions.NotFound as e:
        return _fail(f"no subscription {e.args[0]}", EXIT_USAGE)
    except psycopg.OperationalError as e:
        return _fail(f"cannot reach the database: {logs.error_text(e)}", EXIT_UNAVAILABLE)
    except psycopg.errors.UndefinedTable:
        return _fail(
            "the database has no apievents schema: run `apievents migrate`", EXIT_UNAVAILABLE
        )
    except psycopg.Error as e:
        return _fail(f"database error: {logs.error_text(e)}", EXIT_UNAVAILABLE)
    except ConfigurationError as e:
        return _fail(str(e), EXIT_USAGE)


def _fail(message: str, code: int) -> int:
    print(f"apievents: error: {message}", file=sys.stderr)
    return code


def _print(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")


# -- parser -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apievents",
        description="Deliver every change in watched PostgreSQL tables to webhooks.",
        epilog="Run `apievents COMMAND --help` for a command's options and settings.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _leaf(commands, "migrate", "Create or upgrade the service's schema (idempotent).", _migrate)
    p.add_argument(
        "--sample-schema",
        action="store_true",
        help="Also create the Open Dental-shaped patient and appointment tables, "
        "a deletion log, and register them as WatchTables.",
    )

    wt = commands.add_parser("watch-tables", help="Manage the WatchTable registry.")
    wt_cmds = wt.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _leaf(wt_cmds, "add", "Register a table so subscriptions can watch it.", _wt_add)
    p.add_argument("--name", required=True, help="WatchTable name, e.g. Procedure.")
    p.add_argument("--table", required=True, help="Table, optionally schema-qualified.")
    p.add_argument("--key-column", required=True, help="Unique key column (tie-breaker).")
    p.add_argument(
        "--timestamp-column",
        required=True,
        help="Change timestamp column, kept current by a trigger.",
    )
    p.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="COLUMN=JsonName",
        help="A column to deliver and its JSON name; repeat. Default: all columns.",
    )
    p.add_argument(
        "--stamped-by-application",
        action="store_true",
        help="Register without a trigger that sets the timestamp column. RISK: every INSERT "
        "and UPDATE must then set it to now() (the transaction's start) itself; a change that "
        "does not, or sets any other time, can be delivered late or never.",
    )
    _leaf(wt_cmds, "list", "List registered WatchTables.", _wt_list)
    p = _leaf(wt_cmds, "remove", "Unregister a WatchTable no subscription uses.", _wt_remove)
    p.add_argument("name", help="WatchTable name.")

    sub = commands.add_parser("subscriptions", help="Manage subscriptions (JSON output).")
    sub_cmds = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _leaf(sub_cmds, "add", "Create a subscription and print it.", _sub_add)
    _subscription_flags(p)
    _leaf(sub_cmds, "list", "Print all subscriptions as a JSON array.", _sub_list)
    for name, text, fn in [
        ("show", "Print one subscription.", _sub_show),
        ("pause", "Stop deliveries until resumed; nothing is skipped.", _sub_pause),
        ("resume", "Re-enable a paused or disabled subscription.", _sub_resume),
        ("remove", "Delete a subscription and print what was deleted.", _sub_remove),
    ]:
        _leaf(sub_cmds, name, text, fn).add_argument("num", type=int, help="SubscriptionNum.")
    p = _leaf(sub_cmds, "attempts", "Print recent delivery attempts, newest first.", _sub_attempts)
    p.add_argument("num", type=int, help="SubscriptionNum.")
    p.add_argument("--limit", type=int, default=100, help="How many (default 100).")
    p = _leaf(
        sub_cmds,
        "rewind",
        "Re-send everything changed since a time; safe while deliveries run.",
        _sub_rewind,
    )
    p.add_argument("num", type=int, help="SubscriptionNum.")
    p.add_argument("--to", required=True, help="ISO 8601 time, not later than DateTimeStart.")
    p = _leaf(sub_cmds, "update", "Change the named fields only.", _sub_update)
    p.add_argument("num", type=int, help="SubscriptionNum.")
    _subscription_flags(p)

    _leaf(commands, "api", "Serve the Subscriptions REST API on APIEVENTS_API_PORT.", _api)
    keys = commands.add_parser("api-keys", help="Manage API keys (stored hashed).")
    key_cmds = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _leaf(
        key_cmds, "create", "Create a key for a customer; it is printed only now.", _key_create
    )
    p.add_argument("--customer-key", required=True, help="The CustomerKey the key acts for.")
    p = _leaf(key_cmds, "revoke", "Revoke one key, or every key of a customer.", _key_revoke)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--api-key", help="The key to revoke.")
    which.add_argument("--customer-key", help="Revoke every key of this CustomerKey.")
    _leaf(key_cmds, "list", "List keys (numbers, customers, dates; never the keys).", _key_list)

    p = _leaf(commands, "run", "Run several services in one process.", _run)
    p.add_argument(
        "--all-in-one",
        action="store_true",
        required=True,
        help="Producer, committer and workers as threads of this process; with "
        "APIEVENTS_BROKER_URL=memory:// no RabbitMQ is needed.",
    )
    p.add_argument("--workers", type=int, default=2, help="Worker threads (default 2).")

    p = _leaf(
        commands,
        "demo",
        "Show the pipeline working: a receiver, a change generator, "
        "the services, and a status line every second (make run).",
        _demo,
    )
    p.add_argument("--dir", default=".demo", help="Folder for logs and an embedded PostgreSQL.")
    p.add_argument(
        "--database-name",
        default="apievents_demo",
        help="Database the demo creates and uses; it touches no other.",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=0,
        help="Stop by itself after this many seconds (default: until Ctrl-C).",
    )

    for name, text in [
        ("producer", "Run the producer: claim due subscriptions and publish jobs."),
        ("worker", "Run a worker: deliver windows to endpoints."),
        ("committer", "Run the committer: apply outcomes, advance DateTimeStart."),
    ]:
        _leaf(commands, name, text, _service).set_defaults(service=name)
    return parser


def _leaf(
    parent: Any, name: str, text: str, handler: Callable[[argparse.Namespace, Settings], int]
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = parent.add_parser(name, help=text, description=text)
    p.set_defaults(handler=handler)
    add_arguments(p)
    return p


def _subscription_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("subscription fields")
    for flag, text in _SUB_FLAGS:
        group.add_argument(flag, default=argparse.SUPPRESS, help=text)


def _screened(
    args: argparse.Namespace, settings: Settings, policy: EndpointPolicy
) -> inputs.Screened:
    """The subscription flags checked, the endpoint's DNS included, before connecting."""
    values = {c: getattr(args, c) for c in subscriptions.FIELDS if hasattr(args, c)}
    return inputs.screen(values, policy, dns_timeout=settings.dns_timeout_seconds)


# -- handlers -----------------------------------------------------------------------------------


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    with db.connect(settings.database_url) as conn:
        applied = migrate(conn, sample_schema=args.sample_schema)
    _print({"applied": applied})
    return 0


def _wt_add(args: argparse.Namespace, settings: Settings) -> int:
    fields = []
    for spec in args.field:
        column, sep, json_name = spec.partition("=")
        if not sep:
            raise registry.RegistryError(f"--field: expected COLUMN=JsonName, got {spec!r}")
        fields.append((column.strip(), json_name.strip()))
    with db.connect(settings.database_url) as conn, conn.transaction():
        wt = registry.add(
            conn,
            args.name,
            args.table,
            args.key_column,
            args.timestamp_column,
            fields,
            stamped_by_application=args.stamped_by_application,
        )
    _print(wt.to_json())
    return 0


def _wt_list(args: argparse.Namespace, settings: Settings) -> int:
    with db.connect(settings.database_url) as conn:
        _print([wt.to_json() for wt in registry.all_tables(conn)])
    return 0


def _wt_remove(args: argparse.Namespace, settings: Settings) -> int:
    with db.connect(settings.database_url) as conn, conn.transaction():
        _print(registry.remove(conn, args.name).to_json())
    return 0


def _with_conn(settings: Settings, fn: Callable[[psycopg.Connection[Any]], Any]) -> int:
    with db.connect(settings.database_url) as conn:
        _print(fn(conn))
    return 0


def _sub_add(args: argparse.Namespace, settings: Settings) -> int:
    policy = EndpointPolicy.from_settings(settings)
    values = _screened(args, settings, policy)
    return _with_conn(
        settings,
        lambda c: subscriptions.create(c, values, policy, settings.watermark_margin_seconds),
    )


def _sub_list(args: argparse.Namespace, settings: Settings) -> int:
    return _with_conn(settings, subscriptions.list_all)


def _sub_show(args: argparse.Namespace, settings: Settings) -> int:
    return _with_conn(settings, lambda c: subscriptions.get(c, args.num))


def _sub_update(args: argparse.Namespace, settings: Settings) -> int:
    policy = EndpointPolicy.from_settings(settings)
    values = _screened(args, settings, policy)
    return _with_conn(
        settings,
        lambda c: subscriptions.update(
            c, args.num, values, policy, settings.secret_overlap_seconds
        ),
    )


def _sub_attempts(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.limit <= 1000:
        return _fail("--limit: must be 1 to 1000", EXIT_USAGE)
    return _with_conn(settings, lambda c: subscriptions.attempts(c, args.num, args.limit))


def _sub_rewind(args: argparse.Namespace, settings: Settings) -> int:
    return _with_conn(settings, lambda c: subscriptions.rewind(c, args.num, args.to))


def _sub_pause(args: argparse.Namespace, settings: Settings) -> int:
    return _with_conn(settings, lambda c: subscriptions.set_status(c, args.num, "paused"))


def _sub_resume(args: argparse.Namespace, settings: Settings) -> int:
    return _with_conn(settings, lambda c: subscriptions.set_status(c, args.num, "active"))


def _sub_remove(args: argparse.Namespace, settings: Settings) -> int:
    return _with_conn(settings, lambda c: subscriptions.remove(c, args.num))


def _key_create(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return _with_conn(settings, lambda c: api_keys.create(c, args.customer_key))
    except ValueError as e:
        return _fail(str(e), EXIT_USAGE)


def _key_revoke(args: argparse.Namespace, settings: Settings) -> int:
    return _with_conn(settings, lambda c: api_keys.revoke(c, args.api_key, args.customer_key))


def _key_list(args: argparse.Namespace, settings: Settings) -> int:
    return _with_conn(settings, api_keys.list_all)


def _api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from apievents.api.app import create_app
    from apievents.api.server import Server

    logs.setup(settings.log_level)
    pool = db.pool(settings.database_url, 10, "api")
    app = create_app(
        pool,
        EndpointPolicy.from_settings(settings),
        settings.secret_overlap_seconds,
        settings.watermark_margin_seconds,
        dns_timeout=settings.dns_timeout_seconds,
        max_subscriptions=settings.max_subscriptions_per_customer,
    )
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, access_log=False, log_config=None
    )
    try:
        Server(config).run()
    finally:
        pool.close()
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from apievents.demo import Demo

    return Demo(settings, args.dir, args.database_name, args.duration).run()


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from apievents.allinone import wire

    if args.workers < 1:
        return _fail("--workers: must be at least 1", EXIT_USAGE)
    return _serve("all-in-one", settings, lambda lc: wire(settings, lc, args.workers))


def _service(args: argparse.Namespace, settings: Settings) -> int:
    from apievents.committer.service import build as build_committer
    from apievents.producer.service import build as build_producer
    from apievents.worker.service import build as build_worker

    builders: dict[str, Callable[[Settings, Lifecycle], Wired]] = {
        "producer": build_producer,
        "worker": build_worker,
        "committer": build_committer,
    }
    return _serve(args.service, settings, lambda lc: builders[args.service](settings, lc))


def _serve(name: str, settings: Settings, build: Callable[[Lifecycle], Wired]) -> int:
    """Run a long-running service until SIGTERM/SIGINT; exit 0 once its work is handed back."""
    logs.setup(settings.log_level)
    lifecycle = Lifecycle()
    lifecycle.install_signals()
    wired = build(lifecycle)
    metrics.serve(settings.metrics_port, wired.ready)
    log = logging.getLogger("apievents")
    log.info("started", extra={"service": name})
    try:
        wired.service.run()
    finally:
        wired.close()
    log.info("stopped", extra={"service": name})
    return 0
