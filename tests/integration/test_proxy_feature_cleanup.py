"""Switched-off features leave no nft table behind (issue 12): the daemon's start, in a namespace
we make, deletes the proxy's, egress masquerade's and policy's tables an earlier run left, and only those."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.cni_harness import ROOT

pytestmark = [pytest.mark.root]

# What the daemon does at start with this config (node_daemon.main -> start_features), run inside
# the namespace as the daemon runs inside its node's.
START = r"""
import ipaddress, logging, sys
logging.basicConfig(level=logging.INFO)
from node_daemon.config import Config
from node_daemon.features import Host, start_features
cfg = Config("node-a", egress="egress" in sys.argv[1:], cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
assert start_features(Host(cfg, None, None, None, lambda *a: None)) == []  # proxy and policy are off
"""

LEFTOVERS = """\
add table ip podwire-proxy
add chain ip podwire-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add rule ip podwire-proxy nat-prerouting ip daddr 10.96.0.10 tcp dport 80 dnat to 10.244.1.5:8080
add table ip6 podwire-proxy
add chain ip6 podwire-proxy services
add table ip podwire-egress
add chain ip podwire-egress postrouting { type nat hook postrouting priority srcnat ; }
add rule ip podwire-egress postrouting masquerade
add table ip6 podwire-egress
add table inet podwire-policy
add chain inet podwire-policy forward { type filter hook forward priority 0 ; }
add rule inet podwire-policy forward counter drop
add table ip someone-else
add chain ip someone-else c
"""




def tables(ns: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], check=True,
                         capture_output=True, text=True).stdout
    return {ln.removeprefix("table ").strip() for ln in out.splitlines() if ln.strip()}


def daemon_start(ns: str, *switched_on: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", START, *switched_on], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_a_start_with_proxy_and_egress_off_deletes_their_tables_and_nothing_else(netns):
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=LEFTOVERS, text=True, check=True)
    assert {"ip podwire-proxy", "ip6 podwire-proxy", "ip podwire-egress", "ip6 podwire-egress",
            "inet podwire-policy"} <= tables(netns)
    log = daemon_start(netns)
    assert tables(netns) == {"ip someone-else"}
    assert "service proxy is off: its leftovers are removed" in log
    assert "egress masquerade is off: its leftovers are removed" in log
    assert "network policy is off: its leftovers are removed" in log
    log = daemon_start(netns)  # nothing left to delete: still no error
    assert "failed" not in log and tables(netns) == {"ip someone-else"}


def test_a_feature_that_is_on_keeps_its_table(netns):
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=LEFTOVERS, text=True, check=True)
    daemon_start(netns, "egress")  # egress on (with a cluster CIDR), proxy off
    assert tables(netns) == {"ip someone-else", "ip podwire-egress", "ip6 podwire-egress"}
