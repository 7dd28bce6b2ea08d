"""All services as threads of one process: for laptops, demos and kombu's memory transport."""

from __future__ import annotations

import logging
import threading

from apievents.committer.service import build as build_committer
from apievents.common.lifecycle import Lifecycle, Wired
from apievents.common.settings import Settings
from apievents.producer.service import build as build_producer
from apievents.worker.service import build as build_worker

log = logging.getLogger(__name__)


def wire(settings: Settings, lifecycle: Lifecycle, workers: int) -> Wired:
    """A producer, a committer and ``workers`` workers sharing one stop signal."""
    parts = [build_producer(settings, lifecycle), build_committer(settings, lifecycle)]
    parts += [build_worker(settings, lifecycle) for _ in range(workers)]
    names = ["producer", "committer"] + [f"worker{i}" for i in range(workers)]

    class AllInOne:
        def run(self) -> None:
            threads = [
                threading.Thread(target=_guarded, args=(name, part, lifecycle), name=name)
                for name, part in zip(names, parts, strict=True)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    def close() -> None:
        for part in parts:
            part.close()

    return Wired(AllInOne(), close, lambda: all(p.ready() for p in parts))


def _guarded(name: str, part: Wired, lifecycle: Lifecycle) -> None:
    """Run one service; if it fails for good, stop the others too rather than limp on."""
    try:
        part.service.run()
    except BaseException:
        log.exception("service_failed", extra={"service": name})
        lifecycle.stop.set()
        raise
