"""The sync runner: merged triggers, minimum interval, periodic resync, readiness gate, retry."""

import threading
import time

from node_daemon.informer import Backoff
from node_daemon.runner import SyncRunner


def wait_for(cond, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_triggers_during_a_sync_merge_into_one_more_sync():
    gate, calls = threading.Event(), []

    def fn():
        calls.append(time.monotonic())
        gate.wait(2)

    r = SyncRunner(fn, name="t", min_interval=0.05, resync_interval=60).start()
    try:
        assert wait_for(lambda: len(calls) == 1)
        for _ in range(50):
            r.trigger()
        gate.set()
        assert wait_for(lambda: len(calls) == 2)
        time.sleep(0.3)
        assert len(calls) == 2
    finally:
        r.stop()


def test_min_interval_spaces_syncs():
    calls = []
    r = SyncRunner(lambda: calls.append(time.monotonic()), name="t", min_interval=0.3,
                   resync_interval=60).start()
    try:
        assert wait_for(lambda: len(calls) == 1)
        r.trigger()
        assert wait_for(lambda: len(calls) == 2)
        assert calls[1] - calls[0] >= 0.29
    finally:
        r.stop()


def test_periodic_resync_without_triggers():
    calls = []
    r = SyncRunner(lambda: calls.append(1), name="t", min_interval=0.01, resync_interval=0.1).start()
    try:
        assert wait_for(lambda: len(calls) >= 4)
    finally:
        r.stop()


def test_no_sync_before_ready():
    ready, calls = threading.Event(), []
    r = SyncRunner(lambda: calls.append(1), name="t", min_interval=0.01, resync_interval=0.05,
                   ready=ready.is_set).start()
    try:
        r.trigger()
        time.sleep(0.3)
        assert calls == []
        ready.set()
        assert wait_for(lambda: len(calls) >= 1)
    finally:
        r.stop()


def test_failed_sync_is_retried_with_backoff_then_succeeds():
    calls = []

    def fn():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("netlink said no")

    r = SyncRunner(fn, name="t", min_interval=0.01, resync_interval=60,
                   backoff=Backoff(initial=0.1, cap=1)).start()
    try:
        assert wait_for(lambda: r.last_success is not None)
        assert len(calls) == 3 and calls[1] - calls[0] >= 0.05
    finally:
        r.stop()
