from __future__ import annotations

import pytest

from apievents.common.subscriptions import InputError, check_url, parse_time


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:2097/",
        "http://192.168.1.14:2097/",
        "https://hooks.example.com/od?x=1",
        "http://[::1]:8080/a",
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
