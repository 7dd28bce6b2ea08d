"""Which endpoint addresses we may connect to: endpoint URLs are untrusted input (SSRF).

Checked twice: when a subscription is created or updated, and when a worker connects, against
the address it actually dials (so DNS rebinding cannot slip past the first check).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from apievents.common.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata services that are not already link-local.
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")


class EndpointRefused(Exception):
    """The endpoint's address is not allowed; the message says why (no payload data)."""


@dataclass(frozen=True)
class EndpointPolicy:
    """Link-local, unspecified, multicast and metadata addresses are always refused.

    Loopback and private ranges are allowed unless ``deny_private``; ``allowed`` networks
    override that denial (not the permanent ones).
    """

    deny_private: bool = False
    allowed: tuple[Network, ...] = ()
    https_only: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> EndpointPolicy:
        """The policy the operator configured."""
        return cls(settings.deny_private_endpoints, settings.networks(), settings.https_only)

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be dialled, or None if it may."""
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip in METADATA or ip == ipaddress.ip_address("169.254.169.254"):
            return "a cloud metadata address"
        if ip.is_link_local:
            return "a link-local address"
        if ip.is_unspecified:
            return "an unspecified address"
        if ip.is_multicast:
            return "a multicast address"
        if ip == ipaddress.ip_address("255.255.255.255"):
            return "the broadcast address"
        private = ip.is_loopback or ip.is_private or ip in CARRIER_GRADE_NAT
        if self.deny_private and private and not any(ip in n for n in self.allowed):
            return "a loopback or private address (APIEVENTS_DENY_PRIVATE_ENDPOINTS)"
        return None

    def check(self, url: str) -> None:
        """Refuse a URL whose scheme or any resolved address is not allowed."""
        parts = urlsplit(url)
        if self.https_only and parts.scheme != "https":
            raise EndpointRefused("must be https:// (APIEVENTS_HTTPS_ONLY)")
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        for address in resolve(host, port):
            reason = self.refusal(address)
            if reason:
                raise EndpointRefused(f"{host} resolves to {address}, {reason}")


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to; EndpointRefused if it resolves to none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise EndpointRefused(f"{host} does not resolve ({e})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
