"""proxy.feature's sync function: diff syncs, and a full rewrite now and then."""
import pytest

from proxy.feature import ProxySync


class FakeProxier:
    def __init__(self):
        self.calls, self.ok = [], True

    def request_full_sync(self):
        self.calls.append("full")

    def sync(self):
        self.calls.append("sync")
        return self.ok


def test_a_full_rewrite_only_every_full_every_seconds():
    now = [100.0]
    px = FakeProxier()
    sync = ProxySync(px, 300, clock=lambda: now[0])
    for t in (100.0, 130.0, 399.0):  # the first sync is full by itself; no request needed
        now[0] = t
        sync()
    assert px.calls == ["sync"] * 3
    now[0] = 400.0
    sync()
    assert px.calls[-2:] == ["full", "sync"]
    now[0] = 430.0
    sync()
    assert px.calls[-2:] == ["sync", "sync"]  # not again until 700


def test_a_failed_sync_raises_for_the_runner_to_retry():
    px = FakeProxier()
    px.ok = False
    with pytest.raises(RuntimeError):
        ProxySync(px, 300)()
