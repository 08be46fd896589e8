"""cni_plugin.policy_gate's fallback (the daemon does not answer, the pod's namespace holds no
policy): the plugin adds the pod's addresses to the policy table's `known` sets itself, through
netkit.nftexec, in a namespace of the test's own; without a table it only logs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.cni_harness import ROOT

pytestmark = [pytest.mark.root]

CHILD = r"""
import json, sys
from cni_plugin.policy_gate import _mark_known
logged = []
_mark_known(sys.argv[1:], logged.append)
print(json.dumps(logged))
"""


def _mark(netns: str, *ips: str) -> list[str]:
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CHILD, *ips], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_the_plugin_marks_its_pods_addresses_known_or_logs_why_not(netns):
    assert "no policy table here?" in _mark(netns, "10.244.1.7")[0]  # no table: a log line, no error
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], check=True, text=True, input=(
        "add table inet podwire-policy\nadd set inet podwire-policy known4 { type ipv4_addr; }\n"
        "add set inet podwire-policy known6 { type ipv6_addr; }\n"))
    assert _mark(netns, "10.244.1.7", "fd00::7") == []
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "podwire-policy"],
                         capture_output=True, text=True, check=True).stdout
    assert "10.244.1.7" in out and "fd00::7" in out
