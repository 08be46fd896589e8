"""policy.feature.BridgeNetfilter in a namespace of the test's own: it switches the bridge's
netfilter calls on, checks again only every RECHECK seconds once they are on (a netlink round
trip per sync delayed every change), and repairs a hand edit at the next check."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.cni_harness import ROOT

pytestmark = [pytest.mark.root]

CHILD = r"""
import json, subprocess
from policy.feature import BridgeNetfilter
now = [0.0]
sw = BridgeNetfilter("pwbr0", clock=lambda: now[0])
def on():
    out = subprocess.run(["ip", "-d", "link", "show", "pwbr0"], capture_output=True, text=True).stdout
    return "nf_call_iptables 1" in out and "nf_call_ip6tables 1" in out
seen = {"before": on()}
sw(); seen["first"] = on()
subprocess.run(["ip", "link", "set", "pwbr0", "type", "bridge", "nf_call_iptables", "0"], check=True)
now[0] = 1.0; sw(); seen["within_recheck"] = on()
now[0] = 1.0 + BridgeNetfilter.RECHECK; sw(); seen["after_recheck"] = on()
print(json.dumps(seen))
"""


def test_the_switch_is_set_then_checked_again_only_every_recheck(netns):
    subprocess.run(["ip", "-n", netns, "link", "add", "pwbr0", "type", "bridge", "nf_call_iptables", "0",
                    "nf_call_ip6tables", "0"], check=True)
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CHILD], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.splitlines()[-1])
    assert seen == {"before": False, "first": True, "within_recheck": False, "after_recheck": True}
