"""What a log line or a stored error may show: never a password."""

from __future__ import annotations

import logging

import psycopg
import pytest

from apievents.common.db import connection_lost
from apievents.common.logs import JsonFormatter, error_text, redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "connection to postgresql://apievents:s3cret@db:5432/apievents failed",
            "connection to postgresql://apievents:***@db:5432/apievents failed",
        ),
        (
            "amqp://guest:guest@127.0.0.1:5672/%2F refused",
            "amqp://guest:***@127.0.0.1:5672/%2F refused",
        ),
        ("host=db user=x password=s3cret dbname=y", "host=db user=x password=*** dbname=y"),
        ("password = 'with space' port=5", "password = *** port=5"),
        ("https://hooks.example.com/path?a=1", "https://hooks.example.com/path?a=1"),
        ("ratio 3:4 at 12:30", "ratio 3:4 at 12:30"),
    ],
)
def test_redact_hides_passwords_and_keeps_the_rest(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert "s3cret" not in redact(text)


def test_error_text_and_every_log_line_are_redacted() -> None:
    error = psycopg.OperationalError("could not connect: postgresql://u:s3cret@db/x")
    assert "s3cret" not in error_text(error)
    record = logging.LogRecord("t", logging.INFO, "f", 1, "dsn %s", ("amqp://a:s3cret@h/",), None)
    record.url = "postgresql://u:s3cret@db/x"
    line = JsonFormatter().format(record)
    assert "s3cret" not in line
    assert "***" in line


def test_a_cancelled_query_is_not_a_lost_connection() -> None:
    assert not connection_lost(psycopg.errors.QueryCanceled("canceling statement"))
    assert connection_lost(psycopg.OperationalError("server closed the connection"))
    assert not connection_lost(psycopg.errors.UndefinedColumn("no such column"))


def test_a_broken_connection_counts_as_lost_whatever_the_error() -> None:
    class Broken:
        closed = False
        broken = True

    assert connection_lost(psycopg.errors.UndefinedColumn("x"), Broken())
