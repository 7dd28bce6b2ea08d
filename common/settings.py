"""The one settings object: every field comes from ``APIEVENTS_<NAME>`` or ``--<name>``."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import conninfo


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the flag."""


# -- Which command reads which setting ------------------------------------------------------------
#
# A command's --help lists exactly the settings tagged with it, so every field of Settings says
# who reads it: ``_opt(default, help, used_by=...)`` with command names from COMMANDS (or the
# groups below). tests/unit/test_settings.py fails on a field tagged for no command, on a name
# that is not a command, and on a command the CLI does not have. When you add a setting, tag it
# with every command whose code reads it; `run --all-in-one` reads whatever its three services
# read, so tag those services, not `run`.

SUBSCRIPTIONS_READ = (
    "subscriptions list",
    "subscriptions show",
    "subscriptions pause",
    "subscriptions resume",
    "subscriptions remove",
    "subscriptions attempts",
    "subscriptions rewind",
)
SUBSCRIPTIONS_WRITE = ("subscriptions add", "subscriptions update")
API_KEYS = ("api-keys create", "api-keys revoke", "api-keys list")
WATCH_TABLES = ("watch-tables add", "watch-tables list", "watch-tables remove")
SOURCES = ("sources add", "sources list", "sources remove")
SERVICES = ("producer", "worker", "committer")
# Every leaf command of the CLI, by the words that name it.
COMMANDS = (
    "migrate",
    *WATCH_TABLES,
    *SOURCES,
    *SUBSCRIPTIONS_WRITE,
    *SUBSCRIPTIONS_READ,
    "api",
    *API_KEYS,
    "run",
    "demo",
    *SERVICES,
)
# The commands that print or parse times: they read the session time zone.
_TIMES = (*SUBSCRIPTIONS_WRITE, *SUBSCRIPTIONS_READ, "api-keys list", "api", "worker")
_EVERY = tuple(c for c in COMMANDS if c != "run")  # run's settings come from SERVICES
_ENDPOINTS = (*SUBSCRIPTIONS_WRITE, "api", "worker")  # the endpoint (SSRF) policy


def _opt(default: Any, help_text: str, *, used_by: Iterable[str]) -> Any:
    return field(default=default, metadata={"help": help_text, "used_by": frozenset(used_by)})


