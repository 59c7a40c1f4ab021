"""A backfill that runs in place says what it is doing, and what it may wait on, every 30 s.

A step that waits for a DuckDB catalog file held by another process logs nothing while it
waits (`embedding_core.store` retries quietly up to its busy timeout); the heartbeat names
the run in progress and every other process that has the catalog file open.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import psutil

HEARTBEAT_S = 30.0


def processes_holding(path: str | None) -> list[str]:
    """"pid N (name)" of every other process of this machine that has `path` open."""
    if not path or not Path(path).exists():
        return []
    target = os.path.realpath(path)
    holders = []
    for process in psutil.process_iter(["pid", "name"]):
        if process.pid == os.getpid():
            continue
        try:
            if any(os.path.realpath(f.path) == target for f in process.open_files()):
                holders.append(f"pid {process.pid} ({process.info['name']})")
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return holders


class Heartbeat:
    """Context manager: while open, prints every `interval_s` the run in progress
    (`current()` returns its description, or None between runs) and the holders of `catalog`."""

    def __init__(self, current, catalog: str | None, interval_s: float = HEARTBEAT_S) -> None:
        self.current = current
        self.catalog = catalog
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._started = time.monotonic()

    def __enter__(self) -> Heartbeat:
        threading.Thread(target=self._beat, name="backfill-heartbeat", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()

    def line(self) -> str:
        doing = self.current() or "between runs"
        holders = processes_holding(self.catalog)
        waits = (f"; the catalog {self.catalog} is open in {', '.join(holders)}: a commit "
                 "waits while another process holds it") if holders else ""
        return f"backfill: {time.monotonic() - self._started:.0f} s in: {doing}{waits}"

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            print(self.line(), file=sys.stderr, flush=True)
