"""Serving the API with uvicorn: graceful on SIGTERM, and then exit status 0 like our services."""

from __future__ import annotations

import contextlib
import faulthandler
import signal
from collections.abc import Iterator
from types import FrameType

import uvicorn


class Server(uvicorn.Server):
    """uvicorn re-raises the signal after a graceful shutdown; we exit 0 instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """First SIGTERM/SIGINT: finish in-flight requests and stop. Second: stop now."""

        def handle(signum: int, frame: FrameType | None) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

        previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks, as the services do
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
