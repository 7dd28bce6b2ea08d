"""Where an open InnoDB transaction's stamps may begin, remembered across readings."""

from __future__ import annotations

from datetime import UTC, datetime

from apievents.common.trx_origins import Origins


def t(s: str) -> datetime:
    return datetime.fromisoformat(f"2026-01-01 10:00:{s}").replace(tzinfo=UTC)


def test_a_transaction_opened_by_a_statement_seen_running_is_bounded_by_that_statement() -> None:
    o = Origins()
    assert o.observe(t("01"), {}, []) == (None, 0)
    # thread 7 waits for a lock: its INSERT took its stamp at :01.5, no transaction yet
    assert o.observe(t("02"), {7: t("01.5")}, []) == (None, 0)
    assert o.observe(t("03"), {7: t("01.5")}, []) == (None, 0)
    # the lock is gone: the row operation opened the transaction at :04, and it stays open
    assert o.observe(t("05"), {}, [(7, t("04"))]) == (t("01.5"), 0)
    assert o.observe(t("06"), {}, [(7, t("04"))]) == (t("01.5"), 0)  # for as long as it is open
    assert o.observe(t("07"), {}, []) == (None, 0)


def test_a_transaction_opened_between_readings_is_bounded_by_the_previous_reading() -> None:
    o = Origins()
    o.observe(t("01"), {}, [])
    # its statement ran and ended between the readings: it started after :01
    assert o.observe(t("05"), {}, [(7, t("04"))]) == (t("01"), 0)


def test_a_statement_seen_by_the_reading_that_first_sees_its_transaction_bounds_it() -> None:
    o = Origins()
    o.observe(t("01"), {}, [])
    assert o.observe(t("05"), {7: t("00.5")}, [(7, t("04"))]) == (t("00.5"), 0)


def test_a_transaction_with_an_earlier_start_than_every_statement_keeps_its_own() -> None:
    o = Origins()
    o.observe(t("01"), {}, [])
    o.observe(t("02"), {7: t("01.9")}, [])
    assert o.observe(t("05"), {}, [(7, t("01.2")), (8, t("03"))]) == (t("01.2"), 0)


def test_transactions_open_before_the_first_reading_are_unproven_until_they_end() -> None:
    o = Origins()
    assert o.observe(t("05"), {}, [(7, t("04")), (8, t("03"))]) == (t("03"), 2)
    assert o.observe(t("06"), {}, [(7, t("04")), (9, t("05.5"))]) == (t("04"), 1)
    assert o.observe(t("07"), {}, [(9, t("05.5"))]) == (t("05"), 0)


def test_a_new_transaction_on_the_same_thread_is_bounded_afresh() -> None:
    o = Origins()
    o.observe(t("01"), {7: t("00.5")}, [])
    assert o.observe(t("02"), {}, [(7, t("01.8"))]) == (t("00.5"), 0)
    o.observe(t("03"), {}, [])  # committed
    assert o.observe(t("09"), {}, [(7, t("08"))]) == (t("03"), 0)
