"""Sources: the office databases (MariaDB/MySQL) apievents watches besides its own PostgreSQL.

A source is a name and a connection URL. Its WatchTables are registered as ``source.Name``;
its CustomerKeys (``--customer-key``) subscribe to them by their plain names, so a REST client
authenticated as ``ODFHIR DK/CK`` watches its own office's database. The URL's password is
stored in apievents' database (like the subscriptions' signing secrets) and never printed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import psycopg

from apievents.common import queries

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")
_DATABASE = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")
SCHEMES = ("mysql", "mariadb")


class SourceError(ValueError):
    """A source that cannot be added, found or removed; nothing was written."""


@dataclass(frozen=True)
class MySQLAddress:
    """Where a MariaDB/MySQL source is, parsed from its URL."""

    host: str
    port: int
    user: str
    password: str
    database: str
    tls: bool = False  # ?tls=verify: encrypted, the server's certificate and name verified
    ca: str = ""  # ?ca=PATH: the CA file that signed it (default: the system's CAs)

    @classmethod
    def parse(cls, url: str) -> MySQLAddress:
        """``mysql://user:pass@host:3306/db`` (or ``mariadb://``); SourceError names the flaw."""
        try:
            parts = urlsplit(url)
            port = parts.port or 3306
        except ValueError:
            raise SourceError("--url: not a URL; use mysql://user:pass@host:3306/db") from None
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise SourceError("--url: use mysql://user:pass@host:3306/db")
        if parts.netloc.count("@") > 1 or re.search(r"[\s'\"]", parts.netloc):
            raise SourceError(
                "--url: percent-encode @, spaces and quotes in the user and password "
                "(@ is %40, a space %20)"
            )
        database = parts.path.lstrip("/")
        if not _DATABASE.match(database):
            raise SourceError("--url: name the database, e.g. mysql://user@host:3306/opendental")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = set(options) - {"tls", "ca"}
        if parts.fragment or unknown or options.get("tls", "verify") != "verify":
            raise SourceError(
                "--url: the only options are ?tls=verify and &ca=PATH; "
                "use mysql://user:pass@host:3306/db?tls=verify"
            )
        if "ca" in options and ("tls" not in options or not options["ca"]):
            raise SourceError("--url: ca=PATH goes with tls=verify")
        user = unquote(parts.username or "")
        return cls(
            parts.hostname,
            port,
            user,
            unquote(parts.password or ""),
            database,
            "tls" in options,
            options.get("ca", ""),
        )


@dataclass(frozen=True)
class Source:
    """A registered source."""

    name: str
    kind: str
    url: str
    customer_keys: tuple[str, ...] = ()
    watch_tables: int = 0

    @property
    def address(self) -> MySQLAddress:
        """Its parsed URL."""
        return MySQLAddress.parse(self.url)

    @property
    def shown_url(self) -> str:
        """The URL as output may show it: rebuilt from its parts, with the password masked."""
        parts, a = urlsplit(self.url), self.address
        user = quote(a.user, safe="") + (":***" if a.password else "")
        query = f"?{parts.query}" if parts.query else ""
        host = f"[{a.host}]" if ":" in a.host else a.host
        return f"{parts.scheme}://{user}@{host}:{a.port}/{a.database}{query}"

    def to_json(self) -> dict[str, Any]:
        """The form the CLI prints: the URL without its password."""
        return {
            "Source": self.name,
            "Kind": self.kind,
            "Url": self.shown_url,
            "CustomerKeys": list(self.customer_keys),
            "WatchTables": self.watch_tables,
        }


def check_name(name: str) -> str:
    """A source name: letters, digits and _ (it prefixes its WatchTables' names)."""
    if not _NAME.match(name):
        raise SourceError(f"--name: {name!r} must be a letter, then letters, digits and _ (max 31)")
    return name


def add(
    conn: psycopg.Connection[Any], name: str, url: str, customer_keys: Sequence[str] = ()
) -> Source:
    """Register a source (nothing is written on error)."""
    check_name(name)
    MySQLAddress.parse(url)
    if any(not ck for ck in customer_keys):
        raise SourceError("--customer-key: must not be empty")
    try:
        with conn.transaction():
            conn.execute(queries.SOURCE_INSERT, (name, "mysql", url))
            for ck in customer_keys:
                conn.execute(queries.SOURCE_MAP_CUSTOMER, (ck, name))
    except psycopg.errors.UniqueViolation as e:
        if "customer_source" in str(e):
            raise SourceError("--customer-key: already belongs to another source") from None
        raise SourceError(f"--name: source {name!r} already exists") from None
    return Source(name, "mysql", url, tuple(sorted(customer_keys)))


def list_all(conn: psycopg.Connection[Any]) -> list[Source]:
    """Every source, by name."""
    return [
        Source(name, kind, url, tuple(cks), n)
        for name, kind, url, cks, n in conn.execute(queries.SOURCE_LIST).fetchall()
    ]


def get(conn: psycopg.Connection[Any], name: str) -> Source:
    """The source ``name``; SourceError if there is none."""
    for source in list_all(conn):
        if source.name == name:
            return source
    raise SourceError(f"--source: no source {name!r}; see `apievents sources list`")


def remove(conn: psycopg.Connection[Any], name: str) -> Source:
    """Forget a source that no WatchTable uses (and its CustomerKeys' mapping)."""
    source = get(conn, name)
    if source.watch_tables:
        raise SourceError(
            f"source {name!r} has {source.watch_tables} WatchTable(s); remove them first "
            "(`apievents watch-tables remove`)"
        )
    conn.execute(queries.SOURCE_DELETE, (name,))
    return source


def of_customer(conn: psycopg.Connection[Any], customer_key: str) -> str:
    """The source a CustomerKey's subscriptions watch ("" for apievents' own PostgreSQL)."""
    if not customer_key:
        return ""
    row = conn.execute(queries.SOURCE_OF_CUSTOMER, (customer_key,)).fetchone()
    return str(row[0]) if row else ""
