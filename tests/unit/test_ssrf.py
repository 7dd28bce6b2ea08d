"""The endpoint address guard: what is refused by default, always, and through IPv6 embeddings."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any

import pytest

from apievents.common.settings import Settings
from apievents.common.ssrf import EndpointPolicy, EndpointRefused, resolve

DEFAULT = EndpointPolicy.from_settings(Settings())
OPEN = EndpointPolicy.from_settings(Settings(deny_private_endpoints=False))
LOOPBACK_ONLY = EndpointPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),))


@pytest.mark.parametrize("policy", [DEFAULT, EndpointPolicy()], ids=["settings", "bare"])
@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.14", "172.16.0.1", "100.64.0.1"]
)
def test_private_addresses_are_refused_by_default(policy: EndpointPolicy, address: str) -> None:
    assert "APIEVENTS_DENY_PRIVATE_ENDPOINTS" in (policy.refusal(address) or "")


def test_deny_private_endpoints_0_keeps_the_old_behaviour() -> None:
    assert OPEN.refusal("127.0.0.1") is None and OPEN.refusal("192.168.1.14") is None
    assert OPEN.refusal("169.254.169.254") == "a cloud metadata address"


@pytest.mark.parametrize(
    "address, embedded",
    [
        ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64, well-known prefix
        ("64:ff9b::a00:1", "10.0.0.1"),
        ("64:ff9b:1::a00:1", "10.0.0.1"),  # NAT64, local-use prefix
        ("2002:7f00:1::1", "127.0.0.1"),  # 6to4
        ("2002:c0a8:10e::1", "192.168.1.14"),
        ("::7f00:1", "127.0.0.1"),  # IPv4-compatible
        ("::ffff:0:a00:1", "10.0.0.1"),  # IPv4-translated (SIIT)
        ("::ffff:10.0.0.1", "10.0.0.1"),  # IPv4-mapped
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1"),  # Teredo, client 10.0.0.1
    ],
)
def test_ipv4_embedded_in_ipv6_is_judged_by_the_ipv4_address(address: str, embedded: str) -> None:
    assert DEFAULT.refusal(address) is not None
    assert OPEN.refusal(address) is None  # private only: allowed when denial is off


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a9fe:a9fe",  # 169.254.169.254 through NAT64
        "64:ff9b:1::a9fe:a9fe",
        "2002:a9fe:a9fe::1",  # ... through 6to4
        "::a9fe:a9fe",  # ... IPv4-compatible
        "::ffff:0:a9fe:a9fe",  # ... IPv4-translated
        "64:ff9b::a83f:8110",  # 168.63.129.16 through NAT64
    ],
)
def test_metadata_embedded_in_ipv6_is_always_refused(address: str) -> None:
    assert "metadata" in (OPEN.refusal(address) or "")
    assert "embedded" in (OPEN.refusal(address) or "")


@pytest.mark.parametrize(
    "address", ["168.63.129.16", "fd20:ce::254", "fd00:ec2::254", "100.100.100.200"]
)
def test_cloud_metadata_addresses_are_refused_even_when_allowed(address: str) -> None:
    everything = EndpointPolicy(
        allowed=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    )
    for policy in (OPEN, DEFAULT, everything):
        assert policy.refusal(address) == "a cloud metadata address"


def test_a_refused_name_does_not_say_what_it_resolves_to() -> None:
    # A customer could otherwise map the internal network's names to addresses.
    with pytest.raises(EndpointRefused) as e:
        DEFAULT.check("http://localhost:2097/")
    assert str(e.value) == (
        "localhost resolves to a loopback or private address (APIEVENTS_DENY_PRIVATE_ENDPOINTS)"
    )


def test_allowed_networks_apply_to_the_embedded_address() -> None:
    assert LOOPBACK_ONLY.refusal("127.0.0.1") is None
    assert LOOPBACK_ONLY.refusal("64:ff9b::7f00:1") is None
    assert LOOPBACK_ONLY.refusal("2002:a00:1::1") is not None  # 10.0.0.1 is not allowed


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_pass(address: str) -> None:
    assert DEFAULT.refusal(address) is None


def test_a_hanging_resolver_is_refused_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hang(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        raise socket.gaierror("released")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    started = time.monotonic()
    try:
        with pytest.raises(EndpointRefused, match=r"did not resolve within 0.3 s"):
            resolve("hang.apievents.test", 80, timeout=0.3)
        assert time.monotonic() - started < 2
    finally:
        release.set()


def test_a_resolver_error_within_the_timeout_reads_as_before() -> None:
    with pytest.raises(EndpointRefused, match="does not resolve"):
        resolve("no-such-host.invalid", 80, timeout=5)
