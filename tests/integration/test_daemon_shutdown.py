"""SIGTERM ends the daemon on time even when its API calls hang (kubelet's grace period is finite).

The daemon's own joins are bounded (informer 5 s, runner 10 s) and a deadline timer (SHUTDOWN_DEADLINE)
ends the process whatever else blocks: a CI run under load saw a daemon outlive a 20 s wait after a
partition. This guards the property with a fixed bound; it does not isolate which of the two acted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from node_daemon.main import SHUTDOWN_DEADLINE

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Accepts connections and never answers: the daemon's first LIST blocks for as long as it waits.
BLACKHOLE = ("import socket\n"
             "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
             "s.bind(('127.0.0.1', 16443)); s.listen(16); held = []\n"
             "while True:\n"
             "    c, _ = s.accept(); held.append(c); print('accepted', flush=True)\n")


def test_sigterm_exits_on_time_while_the_api_hangs(tmp_path):
    ns = f"pwd-shut-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    procs = []
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:16443'}}]\n"
                              "users: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                              "current-context: x\n")
        hole = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", BLACKHOLE],
                                stdout=subprocess.PIPE, text=True)
        procs.append(hole)
        time.sleep(0.5)
        log = open(tmp_path / "daemon.log", "w")
        daemon = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-m", "node_daemon",
                                   "--node-name", "n1", "--kubeconfig", str(kubeconfig), "--cni-conf-dir",
                                   str(tmp_path / "net.d"), "--metrics-address", "127.0.0.1:19466", "--no-egress"],
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        procs.append(daemon)
        assert hole.stdout.readline().strip() == "accepted"  # the daemon's LIST is now hanging
        time.sleep(1)
        start = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=SHUTDOWN_DEADLINE + 10)
        elapsed = time.monotonic() - start
        text = (tmp_path / "daemon.log").read_text()
        assert code == 0 and "Traceback" not in text, text
        assert elapsed < 10, (elapsed, text)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
