"""The one settings object: every field comes from ``APIEVENTS_<NAME>`` or ``--<name>``."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the flag."""


def _opt(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class Settings:
    """Configuration shared by every command. Field ``x_y`` is ``APIEVENTS_X_Y`` / ``--x-y``."""

    database_url: str = _opt(
        "postgresql://localhost:5432/apievents", "libpq URL of the office database."
    )
    broker_url: str = _opt(
        "amqp://guest:guest@localhost:5672//", "AMQP URL of RabbitMQ (memory:// runs in-process)."
    )
    metrics_port: int = _opt(0, "Port for Prometheus /metrics; 0 disables.")
    queue_prefix: str = _opt("apievents", "Prefix of every exchange and queue name.")
    broker_heartbeat: int = _opt(
        30, "AMQP heartbeat in whole seconds: a silent broker connection is dropped after two."
    )
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING or ERROR.")
    api_host: str = _opt("127.0.0.1", "API: address to listen on (0.0.0.0 in a container).")
    api_port: int = _opt(8080, "API: port of the Subscriptions REST API.")
    batch_size: int = _opt(1000, "Rows per webhook POST (1 to 1000).")
    lease_seconds: float = _opt(
        120.0, "A claimed window is re-issued if its worker shows no progress for this long."
    )
    checkpoint_batches: int = _opt(
        10, "Commit progress every this many batches; a failure resends at most this many."
    )
    tick_seconds: float = _opt(0.25, "Producer: how often to look for due subscriptions.")
    watermark_margin_seconds: float = _opt(
        0.05, "Producer: window ends stay this far behind the database clock (see README)."
    )
    watermark_warn_seconds: float = _opt(
        300.0, "Producer: warn when open transactions hold deliveries back longer than this."
    )
    claim_batch: int = _opt(500, "Producer: most subscriptions claimed in one transaction.")
    worker_concurrency: int = _opt(8, "Worker: windows delivered at once by one process.")
    http_timeout: float = _opt(30.0, "Worker: seconds to wait for an endpoint's answer.")
    http_connect_timeout: float = _opt(5.0, "Worker: seconds to wait for a TCP/TLS connection.")
    # A fixed name, not the host's: a worker's host name tells outside endpoints about our
    # infrastructure.
    sender_name: str = _opt(
        "apievents", "Worker: Workstation header when a subscription names none."
    )
    deny_private_endpoints: bool = _opt(
        True,
        "Refuse endpoints on loopback and private networks (1/0); 0 allows them (the old default).",
    )
    allowed_networks: str = _opt(
        "", "Comma-separated CIDRs always allowed, overriding --deny-private-endpoints."
    )
    https_only: bool = _opt(False, "Refuse endpoints that are not https:// (1/0).")
    dns_timeout_seconds: float = _opt(
        5.0, "API and CLI: seconds an endpoint's host name may take to resolve when checked."
    )
    max_subscriptions_per_customer: int = _opt(
        100,
        "API: most subscriptions one CustomerKey may create (the CLI may exceed it); 0: no cap.",
    )
    max_windows_per_customer: int = _opt(
        8,
        "Producer: most windows in flight at once for one CustomerKey, so one customer's slow "
        "endpoints hold at most this many worker slots; 0: no cap.",
    )
    ca_bundle: str = _opt("", "PEM file of CAs to verify endpoints' TLS with (default: certifi).")
    secret_overlap_seconds: float = _opt(
        86400.0, "After a secret is replaced, keep signing with the old one too for this long."
    )
    disable_after_seconds: float = _opt(
        259200.0, "Disable a subscription that has failed continuously for this long."
    )
    attempt_retention_seconds: float = _opt(
        604800.0, "Keep the attempt log for this long (and at most 1000 per subscription)."
    )
    retry_base_seconds: float = _opt(5.0, "First retry delay after a failed window.")
    retry_cap_seconds: float = _opt(3600.0, "Longest retry delay after repeated failures.")
    commit_batch: int = _opt(500, "Committer: most outcomes applied in one transaction.")
    commit_linger_seconds: float = _opt(
        0.05, "Committer: how long to wait for more outcomes before applying a batch."
    )
    shutdown_timeout: float = _opt(
        25.0, "On SIGTERM, seconds to let in-flight work finish before handing it back."
    )

    def __post_init__(self) -> None:
        checks = [
            ("batch_size", 1 <= self.batch_size <= 1000, "must be 1 to 1000"),
            ("metrics_port", 0 <= self.metrics_port <= 65535, "must be 0 to 65535"),
            ("api_port", 1 <= self.api_port <= 65535, "must be 1 to 65535"),
            ("worker_concurrency", self.worker_concurrency >= 1, "must be at least 1"),
            ("claim_batch", self.claim_batch >= 1, "must be at least 1"),
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per settings field; unset flags fall back to the environment."""
    group = parser.add_argument_group("settings (each also read from its environment variable)")
    for f in dataclasses.fields(Settings):
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
