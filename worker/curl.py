"""libcurl's multi interface driven by the worker's event loop (its socket API).

libcurl does the HTTP: framing, parsing, keep-alive pooling and TLS. This module only tells
it when a socket is ready and when a timer is due, and turns each finished transfer into the
result of an awaited future. Callbacks from libcurl only record what it asked for: every
call back into libcurl happens from the loop, never inside one of its own callbacks.
"""

from __future__ import annotations

import asyncio
import logging

import pycurl

log = logging.getLogger(__name__)


class Transfers:
    """One multi handle on the running loop; ``run`` awaits one prepared easy handle."""

    def __init__(self, max_connections: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self.multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, max_connections)
        self.multi.setopt(pycurl.M_MAXCONNECTS, max_connections)
        self.running: dict[pycurl.Curl, asyncio.Future[tuple[int, str]]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    async def run(self, handle: pycurl.Curl) -> tuple[int, str]:
        """Run the transfer; (0, "") or libcurl's error number and message. A cancelled
        transfer is taken off the multi handle, which closes its connection."""
        done: asyncio.Future[tuple[int, str]] = self.loop.create_future()
        self.running[handle] = done
        self.multi.add_handle(handle)  # asks for a timer of 0 ms: the transfer starts soon
        try:
            return await done
        finally:
            if self.running.pop(handle, None) is not None:
                self.multi.remove_handle(handle)

    def close(self) -> None:
        """Abort every transfer and close the pooled connections."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for handle, done in list(self.running.items()):
            self.multi.remove_handle(handle)
            if not done.done():
                done.set_result((pycurl.E_ABORTED_BY_CALLBACK, "the sender was closed"))
        self.running.clear()
        self.multi.close()

    # -- libcurl's callbacks: record, never call back in ---------------------------------------

    def _on_socket(self, what: int, fd: int, _multi: object, _data: object) -> None:
        if what == pycurl.POLL_REMOVE:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
            return
        if what in (pycurl.POLL_IN, pycurl.POLL_INOUT):
            self.loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        else:
            self.loop.remove_reader(fd)
        if what in (pycurl.POLL_OUT, pycurl.POLL_INOUT):
            self.loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
        else:
            self.loop.remove_writer(fd)

    def _on_timer(self, ms: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if ms >= 0 and not self.closed:
            self.timer = self.loop.call_later(ms / 1000, self._act, pycurl.SOCKET_TIMEOUT, 0)

    # -- driving libcurl from the loop ---------------------------------------------------------

    def _act(self, fd: int, events: int) -> None:
        if self.closed:
            return
        try:
            while self.multi.socket_action(fd, events)[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
        except pycurl.error as e:  # the multi handle itself failed (out of memory, say):
            log.error("http_client_failed", extra={"error": str(e)})  # fail what runs, so
            for handle in list(self.running):  # nothing waits for a timer that never comes
                self._finish(handle, pycurl.E_FAILED_INIT, "the HTTP client failed")
            return
        while True:
            queued, finished, failed = self.multi.info_read()
            for handle in finished:
                self._finish(handle, 0, "")
            for handle, errno, message in failed:
                self._finish(handle, errno, message)
            if not queued:
                return

    def _finish(self, handle: pycurl.Curl, errno: int, message: str) -> None:
        done = self.running.pop(handle, None)
        self.multi.remove_handle(handle)
        if done is not None and not done.done():
            done.set_result((errno, message))
