"""MariaDB/MySQL plumbing for a source: a small bounded pool of asyncmy connections.

Each source has its own pool, so one source's connections never wait on another's. A
statement that takes longer than ``timeout`` fails alone, and its connection is closed rather
than reused (it may still be busy on the server). A connection that failed is dropped; the
next statement opens a fresh one, so a source that went down and came back heals by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncmy
from asyncmy import errors as mysql_errors

from apievents.common import queries_mysql
from apievents.common.sources import MySQLAddress

Error = mysql_errors.MySQLError
Row = tuple[Any, ...]


class SourceUnavailable(Exception):
    """The source could not be reached, or did not answer in time."""


class Pool:
    """At most ``size`` connections to one source, opened on demand."""

    def __init__(self, name: str, address: MySQLAddress, size: int, timeout: float) -> None:
        self.name = name
        self.address = address
        self.timeout = timeout
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(size)

    async def _open(self) -> Any:
        a = self.address
        conn = await asyncmy.connect(
            host=a.host,
            port=a.port,
            user=a.user,
            password=a.password,
            database=a.database,
            autocommit=True,
            connect_timeout=max(1, int(self.timeout)),
            read_timeout=self.timeout,
            init_command=queries_mysql.SESSION,
            ssl=_tls(a),
        )
        if a.tls:  # never rely on the driver alone to refuse plain text: ask the server
            rows = await _fetch(conn, queries_mysql.TLS_CIPHER, ())
            if not rows or not rows[0][1]:
                conn.close()
                raise SourceUnavailable(
                    f"source {self.name!r}: tls=verify, but the server does not speak TLS"
                )
        return conn

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection of this pool; it goes back only if everything on it succeeded. Waiting
        for a free one is bounded by the timeout too: a hanging source fails its windows at
        once instead of holding the worker's slots behind them."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout)
        except TimeoutError:
            raise SourceUnavailable(f"source {self.name!r}: every connection is busy") from None
        try:
            conn = self._idle.pop() if self._idle else None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(self._open(), self.timeout)
                yield conn
            except BaseException:
                if conn is not None:
                    conn.close()  # never reuse a connection in an unknown state
                raise
            else:
                self._idle.append(conn)
        finally:
            self._slots.release()

    async def fetch(self, query: str, args: Sequence[Any] = ()) -> list[Row]:
        """All rows of one statement, within the timeout; SourceUnavailable otherwise."""
        async with self.session() as run:
            return await run(query, args)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Callable[..., Awaitable[list[Row]]]]:
        """Several statements on one connection: ``await run(query, args)``, each within the
        timeout. A failure to reach or hear from the source is SourceUnavailable."""
        try:
            async with self.connection() as conn:

                async def run(query: str, args: Sequence[Any] = ()) -> list[Row]:
                    return await asyncio.wait_for(_fetch(conn, query, args), self.timeout)

                yield run
        except TimeoutError:
            raise SourceUnavailable(f"source {self.name!r} did not answer in time") from None
        except mysql_errors.OperationalError as e:
            if not _unreachable(e):
                raise  # the server answered: this statement's error (a table, a column, a grant)
            raise SourceUnavailable(f"source {self.name!r}: {type(e).__name__}") from e
        except (OSError, mysql_errors.InterfaceError) as e:
            raise SourceUnavailable(f"source {self.name!r}: {type(e).__name__}") from e

    def close(self) -> None:
        """Close the idle connections."""
        while self._idle:
            self._idle.pop().close()


# Server errors that mean the source cannot be used now, not that one statement failed: too
# many connections, access denied or blocked, shutdown, network and packet errors, killed or
# timed-out connections, resource limits. Client errors (2000-2999) are all of this kind.
_UNREACHABLE = frozenset(
    {1040, 1042, 1043, 1044, 1045, 1053, 1077, 1079, 1080, 1081, 1129, 1130, 1152, 1153, 1154,
     1155, 1156, 1157, 1158, 1159, 1160, 1161, 1184, 1203, 1226, 1927, 4031}
)  # fmt: skip


def _unreachable(e: mysql_errors.OperationalError) -> bool:
    code = e.args[0] if e.args and isinstance(e.args[0], int) else 2000
    return 2000 <= code < 3000 or code in _UNREACHABLE


def _tls(a: MySQLAddress) -> ssl.SSLContext | None:
    """The TLS of a source's connections: verified certificate and host name, or none."""
    return ssl.create_default_context(cafile=a.ca or None) if a.tls else None


async def _fetch(conn: Any, query: str, args: Sequence[Any]) -> list[Row]:
    async with conn.cursor() as cur:
        await cur.execute(query, tuple(args) or None)
        return list(await cur.fetchall())
