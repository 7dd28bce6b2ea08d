"""The ``apievents`` command: schema, WatchTables, subscriptions, and the three services."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from apievents import admin
from apievents.admin import EXIT_UNAVAILABLE, EXIT_USAGE, fail
from apievents.common import db, logs, metrics, registry, sources, subscriptions
from apievents.common.lifecycle import ConfigurationError, Lifecycle, Wired
from apievents.common.migrate import MigrateError
from apievents.common.migrate_mysql import MySQLMigrateError
from apievents.common.settings import Settings, SettingsError, add_arguments, from_namespace
from apievents.common.ssrf import EndpointPolicy

_SUB_FLAGS: list[tuple[str, str]] = [
    ("--endpoint-url", "URL that receives the POSTs (http or https)."),
    ("--watch-table", "Registered WatchTable to watch (see `watch-tables list`)."),
    ("--polling-seconds", "How often to look for changes, in seconds."),
    ("--customer-key", "Sent as the Authorization header of every POST."),
    ("--workstation", "Sent as the Workstation header (default: the worker's sender name)."),
    ("--date-time-start", "Deliver changes after this ISO 8601 time (default: now)."),
    ("--date-time-stop", "Stop delivering at this ISO 8601 time (default, or 0001-01-01: never)."),
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
        return fail(str(e), EXIT_USAGE)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    try:
        return handler(args, settings)
    except (
        subscriptions.InputError,
        registry.RegistryError,
        MigrateError,
        sources.SourceError,
        MySQLMigrateError,
    ) as e:
        flag = getattr(e, "flag", "")
        return fail(f"{flag}: {e}" if flag else str(e), EXIT_USAGE)
    except subscriptions.NotFound as e:
        return fail(f"no subscription {e.args[0]}", EXIT_USAGE)
    except psycopg.OperationalError as e:
        return fail(f"cannot reach the database: {logs.error_text(e)}", EXIT_UNAVAILABLE)
    except psycopg.errors.UndefinedTable:
        return fail(
            "the database has no apievents schema: run `apievents migrate`", EXIT_UNAVAILABLE
        )
    except psycopg.Error as e:
        return fail(f"database error: {logs.error_text(e)}", EXIT_UNAVAILABLE)
    except ConfigurationError as e:
        return fail(str(e), EXIT_USAGE)


# -- parser -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apievents",
        description="Deliver every change in watched PostgreSQL tables to webhooks.",
        epilog="Run `apievents COMMAND --help` for a command's options and settings.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _leaf(
        commands,
        "migrate",
        "Create or upgrade the service's schema (idempotent).",
        admin.migrate_cmd,
    )
    p.add_argument(
        "--sample-schema",
        action="store_true",
        help="Also create the Open Dental-shaped patient and appointment tables, "
        "a deletion log, and register them as WatchTables.",
    )
    p.add_argument(
        "--opendental-schema",
        action="store_true",
        help="Instead, create Open Dental's own appointment, patient and histappointment tables "
        "(every column) and register the WatchTables Appointment, Patient and "
        "AppointmentDeleted in the opendental payload format.",
    )
    p.add_argument(
        "--source",
        metavar="NAME",
        help="With --opendental-schema: create Open Dental's tables (MySQL types) in this "
        "MariaDB/MySQL source instead, and register NAME.Appointment, NAME.Patient and "
        "NAME.AppointmentDeleted. apievents' own schema is migrated too.",
    )

    src = commands.add_parser(
        "sources", help="Manage MariaDB/MySQL office databases to watch (JSON output)."
    )
    src_cmds = src.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _leaf(src_cmds, "add", "Register a MariaDB/MySQL source.", admin.source_add, "sources")
    p.add_argument("--name", required=True, help="Source name: a letter, then letters, digits, _.")
    p.add_argument(
        "--url",
        required=True,
        help="mysql://user:password@host:3306/database. Its user needs SELECT on the watched "
        "tables and PROCESS (see README). The password is never printed.",
    )
    p.add_argument(
        "--customer-key",
        action="append",
        default=[],
        help="A CustomerKey of this office; repeat. Its subscriptions (CLI or REST API) watch "
        "this source's WatchTables by their plain names.",
    )
    _leaf(src_cmds, "list", "Print every source (passwords hidden).", admin.source_list, "sources")
    p = _leaf(
        src_cmds,
        "remove",
        "Forget a source that no WatchTable uses.",
        admin.source_remove,
        "sources",
    )
    p.add_argument("name", help="Source name.")

    wt = commands.add_parser("watch-tables", help="Manage the WatchTable registry.")
    wt_cmds = wt.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _leaf(
        wt_cmds,
        "add",
        "Register a table so subscriptions can watch it.",
        admin.wt_add,
        "watch-tables",
    )
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
        "--format",
        choices=registry.FORMATS,
        default="iso",
        help="Payload format: iso (ISO 8601 times, enums as numbers; the default) or "
        "opendental (Open Dental's rendering; for its appointment, patient and histappointment "
        "tables also its fields, enum names and derived fields).",
    )
    p.add_argument(
        "--enum",
        action="append",
        default=[],
        metavar="COLUMN=ENUM",
        help="With --format opendental: send an integer column by name, ENUM being an Open "
        "Dental enum (e.g. ApptStatus) or VALUE:Name,VALUE:Name...; repeat.",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="Deliver only rows whose COLUMN equals VALUE (e.g. histapptaction=4); repeat.",
    )
    p.add_argument(
        "--stamped-by-application",
        action="store_true",
        help="Register without a trigger that sets the timestamp column. RISK: every INSERT "
        "and UPDATE must then set it to now() (the transaction's start) itself; a change that "
        "does not, or sets any other time, can be delivered late or never.",
    )
    _leaf(wt_cmds, "list", "List registered WatchTables.", admin.wt_list, "watch-tables")
    p = _leaf(
        wt_cmds,
        "remove",
        "Unregister a WatchTable no subscription uses.",
        admin.wt_remove,
        "watch-tables",
    )
    p.add_argument("name", help="WatchTable name.")

    sub = commands.add_parser("subscriptions", help="Manage subscriptions (JSON output).")
    sub_cmds = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _leaf(
        sub_cmds, "add", "Create a subscription and print it.", admin.sub_add, "subscriptions"
    )
    _subscription_flags(p)
    p.add_argument(
        "--source",
        metavar="NAME",
        help="Watch --watch-table in this MariaDB/MySQL source (default: the CustomerKey's "
        "source, else apievents' own PostgreSQL).",
    )
    _leaf(
        sub_cmds,
        "list",
        "Print all subscriptions as a JSON array.",
        admin.sub_list,
        "subscriptions",
    )
    for name, text, fn in [
        ("show", "Print one subscription.", admin.sub_show),
        ("pause", "Stop deliveries until resumed; nothing is skipped.", admin.sub_pause),
        ("resume", "Re-enable a paused or disabled subscription.", admin.sub_resume),
        ("remove", "Delete a subscription and print what was deleted.", admin.sub_remove),
    ]:
        _leaf(sub_cmds, name, text, fn, "subscriptions").add_argument(
            "num", type=int, help="SubscriptionNum."
        )
    p = _leaf(
        sub_cmds,
        "attempts",
        "Print recent delivery attempts, newest first.",
        admin.sub_attempts,
        "subscriptions",
    )
    p.add_argument("num", type=int, help="SubscriptionNum.")
    p.add_argument("--limit", type=int, default=100, help="How many (default 100).")
    p = _leaf(
        sub_cmds,
        "rewind",
        "Re-send everything changed since a time; safe while deliveries run.",
        admin.sub_rewind,
        "subscriptions",
    )
    p.add_argument("num", type=int, help="SubscriptionNum.")
    p.add_argument("--to", required=True, help="ISO 8601 time, not later than DateTimeStart.")
    p = _leaf(
        sub_cmds, "update", "Change the named fields only.", admin.sub_update, "subscriptions"
    )
    p.add_argument("num", type=int, help="SubscriptionNum.")
    _subscription_flags(p)

    _leaf(commands, "api", "Serve the Subscriptions REST API on APIEVENTS_API_PORT.", _api)
    keys = commands.add_parser("api-keys", help="Manage API keys (stored hashed).")
    key_cmds = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _leaf(
        key_cmds,
        "create",
        "Create a key for a customer; it is printed only now.",
        admin.key_create,
        "api-keys",
    )
    p.add_argument("--customer-key", required=True, help="The CustomerKey the key acts for.")
    p.add_argument(
        "--developer-key",
        help="Instead of a bearer key, register this Open Dental DeveloperKey with the "
        "CustomerKey: clients then send Authorization: ODFHIR {DeveloperKey}/{CustomerKey}.",
    )
    p = _leaf(
        key_cmds,
        "revoke",
        "Revoke one key, or every key of a customer.",
        admin.key_revoke,
        "api-keys",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--api-key", help="The key to revoke.")
    which.add_argument("--customer-key", help="Revoke every key of this CustomerKey.")
    p.add_argument("--developer-key", help="With --customer-key: revoke only that ODFHIR key pair.")
    _leaf(
        key_cmds,
        "list",
        "List keys (numbers, customers, dates; never the keys).",
        admin.key_list,
        "api-keys",
    )

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
    p.add_argument(
        "--mariadb-office",
        metavar="URL",
        help="Also demo an Open Dental-shaped MariaDB office: mysql://user:pass@host:3306 of a "
        "server whose user may create the database apievents_demo_office (make run-office).",
    )

    for name, text in [
        ("producer", "Run the producer: claim due subscriptions and publish jobs."),
        ("worker", "Run a worker: deliver windows to endpoints."),
        ("committer", "Run the committer: apply outcomes, advance DateTimeStart."),
    ]:
        _leaf(commands, name, text, _service).set_defaults(service=name)
    return parser


def _leaf(
    parent: Any,
    name: str,
    text: str,
    handler: Callable[[argparse.Namespace, Settings], int],
    group: str = "",
) -> argparse.ArgumentParser:
    """A command that runs ``handler``; its --help lists the settings that ``group name`` reads
    (the ``used_by`` tags in common/settings.py)."""
    p: argparse.ArgumentParser = parent.add_parser(name, help=text, description=text)
    p.set_defaults(handler=handler, command=f"{group} {name}".strip())
    add_arguments(p, f"{group} {name}".strip())
    return p


def _subscription_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("subscription fields")
    for flag, text in _SUB_FLAGS:
        group.add_argument(flag, default=argparse.SUPPRESS, help=text)


# -- services -----------------------------------------------------------------------------------


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
        app,
        host=settings.api_host,
        port=settings.api_port,
        access_log=False,
        log_config=None,
        # on SIGTERM, in-flight requests get this long; a client that never sends its body
        # must not keep the process alive
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
    )
    try:
        Server(config).run()
    finally:
        pool.close()
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from apievents.demo import Demo

    return Demo(settings, args.dir, args.database_name, args.duration, args.mariadb_office).run()


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from apievents.allinone import wire

    if args.workers < 1:
        return fail("--workers: must be at least 1", EXIT_USAGE)
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
