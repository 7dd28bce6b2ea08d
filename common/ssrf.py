"""Which endpoint addresses we may connect to: endpoint URLs are untrusted input (SSRF).

Checked twice: when a subscription is created or updated, and when a worker connects, against
the address it actually dials (so DNS rebinding cannot slip past the first check).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from apievents.common.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata and platform services, refused whatever the settings say: they hand out
# credentials or configuration to whoever asks from inside the cloud. Those on 169.254/16 and
# fe80::/10 (AWS, GCP, Azure IMDS, OpenStack, DigitalOcean, Tencent, ...) are link-local and
# refused as such; these are the ones that are not.
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # the common one, named so the error says what it is
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd20:ce::254",  # GCP metadata over IPv6
        "168.63.129.16",  # Azure WireServer: VM configuration, extension certificates
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
    )
)
CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
# IPv6 prefixes that carry an IPv4 address: a packet to one ends up at that IPv4 address (through
# a translator or a tunnel), so the IPv4 address is what is judged.
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052, well-known prefix
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215, a translator of our own
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d (RFC 4291)
_LOOKUPS = threading.BoundedSemaphore(16)  # DNS lookups that may hang at once (see resolve)


class EndpointRefused(Exception):
    """The endpoint's address is not allowed; the message says why (no payload data)."""


@dataclass(frozen=True)
class EndpointPolicy:
    """Link-local, unspecified, multicast and metadata addresses are always refused.

    Loopback and private ranges are refused too unless ``deny_private`` is off; ``allowed``
    networks override that denial (not the permanent ones). Denying is the default, so code
    that builds a policy without thinking gets the safe one.
    """

    deny_private: bool = True
    allowed: tuple[Network, ...] = ()
    https_only: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> EndpointPolicy:
        """The policy the operator configured."""
        return cls(settings.deny_private_endpoints, settings.networks(), settings.https_only)

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be dialled, or None if it may."""
        found = self._refused(address)
        if found is None:
            return None
        reason, judged, ip = found
        return reason if judged == ip else f"{reason} ({judged} embedded)"

    def _refused(self, address: str) -> tuple[str, IPAddress, IPAddress] | None:
        """The reason, the address that decided it, and the address itself; or None."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        for judged in _judged(ip):
            reason = self._refusal(judged)
            if reason:
                return reason, judged, ip
        return None

    def _refusal(self, ip: IPAddress) -> str | None:
        if ip in METADATA:
            return "a cloud metadata address"
        if ip.is_link_local:
            return "a link-local address"
        if ip.is_unspecified:
            return "an unspecified address"
        if ip.is_multicast:
            return "a multicast address"
        if ip == ipaddress.ip_address("255.255.255.255"):
            return "the broadcast address"
        private = ip.is_loopback or ip.is_private or ip in CARRIER_GRADE_NAT or _local_v6(ip)
        if self.deny_private and private and not any(ip in n for n in self.allowed):
            return "a loopback or private address (APIEVENTS_DENY_PRIVATE_ENDPOINTS)"
        return None

    def check(self, url: str, timeout: float | None = None) -> None:
        """Refuse a URL whose scheme or any resolved address is not allowed.

        ``timeout`` bounds the DNS lookup; a name that does not resolve in time is refused.
        """
        parts = urlsplit(url)
        if self.https_only and parts.scheme != "https":
            raise EndpointRefused("must be https:// (APIEVENTS_HTTPS_ONLY)")
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        for address in resolve(host, port, timeout):
            found = self._refused(address)
            if found:
                # Not which address: the caller may be a customer mapping our network's names.
                raise EndpointRefused(f"{host} resolves to {found[0]}")


def _judged(ip: IPAddress) -> tuple[IPAddress, ...]:
    """The addresses that decide whether ``ip`` may be dialled: itself, or what it embeds."""
    if isinstance(ip, ipaddress.IPv4Address):
        return (ip,)
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if ip.sixtofour is not None:  # 2002::/16, 6to4
        return (ip.sixtofour,)
    if ip.teredo is not None:  # 2001::/32: the tunnel's server and its (private?) client
        return (ip, *ip.teredo)
    last32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in NAT64 or ip in IPV4_TRANSLATED or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        return (last32,)
    if ip in LOCAL_NAT64:  # where the IPv4 sits depends on the prefix: judge both
        return (ip, last32)
    return (ip,)


def _local_v6(ip: IPAddress) -> bool:
    """IPv6 ranges that reach only our own networks, beyond what ``is_private`` knows (3.11)."""
    return isinstance(ip, ipaddress.IPv6Address) and (ip.is_site_local or ip in LOCAL_NAT64)


def resolve(host: str, port: int, timeout: float | None = None) -> list[str]:
    """Every address ``host`` resolves to; EndpointRefused if it resolves to none in time.

    getaddrinfo cannot be cancelled, so with a ``timeout`` it runs on a daemon thread that is
    abandoned if it hangs; at most 16 such lookups run at once, and one that cannot start in
    time is refused like one that did not finish.
    """
    if timeout is None:
        return _addresses(host, port)
    deadline = time.monotonic() + timeout
    if not _LOOKUPS.acquire(timeout=timeout):
        raise EndpointRefused(f"{host} did not resolve within {timeout:g} s (resolver busy)")
    answer: dict[str, Any] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            answer["addresses"] = _addresses(host, port)
        except Exception as e:  # raised in the caller's thread, as without a timeout
            answer["error"] = e
        finally:
            _LOOKUPS.release()
            done.set()

    threading.Thread(target=lookup, name="resolve", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise EndpointRefused(f"{host} did not resolve within {timeout:g} s")
    if "error" in answer:
        raise answer["error"]
    return list(answer["addresses"])


def _addresses(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise EndpointRefused(f"{host} does not resolve ({e})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
