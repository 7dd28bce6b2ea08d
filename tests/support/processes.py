"""Running ``apievents`` commands and services as real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from tests.support.services import BROKER_URL, LOOPBACK

APIEVENTS = shutil.which("apievents", path=str(Path(sys.executable).parent)) or "apievents"


def service_env(database_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIEVENTS_")}
    return (
        env
        | {
            "APIEVENTS_DATABASE_URL": database_url,
            "APIEVENTS_BROKER_URL": BROKER_URL,
            "APIEVENTS_QUEUE_PREFIX": prefix,
            "APIEVENTS_TICK_SECONDS": "0.05",
            "APIEVENTS_LEASE_SECONDS": "5",
            "APIEVENTS_RETRY_BASE_SECONDS": "0.2",
            "APIEVENTS_RETRY_CAP_SECONDS": "1",
            "APIEVENTS_HTTP_TIMEOUT": "3",
            "APIEVENTS_HTTP_CONNECT_TIMEOUT": "1",
            "APIEVENTS_SHUTDOWN_TIMEOUT": "10",
            "APIEVENTS_ALLOWED_NETWORKS": LOOPBACK,
        }
        | extra
    )


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [APIEVENTS, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def cli_json(env: dict[str, str], *args: str) -> Any:
    done = cli(env, *args)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


class Service:
    """``apievents <name>`` (or ``apievents <args>``) in the background, logging to a temp file."""

    def __init__(self, name: str, env: dict[str, str], args: list[str] | None = None) -> None:
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"apievents-{name}-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [APIEVENTS, *(args or [name])],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code; a service still running after ``timeout`` fails with
        its log and every thread's stack (SIGUSR1), which shows where it waits."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
            raise AssertionError(
                f"{self.name} still running {timeout} s after SIGTERM:\n{self.output()}"
            ) from None

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.log.close()


class Stack:
    """A set of running services by name; ``start`` replaces a stopped one."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.services: dict[str, Service] = {}

    def start(self, name: str, command: str | None = None) -> None:
        old = self.services.get(name)
        if old is not None:
            old.close()
        self.services[name] = Service(command or name, self.env)

    def close(self) -> None:
        for s in self.services.values():
            s.close()