@dataclass(frozen=True)
class Settings:
    """Configuration shared by every command. Field ``x_y`` is ``APIEVENTS_X_Y`` / ``--x-y``."""

    database_url: str = _opt(
        "postgresql://localhost:5432/apievents", "libpq URL of the office database.", used_by=_EVERY
    )
    broker_url: str = _opt(
        "amqp://guest:guest@localhost:5672//",
        "AMQP URL of RabbitMQ (memory:// runs in-process).",
        used_by=(*SERVICES, "demo"),
    )
    metrics_port: int = _opt(0, "Port for Prometheus /metrics; 0 disables.", used_by=SERVICES)
    queue_prefix: str = _opt(
        "apievents", "Prefix of every exchange and queue name.", used_by=SERVICES
    )
    broker_heartbeat: int = _opt(
        30,
        "AMQP heartbeat in whole seconds: a silent broker connection is dropped after two.",
        used_by=SERVICES,
    )
    log_level: str = _opt(
        "INFO", "DEBUG, INFO, WARNING or ERROR.", used_by=(*SERVICES, "api", "demo")
    )
    api_host: str = _opt(
        "127.0.0.1", "API: address to listen on (0.0.0.0 in a container).", used_by=("api",)
    )
    api_port: int = _opt(8080, "API: port of the Subscriptions REST API.", used_by=("api",))
    batch_size: int = _opt(1000, "Rows per webhook POST (1 to 1000).", used_by=("worker",))
    lease_seconds: float = _opt(
        120.0,
        "A claimed window is re-issued if its worker shows no progress for this long.",
        used_by=("producer", "worker"),
    )
    checkpoint_batches: int = _opt(
        10,
        "Commit progress every this many batches; a failure resends at most this many.",
        used_by=("worker",),
    )
    tick_seconds: float = _opt(
        0.1, "Producer: how often to look for due subscriptions.", used_by=("producer",)
    )
    watermark_margin_seconds: float = _opt(
        0.05,
        "Producer: window ends stay this far behind the database clock (see README).",
        used_by=("producer", "subscriptions add", "api", "demo"),
    )
    watermark_warn_seconds: float = _opt(
        300.0,
        "Producer: warn when open transactions hold deliveries back longer than this.",
        used_by=("producer",),
    )
    max_windows_per_customer: int = _opt(
        32,
        "Producer: most windows in flight for one CustomerKey (0: no cap), so one customer's "
        "hanging endpoints take at most that many worker slots.",
        used_by=("producer",),
    )
    claim_batch: int = _opt(
        10000,
        "Producer: most subscriptions claimed (and published) in one tick.",
        used_by=("producer",),
    )
    jobs_per_message: int = _opt(
        16,
        "Most windows in one job message (fewer broker messages and acks per window). Set 1 "
        "while upgrading from a version that sends one window a message, until every worker "
        "runs this one: a worker of such a version cannot read a message of several.",
        used_by=("producer", "worker"),
    )
    worker_concurrency: int = _opt(
        64,
        "Worker: windows delivered at once by one process (its POSTs in flight).",
        used_by=("worker",),
    )
    worker_batch: int = _opt(
        200,
        "Worker: most jobs taken over together (one statement, shared table reads).",
        used_by=("worker",),
    )
    worker_linger_seconds: float = _opt(
        0.005,
        "Worker: how long to wait for more ready jobs before starting a batch.",
        used_by=("worker",),
    )
    worker_db_connections: int = _opt(
        8, "Worker: most database connections of one process.", used_by=("worker",)
    )
    source_connections: int = _opt(
        4,
        "Producer and worker: most connections to each MariaDB/MySQL source, per process.",
        used_by=("producer", "worker"),
    )
    source_timeout_seconds: float = _opt(
        10.0,
        "Producer and worker: seconds a MariaDB/MySQL source may take to connect or answer "
        "one statement; a source that does not fails alone, and is tried again.",
        used_by=("producer", "worker", "migrate"),
    )
    http_timeout: float = _opt(
        30.0, "Worker: seconds to wait for an endpoint's answer.", used_by=("worker",)
    )
    http_connect_timeout: float = _opt(
        5.0, "Worker: seconds to wait for a TCP/TLS connection.", used_by=("worker",)
    )
    # A fixed name, not the host's: a worker's host name tells outside endpoints about our
    # infrastructure.
    sender_name: str = _opt(
        "apievents",
        "Worker: Workstation header when a subscription names none.",
        used_by=("worker",),
    )
    deny_private_endpoints: bool = _opt(
        True,
        "Refuse endpoints on loopback and private networks (1/0); 0 allows them (the old default).",
        used_by=_ENDPOINTS,
    )
    allowed_networks: str = _opt(
        "",
        "Comma-separated CIDRs always allowed, overriding --deny-private-endpoints.",
        used_by=_ENDPOINTS,
    )
    https_only: bool = _opt(
        False, "Refuse endpoints that are not https:// (1/0).", used_by=_ENDPOINTS
    )
    ca_bundle: str = _opt(
        "", "PEM file of CAs to verify endpoints' TLS with (default: certifi).", used_by=("worker",)
    )
    dns_timeout_seconds: float = _opt(
        5.0,
        "Seconds an endpoint's host name may take to resolve (when a subscription is checked, "
        "and when a worker connects).",
        used_by=(*SUBSCRIPTIONS_WRITE, "api", "worker"),
    )
    max_subscriptions_per_customer: int = _opt(
        100,
        "API: most subscriptions one CustomerKey may create (the CLI may exceed it); 0: no cap.",
        used_by=("api",),
    )
    secret_overlap_seconds: float = _opt(
        86400.0,
        "After a secret is replaced, keep signing with the old one too for this long.",
        used_by=("subscriptions update", "api"),
    )
    disable_after_seconds: float = _opt(
        259200.0,
        "Disable a subscription that has failed continuously for this long.",
        used_by=("committer",),
    )
    attempt_retention_seconds: float = _opt(
        604800.0,
        "Keep the attempt log for this long (and at most 1000 per subscription).",
        used_by=("producer",),
    )
    retry_base_seconds: float = _opt(
        5.0, "First retry delay after a failed window.", used_by=("committer",)
    )
    retry_cap_seconds: float = _opt(
        3600.0, "Longest retry delay after repeated failures.", used_by=("committer",)
    )
    commit_batch: int = _opt(
        500, "Committer: most outcomes applied in one transaction.", used_by=("committer",)
    )
    commit_linger_seconds: float = _opt(
        0.05,
        "Committer: how long to wait for more outcomes before applying a batch.",
        used_by=("committer",),
    )
    timezone: str = _opt(
        "",
        "Time zone of database sessions (IANA name, e.g. America/Chicago): Open Dental-format "
        "payloads and /api/v1 answers show times in it, and times without an offset are read "
        "in it. Empty: the database's TimeZone.",
        used_by=_TIMES,
    )
    shutdown_timeout: float = _opt(
        25.0,
        "On SIGTERM, seconds to let in-flight work finish before handing it back.",
        used_by=("worker",),
    )

    def __post_init__(self) -> None:
        checks = [
            ("batch_size", 1 <= self.batch_size <= 1000, "must be 1 to 1000"),
            ("metrics_port", 0 <= self.metrics_port <= 65535, "must be 0 to 65535"),
            ("api_port", 1 <= self.api_port <= 65535, "must be 1 to 65535"),
            ("worker_concurrency", self.worker_concurrency >= 1, "must be at least 1"),
            ("worker_batch", self.worker_batch >= 1, "must be at least 1"),
            ("worker_db_connections", self.worker_db_connections >= 2, "must be at least 2"),
            ("source_connections", self.source_connections >= 1, "must be at least 1"),
            ("source_timeout_seconds", self.source_timeout_seconds > 0, "must be positive"),
            ("claim_batch", self.claim_batch >= 1, "must be at least 1"),
            ("jobs_per_message", self.jobs_per_message >= 1, "must be at least 1"),
            ("commit_batch", self.commit_batch >= 1, "must be at least 1"),
            *[(n, getattr(self, n) >= 0, "must be 0 (no cap) or more") for n in _CAPS],
            ("log_level", self.log_level.upper() in _LEVELS, "must be one of " + "/".join(_LEVELS)),
        ]
        checks += [(n, getattr(self, n) > 0, "must be positive") for n in _POSITIVE]
        checks.append(("checkpoint_batches", self.checkpoint_batches >= 1, "must be at least 1"))
        try:
            self.networks()
            checks.append(("allowed_networks", True, ""))
        except ValueError as e:
            checks.append(("allowed_networks", False, f"not a list of CIDRs ({e})"))
        checks.append(
            (
                "lease_seconds",
                self.lease_seconds > self.http_timeout + self.http_connect_timeout,
                "must exceed --http-timeout plus --http-connect-timeout, so one POST cannot "
                "outlive a lease",
            )
        )
        for name, ok, why in checks:
            if not ok:
                raise SettingsError(f"--{_flag(name)}: {why}")
        if self.timezone:
            # Every connection of every command gets the zone as its session TimeZone, so the
            # worker, the API and the CLI render and read times alike without threading a zone
            # through each of them; psycopg then hands out datetimes in that zone.
            object.__setattr__(
                self, "database_url", with_timezone(self.database_url, self.timezone)
            )

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """--allowed-networks parsed."""
        return tuple(
            ipaddress.ip_network(n.strip(), strict=False)
            for n in self.allowed_networks.split(",")
            if n.strip()
        )

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Build settings from the environment, then explicit overrides (parsed flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env = env_name(f.name)
            if env in environ:
                values[f.name] = _convert(f.name, f.type, environ[env])
        for name, value in (overrides or {}).items():
            values[name] = _convert(name, _TYPES[name], value)
        return cls(**values)


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_POSITIVE = (
    "broker_heartbeat",
    "worker_linger_seconds",
    "lease_seconds",
    "tick_seconds",
    "http_timeout",
    "http_connect_timeout",
    "retry_base_seconds",
    "retry_cap_seconds",
    "commit_linger_seconds",
    "shutdown_timeout",
    "watermark_margin_seconds",
    "watermark_warn_seconds",
    "secret_overlap_seconds",
    "disable_after_seconds",
    "attempt_retention_seconds",
    "dns_timeout_seconds",
)
_CAPS = ("max_subscriptions_per_customer", "max_windows_per_customer")
_TYPES: dict[str, Any] = {f.name: f.type for f in dataclasses.fields(Settings)}


def with_timezone(url: str, zone: str) -> str:
    """The libpq connection string ``url`` whose sessions use ``zone`` as their TimeZone."""
    try:
        zoneinfo.ZoneInfo(zone)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise SettingsError(f"--timezone: unknown time zone {zone!r}") from None
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise SettingsError(f"--database-url: {e}") from None
    setting = f"-c TimeZone={zone}"
    options = str(params.get("options") or "")
    if f"TimeZone={zone}" in options.split():
        return url  # already folded in (dataclasses.replace runs __post_init__ again)
    # A later -c wins, so this overrides a TimeZone the URL itself may set.
    return conninfo.make_conninfo(url, options=f"{options} {setting}".strip())


def settings_for(command: str) -> list[dataclasses.Field[Any]]:
    """The settings fields that ``command`` (a name from COMMANDS) reads, in declared order."""
    readers = set(SERVICES) if command == "run" else {command}
    return [f for f in dataclasses.fields(Settings) if f.metadata["used_by"] & readers]


def env_name(name: str) -> str:
    """The environment variable for a settings field."""
    return "APIEVENTS_" + name.upper()


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _convert(name: str, kind: Any, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if kind in ("bool", bool):
        value = raw.strip().lower()
        if value not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
            raise SettingsError(f"--{_flag(name)} / {env_name(name)}: expected 1 or 0: {raw!r}")
        return value in ("1", "true", "yes", "on")
    try:
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return float(raw)
    except ValueError:
        raise SettingsError(f"--{_flag(name)} / {env_name(name)}: not a number: {raw!r}") from None
    return raw


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add a ``--flag`` per setting that ``command`` reads; unset flags fall back to the
    environment."""
    group = parser.add_argument_group("settings (each also read from its environment variable)")
    for f in settings_for(command):
        group.add_argument(
            "--" + _flag(f.name),
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=f.name.split("_")[-1].upper(),
            help=f"{f.metadata['help']} [{env_name(f.name)}; default {f.default}]",
        )


def from_namespace(ns: argparse.Namespace) -> Settings:
    """Settings from parsed arguments plus the environment."""
    overrides = {name: getattr(ns, name) for name in _TYPES if hasattr(ns, name)}
    return Settings.load(overrides=overrides)
