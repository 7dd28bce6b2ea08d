"""When the producer sends one window a message: the dead letters it watches, as pure logic."""

from __future__ import annotations

from typing import Any

from apievents.common.lifecycle import Lifecycle
from apievents.common.settings import Settings
from apievents.common.topology import DEAD_LETTER_CAP
from apievents.producer.service import Producer, ProducerConfig


def producer(**overrides: Any) -> Producer:
    config = ProducerConfig.from_settings(Settings(**overrides))
    return Producer(config, None, Lifecycle())  # type: ignore[arg-type]


def test_growing_dead_letters_switch_to_one_window_a_message() -> None:
    p = producer()
    p._dead_letters(3)  # the first look sets the baseline
    p._dead_letters(3)
    assert p._single_until == 0
    p._dead_letters(4)
    assert p._single_until > 0


def test_a_dead_letter_queue_at_its_cap_counts_as_growing() -> None:
    p = producer()
    p._dead_letters(DEAD_LETTER_CAP)
    p._dead_letters(DEAD_LETTER_CAP)  # drop-head: new letters no longer change the count
    assert p._single_until > 0


def test_one_window_a_message_already_never_switches() -> None:
    p = producer(jobs_per_message=1)
    p._dead_letters(3)
    p._dead_letters(9)
    assert p._single_until == 0
