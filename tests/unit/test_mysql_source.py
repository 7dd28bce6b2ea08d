"""MariaDB/MySQL sources as pure logic: quoting, statements, the window end, the URL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apievents.common import migrate_mysql, queries_mysql
from apievents.common.sources import MySQLAddress, Source, SourceError, check_name
from apievents.common.watchtable import Derived, WatchTable
from apievents.common.watermark import NEVER, mysql_safe_end

WT = WatchTable(
    "office.AppointmentDeleted",
    "opendental",
    "histappointment",
    "HistApptNum",
    "DateTStamp",
    (("HistApptNum", "HistApptNum"), ("AptNum", "AptNum")),
    "opendental",
    derived=(Derived("colorOverride", "ColorOverride", "AptNum"),),
    row_filter=(("HistApptAction", 4),),
    source="office",
)


def t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


MARGIN = timedelta(seconds=0.05)


@pytest.mark.parametrize("name", ["appointment", "DateTStamp", "od_2024", "$x"])
def test_plain_names_are_backticked(name: str) -> None:
    assert queries_mysql.quote(name) == f"`{name}`"


@pytest.mark.parametrize("evil", ["", "a`b", "a.b", "a b", "a'b", 'a"b', "a;b", "x" * 65, "é"])
def test_anything_else_is_refused_not_escaped(evil: str) -> None:
    with pytest.raises(ValueError, match="not a plain MySQL identifier"):
        queries_mysql.quote(evil)


def test_a_later_page_spells_out_the_keyset_so_the_index_serves_it() -> None:
    text, args = queries_mysql.window_page(WT, first=False)
    assert "(`DateTStamp` > %s OR (`DateTStamp` = %s AND `HistApptNum` > %s))" in text
    assert "`opendental`.`histappointment`" in text and "OFFSET" not in text
    assert text.endswith("ORDER BY `DateTStamp`, `HistApptNum` LIMIT %s")
    assert "`HistApptAction` = %s" in text and args == [4]
    first, _ = queries_mysql.window_page(WT, first=True)
    assert "`DateTStamp` > %s AND `DateTStamp` <= %s" in first


def test_page_rows_have_the_shape_of_postgresql_pages() -> None:
    select = queries_mysql.select_list(WT)
    assert select.startswith("`HistApptNum`, `AptNum`, CONCAT_WS(")
    assert select.endswith("`DateTStamp`, `HistApptNum`")


def test_the_delivered_stamp_is_shown_in_the_servers_own_zone() -> None:
    # Read in a UTC session, but Open Dental shows DateTStamp as the server's local time; the
    # trailing paging stamp stays UTC.
    wt = WatchTable(
        "office.Appointment",
        "opendental",
        "appointment",
        "AptNum",
        "DateTStamp",
        (("AptNum", "AptNum"), ("DateTStamp", "DateTStamp")),
        "opendental",
        source="office",
    )
    select = queries_mysql.select_list(wt)
    assert select == (
        "`AptNum`, CONVERT_TZ(`DateTStamp`, '+00:00', @@global.time_zone), `DateTStamp`, `AptNum`"
    )


def test_the_end_is_the_last_completed_second() -> None:
    assert mysql_safe_end(t("2026-01-01 10:00:05.7"), None, None, MARGIN) == t(
        "2026-01-01 10:00:04"
    )
    # just after a second began, the margin keeps it from the one before
    assert mysql_safe_end(t("2026-01-01 10:00:05.01"), None, None, MARGIN) == t(
        "2026-01-01 10:00:04"
    )


def test_a_running_statement_keeps_its_second_writable() -> None:
    end = mysql_safe_end(t("2026-01-01 10:00:09.5"), t("2026-01-01 10:00:03.9"), None, MARGIN)
    assert end == t("2026-01-01 10:00:02")


def test_a_statement_start_read_just_after_a_second_began_keeps_the_second_before() -> None:
    # The start is computed from PROCESSLIST.TIME_MS, and its stamp came from a clock read a
    # moment apart: a start that reads 10:00:04.0001 may have stamped its rows 10:00:03.
    end = mysql_safe_end(t("2026-01-01 10:00:09.5"), t("2026-01-01 10:00:04.0001"), None, MARGIN)
    assert end == t("2026-01-01 10:00:02")


def test_an_open_transaction_holds_the_end_below_its_start() -> None:
    end = mysql_safe_end(t("2026-01-01 10:00:09.5"), None, t("2026-01-01 10:00:03"), MARGIN)
    assert end < t("2026-01-01 10:00:03") - timedelta(seconds=0.9)
    assert end.microsecond == 0


def test_prepared_xa_transactions_keep_the_end_at_the_frontier() -> None:
    clock = t("2026-01-01 10:00:09.5")
    frontier = t("2026-01-01 10:00:01")
    assert mysql_safe_end(clock, None, None, MARGIN, frontier, hidden=1) == frontier
    assert mysql_safe_end(clock, None, None, MARGIN, None, hidden=1) == NEVER


def test_transactions_open_before_the_first_reading_keep_the_end_at_the_frontier() -> None:
    clock = t("2026-01-01 10:00:09.5")
    frontier = t("2026-01-01 10:00:01")
    assert mysql_safe_end(clock, None, None, MARGIN, frontier, unproven=1) == frontier
    assert mysql_safe_end(clock, None, None, MARGIN, None, unproven=1) == NEVER


def test_a_source_url_is_parsed_and_its_password_never_shown() -> None:
    a = MySQLAddress.parse("mysql://od%40user:s3cr%3At@db.example:3307/opendental")
    assert (a.user, a.password, a.host, a.port, a.database) == (
        "od@user",
        "s3cr:t",
        "db.example",
        3307,
        "opendental",
    )
    shown = Source("office", "mysql", "mysql://od:s3cret@db:3306/opendental").to_json()
    assert "s3cret" not in str(shown) and shown["Url"] == "mysql://od:***@db:3306/opendental"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db",
        "mysql://u@h",
        "mysql://u@h:3306/",
        "mysql://u@h:99999/db",
        "mysql://u@h/db?ssl=1",
        "mysql://u@h/db?tls=yes",
        "mysql://u@h/db?ca=/etc/ca.pem",
        "mysql://u@h/db?tls=verify&ca=",
        "mysql://u@h/db?tls=verify&sslmode=disable",
        "mysql:///db",
        "mysql://u@h/a;b",
    ],
)
def test_bad_source_urls_are_refused(url: str) -> None:
    with pytest.raises(SourceError, match=r"^--url: "):
        MySQLAddress.parse(url)


@pytest.mark.parametrize("name", ["", "1office", "of.fice", "of-fice", "x" * 32])
def test_bad_source_names_are_refused(name: str) -> None:
    with pytest.raises(SourceError, match=r"^--name: "):
        check_name(name)


def test_the_schema_splits_into_its_statements() -> None:
    found = migrate_mysql.statements()
    tables = ["appointment", "histappointment", "patient"]
    assert [s.split("`")[1] for s in found[:3]] == tables
    assert len(found) == 4 and found[3].startswith(
        "CREATE TRIGGER IF NOT EXISTS appointment_deleted"
    )
    assert all(not s.rstrip().endswith(";") for s in found)


def test_tls_is_asked_for_in_the_url() -> None:
    plain = MySQLAddress.parse("mysql://u:p@h:3306/db")
    assert not plain.tls
    tls = MySQLAddress.parse("mysql://u:p@h:3306/db?tls=verify&ca=/etc/office-ca.pem")
    assert tls.tls and tls.ca == "/etc/office-ca.pem" and tls.password == "p"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://apievents:Sm1th@2024@10.0.4.7:3306/opendental",
        "mysql://apievents:it's-secret@10.0.4.7:3306/opendental",
        "mysql://apievents:two words@10.0.4.7:3306/opendental",
        'mysql://apievents:pa"ss@10.0.4.7:3306/opendental',
    ],
)
def test_a_password_that_output_could_not_mask_is_refused(url: str) -> None:
    with pytest.raises(SourceError, match="percent-encode"):
        MySQLAddress.parse(url)


@pytest.mark.parametrize(
    ("password", "encoded"),
    [("Sm1th@2024", "Sm1th%402024"), ("it's secret", "it%27s%20secret"), ("p:w/d", "p%3Aw%2Fd")],
)
def test_an_encoded_password_never_shows(password: str, encoded: str) -> None:
    url = f"mysql://apievents:{encoded}@[fd00::7]:3307/opendental?tls=verify"
    assert MySQLAddress.parse(url).password == password
    shown = Source("north", "mysql", url).to_json()["Url"]
    assert shown == "mysql://apievents:***@[fd00::7]:3307/opendental?tls=verify"
