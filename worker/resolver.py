"""Looking up an endpoint's name: on threads of our own, with a timeout, vetted.

Only the addresses the endpoint policy allows come back, and the sender hands libcurl only
those (it never resolves a name itself). A name's vetted addresses are kept for a few
seconds, so a busy endpoint is not looked up on every POST.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time

from apievents.common.ssrf import EndpointPolicy, EndpointRefused
from apievents.common.threads import DaemonThreads

DNS_CACHE_SECONDS = 10.0  # how long a name's vetted addresses are used without a new lookup
CACHE_SIZE = 4096  # names cached before the expired ones are dropped


class GuardedResolver:
    """Resolves with a timeout and returns only the addresses the policy allows.

    Lookups run on threads of their own: a lookup that hangs keeps its thread until the
    system resolver gives up, and one customer's hanging names must not take the threads
    every other lookup (and the rest of the loop's work) needs. A name's vetted addresses are
    kept for DNS_CACHE_SECONDS; concurrent lookups of one name share one.
    """

    def __init__(self, policy: EndpointPolicy, timeout: float, threads: int = 64) -> None:
        self.policy = policy
        self.timeout = timeout
        self.threads = DaemonThreads(threads, "dns")  # a hung lookup never holds the exit
        self.cache: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self.pending: dict[tuple[str, int], asyncio.Future[list[str]]] = {}

    async def addresses(self, host: str, port: int) -> list[str]:
        """Every allowed address of ``host``; EndpointRefused if there is none."""
        key = (host, port)
        hit = self.cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        pending = self.pending.get(key)
        if pending is None:
            pending = self.pending[key] = asyncio.ensure_future(self._lookup(host, port))
            pending.add_done_callback(functools.partial(self._looked_up, key))
        return await asyncio.shield(pending)

    def _looked_up(self, key: tuple[str, int], done: asyncio.Future[list[str]]) -> None:
        self.pending.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved, even if every caller stopped waiting

    def forget(self, host: str, port: int) -> None:
        """Look the name up again next time (its address could not be reached)."""
        self.cache.pop((host, port), None)

    async def _lookup(self, host: str, port: int) -> list[str]:
        # socket.getaddrinfo, as the check at creation uses; only for names not cached.
        lookup = functools.partial(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        try:
            infos = await asyncio.wait_for(self.threads.submit(lookup), self.timeout)
        except (OSError, UnicodeError, TimeoutError) as e:
            raise EndpointRefused(f"{host} does not resolve ({type(e).__name__})") from None
        found: list[str] = []
        reason = f"{host} has no address"
        for *_, sockaddr in infos:
            address = str(sockaddr[0])
            refusal = self.policy.refusal(address)
            if refusal:
                reason = f"{host} resolves to {address}, {refusal}"
            elif address not in found:
                found.append(address)
        if not found:
            raise EndpointRefused(reason)
        now = time.monotonic()
        if len(self.cache) >= CACHE_SIZE:  # drop what expired, so names no longer used go
            self.cache = {k: v for k, v in self.cache.items() if v[0] > now}
        self.cache[(host, port)] = (now + DNS_CACHE_SECONDS, found)
        return found

    def close(self) -> None:
        """Let the lookup threads go (a hanging one ends when the system resolver does)."""
        self.threads.shutdown()
