"""The conntrack sysctls kube-proxy manages, set by the proxy's own code in a network namespace
this test creates, read back there. The code runs in a short-lived child entering that namespace
(as the daemon runs in its node's); the root namespace's values are read before and after, never
written. nf_conntrack_max (host-global) is never asked for here."""
from __future__ import annotations

import json
import os
import sys

import pytest

from tests.integration.cni_harness import ROOT, in_ns, netns_add, netns_del

pytestmark = [pytest.mark.root]

NETFILTER = "/proc/sys/net/netfilter"
NAMES = ("nf_conntrack_tcp_timeout_close_wait", "nf_conntrack_tcp_timeout_established", "nf_conntrack_max")

# What proxy.feature.start does first, configured from the daemon's own flags.
CHILD = """
import json, sys
from node_daemon.config import parse_args
from proxy.conntrack_settings import ConntrackSettings, ConntrackSysctls
s = ConntrackSysctls(ConntrackSettings.from_config(parse_args(["--node-name", "n1", *sys.argv[1:]])))
done = s.ensure()
print(json.dumps({"done": done, "outcomes": [[o.name, o.before, o.after, o.error] for o in s.outcomes]}))
"""


def _root_values() -> dict:
    values = {}
    for n in NAMES:
        with open(f"{NETFILTER}/{n}") as f:
            values[n] = int(f.read())
    return values


def _ns_values(ns: str) -> dict:
    out = in_ns(ns, "cat", *(f"{NETFILTER}/{n}" for n in NAMES)).stdout.split()
    return dict(zip(NAMES, map(int, out), strict=True))


def _run(ns: str, *flags: str) -> dict:
    r = in_ns(ns, sys.executable, "-c", CHILD, *flags, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    return json.loads(r.stdout)


@pytest.fixture
def ns():
    name = netns_add("pwpar")
    try:
        if in_ns(name, "test", "-e", f"{NETFILTER}/{NAMES[0]}", check=False).returncode != 0:
            pytest.skip("nf_conntrack is not loaded on this host (tests load no modules)")
        yield name
    finally:
        netns_del(name)


def test_kube_proxy_defaults_land_in_the_namespace_only(ns):
    root_before = _root_values()
    fresh = _ns_values(ns)
    assert fresh["nf_conntrack_tcp_timeout_close_wait"] == 60  # the kernel's default, before
    res = _run(ns)
    assert res["done"] is True and all(err == "" for *_, err in res["outcomes"])
    got = _ns_values(ns)
    assert got["nf_conntrack_tcp_timeout_close_wait"] == 3600
    assert got["nf_conntrack_tcp_timeout_established"] == 86400
    assert got["nf_conntrack_max"] == fresh["nf_conntrack_max"]  # host-global: not asked for, not touched
    assert _root_values() == root_before
    # run twice: nothing left to write
    again = _run(ns)
    assert [(name, before) for name, before, after, _ in again["outcomes"] if before != after] == []


def test_flags_set_other_values_and_zero_leaves_one_alone(ns):
    root_before = _root_values()
    fresh = _ns_values(ns)
    _run(ns, "--conntrack-tcp-timeout-close-wait", "1800", "--conntrack-tcp-timeout-established", "0")
    got = _ns_values(ns)
    assert got["nf_conntrack_tcp_timeout_close_wait"] == 1800
    assert got["nf_conntrack_tcp_timeout_established"] == fresh["nf_conntrack_tcp_timeout_established"]
    assert _root_values() == root_before


def test_a_read_only_proc_sys_is_reported_and_not_fatal(ns):
    """As in the unprivileged DaemonSet container: runtimes mount /proc/sys read-only. The child
    gets its own mount namespace (unshare -m: private propagation) where /proc/sys is a read-only
    bind; nothing outside it changes."""
    fresh = _ns_values(ns)
    script = 'mount --bind -o ro /proc/sys /proc/sys && exec "$0" "$@"'
    r = in_ns(ns, "unshare", "-m", "sh", "-c", script, sys.executable, "-c", CHILD, cwd=ROOT,
              env={**os.environ, "PYTHONPATH": ROOT})
    res = json.loads(r.stdout)
    assert res["done"] is True  # given up on, not retried after every sync
    assert [err.rsplit(": ", 1)[-1] for *_, err in res["outcomes"]] == ["/proc/sys is mounted read-only here"] * 2
    assert _ns_values(ns) == fresh
