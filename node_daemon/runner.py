"""A sync runner: events only trigger; the sync function reconciles everything.

Triggers arriving while a sync is pending or running merge into one. Syncs start at most every
`min_interval` seconds, at least every `resync_interval` seconds (drift repair), never before
`ready()` is true (the first LIST has finished), and a failed sync is retried with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .informer import Backoff

log = logging.getLogger(__name__)


class SyncRunner:
    def __init__(self, fn: Callable[[], None], *, name: str, min_interval: float = 1.0,
                 resync_interval: float = 60.0, ready: Callable[[], bool] = lambda: True,
                 backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic):
        self.fn, self.name, self.ready = fn, name, ready
        self.min_interval, self.resync_interval = min_interval, resync_interval
        self.backoff = backoff or Backoff(initial=min_interval, cap=30.0)
        self.clock = clock
        self.runs = 0
        self.last_success: float | None = None
        self._cond = threading.Condition()
        self._pending = True  # the first sync happens as soon as ready() allows
        self._stop = False
        self._last_start = float("-inf")
        self._retry_at: float | None = None
        self._thread: threading.Thread | None = None

    def trigger(self) -> None:
        with self._cond:
            self._pending = True
            self._cond.notify()

    def start(self) -> "SyncRunner":
        self._thread = threading.Thread(target=self.run, name=f"sync-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread:
            self._thread.join(timeout)

    def next_start(self) -> float:
        """When the next sync may start, on the runner's clock."""
        earliest = self._last_start + self.min_interval
        due = self._last_start + self.resync_interval
        if self._pending:
            due = min(due, earliest)
        if self._retry_at is not None:
            due = min(due, max(self._retry_at, earliest))
        return due

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stop:
                    now = self.clock()
                    if not self.ready():
                        self._cond.wait(0.1)
                        continue
                    at = self.next_start()
                    if at <= now:
                        break
                    self._cond.wait(at - now)
                if self._stop:
                    return
                self._pending, self._retry_at = False, None
                self._last_start = self.clock()
            self._run_once()

    def _run_once(self) -> None:
        try:
            self.fn()
        except Exception as e:  # noqa: BLE001 - log one line, retry later; never a traceback loop
            delay = self.backoff.next()
            log.error("%s sync failed: %s; retrying in %.1fs", self.name, e, delay)
            with self._cond:
                self._retry_at = self.clock() + delay
        else:
            self.backoff.reset()
            self.last_success = self.clock()
        finally:
            self.runs += 1
