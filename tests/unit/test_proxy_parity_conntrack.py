"""The conntrack sysctls kube-proxy manages: the values (pure), and the writer over a directory
laid out as /proc/sys/net/netfilter (a temporary one: no test here touches a real sysctl; the
kernel's own files are exercised in a namespace of its own by
tests/integration/test_proxy_parity_conntrack.py)."""
from __future__ import annotations

import logging

from proxy.conntrack_settings import (
    CLOSE_WAIT,
    ESTABLISHED,
    MAX,
    ConntrackSettings,
    ConntrackSysctls,
    apply,
    conntrack_max,
    desired,
)
from proxy.feature import ProxySync


def test_kube_proxy_defaults_set_the_two_per_namespace_timeouts_only():
    assert desired(ConntrackSettings(), cpus=2) == {CLOSE_WAIT: 3600, ESTABLISHED: 86400}


def test_zero_leaves_a_setting_as_it_is():
    assert desired(ConntrackSettings(tcp_close_wait=0, tcp_established=0), cpus=2) == {}


def test_conntrack_max_is_per_core_with_a_floor():
    assert conntrack_max(32768, 131072, 2) == 131072  # 65536 < the floor
    assert conntrack_max(32768, 131072, 8) == 262144
    assert conntrack_max(0, 131072, 64) == 0  # off
    assert conntrack_max(2**24, 0, 1024) == 2**31 - 1  # never past the kernel's int
    assert desired(ConntrackSettings(max_per_core=32768), cpus=16)[MAX] == 524288


def _dir(tmp_path, **values):
    for name, v in values.items():
        (tmp_path / name).write_text(f"{v}\n")
    return str(tmp_path)


def test_apply_writes_what_differs_and_reports_each(tmp_path):
    root = _dir(tmp_path, **{CLOSE_WAIT: 60, ESTABLISHED: 86400})
    out = {o.name: o for o in apply({CLOSE_WAIT: 3600, ESTABLISHED: 86400}, root)}
    assert (out[CLOSE_WAIT].before, out[CLOSE_WAIT].after, out[CLOSE_WAIT].error) == (60, 3600, "")
    assert (out[ESTABLISHED].before, out[ESTABLISHED].after) == (86400, 86400)
    assert (tmp_path / CLOSE_WAIT).read_text() == "3600\n"


def test_apply_never_raises_on_odd_files(tmp_path):
    (tmp_path / CLOSE_WAIT).mkdir()  # unreadable as a number
    (tmp_path / ESTABLISHED).write_text("garbage\n")
    out = apply({CLOSE_WAIT: 3600, ESTABLISHED: 86400, MAX: 131072}, str(tmp_path))
    assert [o.error.split(":")[0] for o in out] == [
        f"cannot read {tmp_path}/{CLOSE_WAIT}", f"cannot read {tmp_path}/{ESTABLISHED}",
        "nf_conntrack is not loaded yet (no such sysctl)"]
    assert [o.missing for o in out] == [False, False, True]


def test_sysctls_wait_for_nf_conntrack_then_stop_trying(tmp_path, caplog):
    s = ConntrackSysctls(ConntrackSettings(), cpus=2, root=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="proxy.conntrack_settings"):
        assert s.ensure() is False  # no sysctl files yet: the module loads with the first ruleset
        _dir(tmp_path, **{CLOSE_WAIT: 60, ESTABLISHED: 432000})
        assert s.ensure() is True
    assert (tmp_path / CLOSE_WAIT).read_text() == "3600\n" and (tmp_path / ESTABLISHED).read_text() == "86400\n"
    assert f"conntrack setting {CLOSE_WAIT}: 60 -> 3600" in caplog.text
    (tmp_path / CLOSE_WAIT).write_text("60\n")
    assert s.ensure() is True and (tmp_path / CLOSE_WAIT).read_text() == "60\n"  # done: never again


class FakeProxier:
    def request_full_sync(self):
        pass

    def sync(self):
        return True


def test_proxy_sync_retries_the_sysctls_until_they_are_set():
    calls = []

    def after():
        calls.append(1)
        return len(calls) == 2
    sync = ProxySync(FakeProxier(), 300, after_sync=after)
    for _ in range(4):
        sync()
    assert len(calls) == 2
