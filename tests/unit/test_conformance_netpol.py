"""The `netpol` suite of e2e/conformance.py: which upstream tests it selects, which it names as
not run here (the SCTP-serving ones: this kernel has no SCTP sockets), and how the summary says so.
Pure: a fixed list of real e2e.test v1.34 names; one test reads the built e2e.test's list when present.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from e2e import build
from e2e import conformance as conf

NP = "[sig-network] Netpol NetworkPolicy between server and client "
SCTP_CTX = ("[sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client "
            "using SCTP ")
UDP_CTX = "[sig-network] Netpol [LinuxOnly] NetworkPolicy between server and client using UDP "
F = " [Feature:NetworkPolicy]"

TCP_TESTS = [
    NP + "should support a 'default-deny-ingress' policy" + F,
    NP + "should enforce policy based on Ports" + F,
    NP + "should allow egress access to server in CIDR block" + F,
    NP + "should not allow access by TCP when a policy specifies only UDP" + F,
]
SCTP_NAMED_OVER_TCP = [  # probe TCP: a plugin without SCTP must still pass them
    NP + "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP" + F,
    NP + "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't "
         "support SCTP" + F,
]
UDP_TESTS = [UDP_CTX + "should support a 'default-deny-ingress' policy" + F,
             UDP_CTX + "should enforce policy based on Ports" + F]
API_TESTS = ["[sig-network] Netpol API should support creating NetworkPolicy API operations",
             "[sig-network] Netpol API should support creating NetworkPolicy API with endport field"]
SCTP_SERVING = [SCTP_CTX + "should support a 'default-deny-ingress' policy" + F,
                SCTP_CTX + "should enforce policy based on Ports" + F]
OTHERS = [  # real names around the suite's that it must leave alone
    "[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp "
    "[NodeConformance] [Conformance]",
    "[sig-network] Services should be rejected when no endpoints exist",
    "[sig-network] Networking should function for pod-Service: sctp [Feature:SCTPConnectivity]",
    "[sig-apps] Deployment deployment should support rollover [Conformance]",
]
ALL = TCP_TESTS + SCTP_SERVING + OTHERS + SCTP_NAMED_OVER_TCP + UDP_TESTS + API_TESTS


def netpol_selection(names):
    focus, skip = conf.SUITES["netpol"]
    return conf.select(names, focus, skip), conf.not_run_here(names, focus, skip, conf.NOT_RUN_HERE["netpol"])


def test_netpol_selects_tcp_udp_api_and_the_sctp_named_tcp_tests_and_nothing_else():
    selected, _ = netpol_selection(ALL)
    assert selected == TCP_TESTS + SCTP_NAMED_OVER_TCP + UDP_TESTS + API_TESTS  # list order kept


def test_netpol_names_each_sctp_serving_test_as_not_run_here_with_the_reason():
    _, not_run = netpol_selection(ALL)
    assert list(not_run) == SCTP_SERVING  # not the sig-network SCTP Service test: outside the suite's focus
    assert all("no SCTP sockets" in why and "CONFIG_IP_SCTP" in why for why in not_run.values())


def test_not_run_here_lists_only_what_the_skip_removed_and_a_reason_names():
    focus, _ = conf.SUITES["netpol"]
    excluded = conf.NOT_RUN_HERE["netpol"]
    assert conf.not_run_here(ALL, focus, "", excluded) == {}  # nothing skipped: all selected, none listed
    user_skip = r"Netpol API|\[Feature:SCTPConnectivity\]"
    assert list(conf.not_run_here(ALL, focus, user_skip, excluded)) == SCTP_SERVING  # API: skipped, no reason


def test_the_netpol_summary_says_which_tests_were_not_run_here_and_why():
    selected, not_run = netpol_selection(ALL)
    res = [conf.Outcome(n, "passed", 30.0) for n in selected]
    md = conf.render_markdown("netpol", {"podwire": "abc"}, res, {}, not_run)
    assert f"(of {len(selected)} selected; 2 not run here)" in md
    for n in SCTP_SERVING:
        assert f"- not run here: `{n}`: {conf.NO_SCTP}" in md
    assert "not run here" not in conf.render_markdown("t", {}, res, {})  # other suites: unchanged


def test_exact_focus_of_the_selection_runs_exactly_it():
    selected, _ = netpol_selection(ALL)
    assert conf.select(ALL, conf.exact_focus(selected)) == selected


@pytest.mark.skipif(not build.binary("e2e.test").exists(), reason="e2e.test not built (python3 -m e2e.build)")
def test_netpol_against_the_built_e2e_test_list():
    """Upstream v1.34.10: 48 connectivity tests (42 TCP incl. the 2 SCTP-named, 3 UDP, 3 SCTP) and 2 API."""
    out = subprocess.run([str(build.binary("e2e.test")), "--list-tests"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    names = conf.parse_list(out)
    selected, not_run = netpol_selection(names)
    assert len(selected) == 47 and len(not_run) == 3
    assert set(SCTP_NAMED_OVER_TCP + TCP_TESTS + UDP_TESTS + API_TESTS) <= set(selected)
    assert set(SCTP_SERVING) <= set(not_run)
    netpol = [n for n in names if re.match(r"\[sig-network\] Netpol", n)]
    assert sorted(selected + list(not_run)) == sorted(netpol)  # every Netpol test: run, or named with a reason
