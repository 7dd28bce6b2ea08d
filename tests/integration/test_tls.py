"""Endpoints' TLS is verified: the certificate must chain to the bundle and name the host."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from apievents.worker.sender import Answer, Sender
from tests.support.receiver import Receiver
from tests.support.services import LOOPBACK_POLICY

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def https_server(ca: trustme.CA, *names: str) -> Iterator[int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(context)
    with Receiver(tls=context) as receiver:
        yield receiver.port


@pytest.fixture
def localhost_port(ca: trustme.CA) -> Iterator[int]:
    yield from https_server(ca, "localhost")


@pytest.fixture
def other_name_port(ca: trustme.CA) -> Iterator[int]:
    yield from https_server(ca, "hooks.example.com")


def post(url: str, ca_bundle: str) -> Answer:
    async def run() -> Answer:
        sender = Sender(3.0, 1.0, 4, LOOPBACK_POLICY, ca_bundle)
        try:
            return await sender.post(url, b"[]", {"Content-Type": "application/json"})
        finally:
            await sender.close()

    return asyncio.run(run())


@pytest.fixture
def bundle(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_a_certificate_that_chains_to_the_bundle_is_accepted(
    localhost_port: int, bundle: str
) -> None:
    answer = post(f"https://localhost:{localhost_port}/hook", bundle)
    assert answer.ok and answer.http_status == 200


def test_a_certificate_the_bundle_does_not_trust_fails_the_post(localhost_port: int) -> None:
    answer = post(f"https://localhost:{localhost_port}/hook", "")  # the default bundle
    assert not answer.ok and answer.http_status is None
    assert answer.error_class == "connection_error"


def test_a_certificate_for_another_host_name_fails_the_post(
    other_name_port: int, bundle: str
) -> None:
    answer = post(f"https://localhost:{other_name_port}/hook", bundle)
    assert not answer.ok and answer.http_status is None
    assert answer.error_class == "connection_error"
