from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apievents.common.watermark import NEVER, safe_end
from apievents.producer.window import UNKNOWN, plan

T = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)
US = timedelta(microseconds=1)


def test_safe_end_is_the_clock_less_the_margin_with_no_open_transaction() -> None:
    assert safe_end(T, None, 0.2 * S) == T - 0.2 * S


def test_safe_end_stays_strictly_below_the_oldest_open_transaction() -> None:
    assert safe_end(T, T - 10 * S, 0.2 * S) == T - 10 * S - US


def test_an_active_statement_bounds_the_end_like_an_open_transaction() -> None:
    # The SQL passes min(xact_start, query_start of active statements) as the oldest write.
    assert safe_end(T, T - 3 * S, 0.2 * S) == T - 3 * S - US


def test_a_hidden_transaction_freezes_the_end_at_the_frontier() -> None:
    frontier = T - 7 * S
    assert safe_end(T, None, 0.2 * S, frontier, hidden=1) == frontier
    assert safe_end(T, T - 9 * S, 0.2 * S, frontier, hidden=2) == T - 9 * S - US
    assert safe_end(T, None, 0.2 * S, frontier, hidden=0) == T - 0.2 * S  # nothing hidden


def test_a_hidden_transaction_without_a_frontier_issues_nothing() -> None:
    assert safe_end(T, None, 0.2 * S, None, hidden=1) == NEVER


def test_no_window_when_nothing_changed_since_the_position() -> None:
    assert plan(T, T - 5 * S, None, None, None) is None  # empty table
    assert plan(T, T - 5 * S, None, None, T - 6 * S) is None  # older changes only
    assert plan(T, T - 5 * S, None, None, T - 5 * S) is None  # exactly at start: delivered


def test_a_cursor_inside_a_timestamp_still_has_rows_at_that_timestamp() -> None:
    assert plan(T, T - 5 * S, "41", None, T - 5 * S) == T
    assert plan(T - 5 * S, T - 5 * S, "41", None, T - 5 * S) == T - 5 * S


def test_window_ends_at_the_safe_end_or_the_stop_time() -> None:
    assert plan(T, T - 5 * S, None, None, T - S) == T
    assert plan(T, T - 5 * S, None, T - 2 * S, T - S) == T - 2 * S


def test_no_window_when_the_end_is_held_at_or_below_the_start() -> None:
    assert plan(T - 6 * S, T - 5 * S, None, None, T) is None
    assert plan(T - 5 * S, T - 5 * S, None, None, T) is None


def test_unreadable_table_still_gets_a_window_to_report_its_error() -> None:
    assert plan(T, T - 5 * S, None, None, UNKNOWN) == T
