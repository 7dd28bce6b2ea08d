"""Fixtures of the acceptance layer: the services as real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.processes import Stack, service_env


@pytest.fixture
def stack(database_url: str, prefix: str) -> Iterator[Stack]:
    """The services with default settings, as processes; every one stopped afterwards. Tests
    that need other settings define their own ``stack``."""
    s = Stack(service_env(database_url, prefix))
    yield s
    s.close()
