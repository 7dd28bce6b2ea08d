"""A service stops within its grace period on SIGTERM even when a peer stops answering
mid-work, and loses nothing: its work is redone after a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.acceptance.test_processes import watermark_covers
from tests.integration.conftest import insert_appointments, subscribe
from tests.support import wait_for
from tests.support.processes import Stack, service_env
from tests.support.receiver import Receiver
from tests.support.services import BROKER_URL
from tests.support.tcp_proxy import Proxy

pytestmark = pytest.mark.acceptance

PORTS = {"database": 5432, "broker": 5672}


@pytest.fixture
def proxy(request: pytest.FixtureRequest) -> Iterator[Proxy]:
    p = Proxy(("127.0.0.1", PORTS[request.param]))
    yield p
    p.close()


@pytest.mark.parametrize(
    ("victim", "proxy"),
    [
        ("producer", "database"),
        ("committer", "database"),
        ("worker", "broker"),
        ("committer", "broker"),
    ],
    indirect=["proxy"],
)
def test_a_service_whose_peer_froze_mid_work_stops_on_sigterm_and_loses_nothing(
    victim: str, proxy: Proxy, database_url: str, prefix: str, receiver: Receiver
) -> None:
    env = service_env(database_url, prefix)
    if PORTS["database"] == proxy.target[1]:
        frozen = service_env(proxy.url(database_url), prefix)
    else:
        frozen = service_env(database_url, prefix, APIEVENTS_BROKER_URL=proxy.url(BROKER_URL))
    others = Stack(env)
    stack = Stack(frozen)
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            num = subscribe(conn, receiver.url())
            for name in ("producer", "committer", "worker"):
                (stack if name == victim else others).start(name)
            insert_appointments(conn, 50)
            wait_for(lambda: len(receiver.delivered()) >= 50, 30, "the first rows")
            proxy.freeze()
            more = insert_appointments(conn, 50)  # work due while the peer is silent
            time.sleep(2)  # the frozen service is now stuck mid-call on its peer
            assert stack.services[victim].terminate() == 0
            stack.start(victim)
            proxy.up()
            wait_for(lambda: watermark_covers(conn, num), 60, "the watermark past every change")
            got = {r["AptNum"] for r in receiver.delivered()}
            assert set(more) <= got
        finally:
            stack.close()
            others.close()
