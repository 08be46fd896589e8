"""The daemon itself (`python3 -m node_daemon --proxy`) in a network namespace of this test's own,
as it runs on a node: it serves kube-proxy's metrics address 127.0.0.1:10249 (/healthz,
/proxyMode, /metrics with the daemon's and the proxy's metrics) and sets its namespace's
conntrack timeouts at start. No API server is needed for either: the kubeconfig points at a
closed port, so the informers only retry. The root namespace's sysctls are read, never written."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.cni_harness import ROOT, in_ns, netns_add, netns_del

pytestmark = [pytest.mark.root]

NETFILTER = "/proc/sys/net/netfilter"
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def _curl(ns: str, path: str) -> tuple[int, str]:
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n r = urllib.request.urlopen('http://127.0.0.1:10249' + sys.argv[1], timeout=3)\n"
            " print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n")
    r = in_ns(ns, sys.executable, "-c", code, path, check=False)
    if r.returncode != 0:
        return 0, r.stderr
    status, _, body = r.stdout.partition("\n")
    return int(status), body.rstrip("\n")


def _read(name: str, ns: str | None = None) -> int:
    if ns is None:
        with open(f"{NETFILTER}/{name}") as f:
            return int(f.read())
    return int(in_ns(ns, "cat", f"{NETFILTER}/{name}").stdout)


@pytest.fixture
def daemon(tmp_path):
    ns = netns_add("pwpar")
    proc = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        (tmp_path / "kubeconfig").write_text(KUBECONFIG)
        log = open(tmp_path / "daemon.log", "w")
        proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "node_daemon", "--node-name", "n1",
             "--kubeconfig", str(tmp_path / "kubeconfig"), "--cni-conf-dir", str(tmp_path / "cni"),
             "--cluster-cidr", "10.244.0.0/16", "--no-egress", "--proxy",
             "--metrics-address", "127.0.0.1:19465", "--log-level", "INFO"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=log, stderr=subprocess.STDOUT)
        yield ns, proc, tmp_path / "daemon.log"
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        netns_del(ns)


def test_the_daemon_serves_kube_proxys_metrics_address_and_sets_conntrack(daemon):
    ns, proc, log = daemon
    root_before = {n: _read(n) for n in ("nf_conntrack_tcp_timeout_close_wait",
                                         "nf_conntrack_tcp_timeout_established", "nf_conntrack_max")}
    deadline = time.monotonic() + 30
    while _curl(ns, "/healthz")[0] != 200:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "nothing answers on 127.0.0.1:10249; log: " + log.read_text()[-3000:]
        time.sleep(0.2)
    assert _curl(ns, "/healthz") == (200, "ok")
    assert _curl(ns, "/proxyMode") == (200, "nftables")
    code, body = _curl(ns, "/metrics")
    assert code == 200
    assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds" in body  # the proxy's
    assert "podwire_api_errors_total" in body  # the daemon's own: one shared registry
    assert _read("nf_conntrack_tcp_timeout_close_wait", ns) == 3600
    assert _read("nf_conntrack_tcp_timeout_established", ns) == 86400
    assert "conntrack setting nf_conntrack_tcp_timeout_close_wait: 60 -> 3600" in log.read_text()
    assert {n: _read(n) for n in root_before} == root_before
