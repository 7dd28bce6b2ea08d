"""The registry accepts only tables whose changes can be windowed without loss."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from apievents.common import registry
from tests.integration.conftest import insert_appointments, state, subscribe
from tests.support import wait_for
from tests.support.receiver import Receiver
from tests.support.services import Pipeline

STAMP = """
CREATE FUNCTION t_stamp() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN NEW.stamp := now(); RETURN NEW; END $$;
"""


def table(conn: psycopg.Connection[Any], name: str, columns: str, trigger: bool = True) -> None:
    conn.execute(f"CREATE TABLE {name} ({columns})")
    if trigger:
        conn.execute(
            f"CREATE TRIGGER {name}_stamp BEFORE INSERT OR UPDATE ON {name} "
            "FOR EACH ROW EXECUTE FUNCTION t_stamp()"
        )


def registered(conn: psycopg.Connection[Any]) -> int:
    return conn.execute("SELECT count(*) FROM apievents.watch_table").fetchone()[0]  # type: ignore[index]


def refused(conn: psycopg.Connection[Any], table_name: str, match: str, **kw: Any) -> None:
    before = registered(conn)
    with pytest.raises(registry.RegistryError, match=match):
        registry.add(conn, "T", table_name, kw.pop("key", "id"), kw.pop("ts", "stamp"), **kw)
    assert registered(conn) == before  # nothing written


@pytest.fixture
def stamped(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute(STAMP)
    return conn


@pytest.mark.parametrize(
    "column", ["timestamptz(0)", "timestamptz(3)", "timestamp", "timestamp(6)", "date"]
)
def test_a_timestamp_column_must_be_timestamptz_with_six_digits(
    stamped: psycopg.Connection[Any], column: str
) -> None:
    table(stamped, "t", f"id bigint PRIMARY KEY, stamp {column} NOT NULL DEFAULT now()")
    refused(stamped, "t", "timestamp with time zone")


@pytest.mark.parametrize("column", ["timestamptz", "timestamptz(6)"])
def test_timestamptz_with_six_digits_is_accepted(
    stamped: psycopg.Connection[Any], column: str
) -> None:
    table(stamped, "t", f"id bigint PRIMARY KEY, stamp {column} NOT NULL DEFAULT now()")
    assert registry.add(stamped, "T", "t", "id", "stamp").table_name == "t"


@pytest.mark.parametrize(
    "columns",
    [
        "id bigint, stamp timestamptz",  # no unique index
        "id bigint UNIQUE, stamp timestamptz",  # unique, but NULLs repeat
        "id bigint, other int, stamp timestamptz, UNIQUE (id, other)",  # unique only with other
    ],
)
def test_the_key_must_be_unique_and_not_null(
    stamped: psycopg.Connection[Any], columns: str
) -> None:
    table(stamped, "t", columns)
    refused(stamped, "t", "--key-column")


def test_a_partial_unique_index_does_not_make_a_key(stamped: psycopg.Connection[Any]) -> None:
    table(stamped, "t", "id bigint NOT NULL, stamp timestamptz")
    stamped.execute("CREATE UNIQUE INDEX ON t (id) WHERE id > 0")
    refused(stamped, "t", "--key-column")


def test_views_and_foreign_tables_are_refused(stamped: psycopg.Connection[Any]) -> None:
    table(stamped, "t", "id bigint PRIMARY KEY, stamp timestamptz")
    stamped.execute("CREATE VIEW v AS SELECT * FROM t")
    refused(stamped, "v", "ordinary or partitioned table")
    stamped.execute("CREATE EXTENSION file_fdw")
    stamped.execute("CREATE SERVER files FOREIGN DATA WRAPPER file_fdw")
    stamped.execute(
        "CREATE FOREIGN TABLE f (id bigint NOT NULL, stamp timestamptz) SERVER files "
        "OPTIONS (filename '/dev/null')"
    )
    refused(stamped, "f", "ordinary or partitioned table")


def test_a_partitioned_table_is_accepted(stamped: psycopg.Connection[Any]) -> None:
    stamped.execute(
        "CREATE TABLE p (id bigint, stamp timestamptz NOT NULL, PRIMARY KEY (id)) "
        "PARTITION BY RANGE (id)"
    )
    stamped.execute(
        "CREATE TRIGGER p_stamp BEFORE INSERT OR UPDATE ON p FOR EACH ROW "
        "EXECUTE FUNCTION t_stamp()"
    )
    assert registry.add(stamped, "P", "p", "id", "stamp").table_name == "p"


def test_a_table_must_have_a_trigger_that_stamps_the_column(
    stamped: psycopg.Connection[Any],
) -> None:
    table(stamped, "t", "id bigint PRIMARY KEY, stamp timestamptz DEFAULT now()", trigger=False)
    refused(stamped, "t", "trigger")
    # A trigger on INSERT only misses updates; one that sets another column stamps nothing.
    stamped.execute(
        "CREATE TRIGGER t_ins BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION t_stamp()"
    )
    refused(stamped, "t", "trigger")
    table(stamped, "u", "id bigint PRIMARY KEY, stamp timestamptz, other timestamptz", False)
    stamped.execute(
        "CREATE FUNCTION u_other() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.other := now(); RETURN NEW; END $$"
    )
    stamped.execute(
        "CREATE TRIGGER u_other BEFORE INSERT OR UPDATE ON u FOR EACH ROW "
        "EXECUTE FUNCTION u_other()"
    )
    refused(stamped, "u", "trigger")


def test_the_application_stamps_escape_registers_without_a_trigger(
    stamped: psycopg.Connection[Any],
) -> None:
    table(stamped, "t", "id bigint PRIMARY KEY, stamp timestamptz DEFAULT now()", trigger=False)
    wt = registry.add(stamped, "T", "t", "id", "stamp", stamped_by_application=True)
    assert wt.table_name == "t"


def test_a_legacy_naive_registration_does_not_stop_the_producer(
    conn: psycopg.Connection[Any], pipeline: Pipeline, receiver: Receiver
) -> None:
    # Registered before the registry checked column types (straight into the registry table).
    conn.execute(
        "CREATE TABLE naive (id bigint PRIMARY KEY, stamp timestamp NOT NULL DEFAULT now())"
    )
    conn.execute(
        "INSERT INTO apievents.watch_table "
        "(name, table_schema, table_name, key_column, timestamp_column, fields) "
        """VALUES ('Naive', 'public', 'naive', 'id', 'stamp', '[["id", "Id"]]')"""
    )
    subscribe(conn, receiver.url("/naive"), watch_table="Naive")
    good = subscribe(conn, receiver.url())
    conn.execute("INSERT INTO naive VALUES (1)")
    keys = insert_appointments(conn, 3)
    pipeline.start_all()
    wait_for(lambda: len(receiver.delivered()) == 3, 30, "the other subscription")
    assert [r["AptNum"] for r in receiver.delivered()] == keys
    assert state(conn, good)["LastError"] is None
