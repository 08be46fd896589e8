"""node_daemon.gcfreeze: the state alive once the first syncs are done leaves the collector's scans."""
from __future__ import annotations

import gc
import threading

from node_daemon import gcfreeze


def test_settle_freezes_what_is_alive_and_the_thread_waits_for_ready():
    gc.unfreeze()
    try:
        state = [{"k": i} for i in range(1000)]  # long-lived containers
        ready = threading.Event()
        stop = threading.Event()
        t = gcfreeze.start(ready.is_set, stop, every=3600, poll=0.01)
        assert not ready.wait(0.05) and gc.get_freeze_count() == 0  # not before the first syncs
        ready.set()
        for _ in range(200):
            if gc.get_freeze_count() >= len(state):
                break
            stop.wait(0.01)
        assert gc.get_freeze_count() >= len(state)
        stop.set()
        t.join(2)
        assert not t.is_alive()
    finally:
        gc.unfreeze()
