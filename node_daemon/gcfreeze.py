"""Keep the cyclic garbage collector off the daemon's long-lived state.

What a daemon builds at start (the informers' caches, policy records and compiled state, the
proxy's plan) lives as long as the process, yet every full collection walks all of it: with 30k
pods and 1k policies one took 1.4 s in the middle of a policy sync (bench/policy_diffsync.py), a
stall of every change's enforcement. Refcounting frees nearly
everything here (records are acyclic), so once the first syncs are done that state is moved into
the collector's permanent generation (gc.freeze), and again every `every` seconds for what the
daemon built since, after one collection that reclaims the cycles made so far.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Callable

from netkit import heap

log = logging.getLogger(__name__)

FREEZE_EVERY = 600.0  # seconds between refreezes (a full collection first, of the unfrozen only)


def settle() -> tuple[int, float]:
    """Collect once, freeze what is alive, hand the C heap's free memory back (what the first
    LISTs' JSON pages left: glibc keeps it): (objects frozen in all, seconds it took)."""
    t0 = time.monotonic()
    gc.collect()
    gc.freeze()
    heap.trim()
    return gc.get_freeze_count(), time.monotonic() - t0


def start(ready: Callable[[], bool], stop: threading.Event, every: float = FREEZE_EVERY,
          poll: float = 0.5) -> threading.Thread:
    """A thread that settles once `ready()` (the first syncs are done), then every `every` s."""

    def run() -> None:
        while not stop.is_set() and not ready():
            stop.wait(poll)
        while not stop.is_set():
            frozen, took = settle()
            log.info("garbage collector: %d long-lived objects frozen (%.0f ms)", frozen, took * 1000)
            stop.wait(every)

    t = threading.Thread(target=run, name="gc-freeze", daemon=True)
    t.start()
    return t
