"""Test helpers: services, a webhook receiver, and polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def stays(check: Callable[[], object], seconds: float, what: str = "condition") -> None:
    """Assert ``check`` holds throughout ``seconds``: for claims that something never happens.

    Waiting for a condition uses wait_for; this is the other kind of assertion, and its length
    is the observation window, not a guess at how long something takes.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            raise AssertionError(f"{what} stopped holding")
        time.sleep(0.05)
