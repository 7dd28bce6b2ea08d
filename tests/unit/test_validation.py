from __future__ import annotations

import pytest

from apievents.common import api_keys
from apievents.common.inputs import InputError, check_url, parse_time, screen
from apievents.common.ssrf import EndpointPolicy


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:2097/",
        "http://192.168.1.14:2097/",
        "https://hooks.example.com/od?x=1",
        "http://[::1]:8080/a",
        "https://bücher.example/hook",
        "https://hooks.example.com./x",
    ],
)
def test_good_urls(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "example.com/hook",
        "http://",
        "http:///path",
        "http://a b/",
        "http://host:99999/",
        "http://host:0/",
        "javascript:alert(1)",
        "http://" + "a" * 64 + ".com/",
        "http://%61.example.com/",  # libcurl would decode it to a.example.com
        "http://a%2e127.0.0.1.nip.io/",
        "",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(InputError) as e:
        check_url(url)
    assert e.value.flag == "--endpoint-url"


def test_times() -> None:
    assert parse_time("date_time_start", "2026-01-01T10:00:00Z").tzinfo is not None
    assert parse_time("date_time_start", "2026-01-01 10:00:00").tzinfo is None
    with pytest.raises(InputError, match="ISO 8601"):
        parse_time("date_time_start", "yesterday")


GOOD = {"endpoint_url": "http://8.8.8.8/", "watch_table": "Appointment", "polling_seconds": 5}


@pytest.mark.parametrize(
    "column, value",
    [
        ("workstation", "Café"),
        ("workstation", "WS\u2028"),
        ("workstation", "WS\u0085"),
        ("workstation", "WS\x00"),
        ("workstation", "W" * 256),
        ("customer_key", "Clínica Dental"),
        ("customer_key", "k" * 256),
        ("note", "a\x00b"),
        ("note", "\ud800"),
        ("note", "n" * 4001),
        ("endpoint_url", "http://8.8.8.8/\x00"),
        ("endpoint_url", "http://8.8.8.8/\ud800"),
        ("endpoint_url", "http://8.8.8.8/\u200b"),
        ("endpoint_url", "http://8.8.8.8/" + "p" * 2048),
        ("watch_table", "Appoint\x00ment"),
        ("watch_table", "W" * 64),
        ("date_time_start", "0001-01-01T00:00:00+23:59"),
        ("date_time_start", "1899-12-31T23:59:59Z"),
        ("date_time_stop", "9999-12-31T23:59:00-05:00"),
        ("date_time_stop", "2026-01-01T00:00:00." + "0" * 60),
        ("secret", "whsec_" + "A" * 1000),
    ],
)
def test_hostile_text_is_refused_naming_its_field(column: str, value: str) -> None:
    with pytest.raises(InputError) as e:
        screen(GOOD | {column: value}, EndpointPolicy())
    assert e.value.column == column


def test_the_limits_themselves_are_accepted() -> None:
    screened = screen(
        GOOD
        | {
            "workstation": "W" * 255,
            "customer_key": " !~" * 85,
            "note": "Café\n\u2028" + "n" * 3994,
            "date_time_start": "1900-01-01T00:00:00Z",
            "date_time_stop": "9999-12-30T00:00:00Z",
        },
        EndpointPolicy(),
    )
    assert len(screened["note"]) == 4000


def test_an_endpoint_that_resolves_to_a_private_address_is_refused_by_default() -> None:
    with pytest.raises(InputError, match="refused: localhost resolves to"):
        screen(GOOD | {"endpoint_url": "http://localhost:2097/"}, EndpointPolicy())


def test_api_key_customer_keys_are_printable_ascii() -> None:
    for bad in ("Clínica Dental", "a\u2028b", "", "k" * 256):
        with pytest.raises(ValueError, match="--customer-key"):
            api_keys.create(None, bad)  # type: ignore[arg-type]  # refused before any SQL
