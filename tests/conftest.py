"""Fixtures shared by the integration and acceptance layers. Missing services fail, never skip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.receiver import Receiver
from tests.support.services import cloned_database, queue_prefix, template_database


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("apievents fault injection")
    group.addoption(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="run the fault-injection suite this long instead of its quick default",
    )
    group.addoption(
        "--fault-seed",
        type=int,
        default=20261128,
        help="seed of the fault-injection suite's writers, endpoints and faults",
    )


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    with template_database() as name:
        yield name


@pytest.fixture
def database_url(template_db: str) -> Iterator[str]:
    with cloned_database(template_db) as url:
        yield url


@pytest.fixture
def prefix() -> Iterator[str]:
    with queue_prefix() as p:
        yield p


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r
