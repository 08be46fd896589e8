"""Shared by the daemon's real-cluster tests (test_daemon_cluster.py, test_daemon_acceptance.py,
test_daemon_ipv6.py, and the proxy's, policy's and LoadBalancer's).

A cluster of the e2e harness (`e2e/`) with the daemon's RBAC granted; pods as namespaces behind a
bridge in each node, as the CNI plugin would make them; `python3 -m node_daemon` processes, one
per node namespace, each with its own client certificate bound only to the daemon's ClusterRole.
Everything here runs commands in other namespaces through `ip -n` / `nsenter`; the test process
never switches namespaces. Every helper that creates something has a matching cleanup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from e2e.netbed import nsexec, sh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METRICS = "127.0.0.1:19465"  # inside each node's namespace

# What the daemon's DaemonSet needs (manifests/ should grant exactly this; nodes may not list
# other Nodes with their own system:node credentials since the Node authorizer's selectors).
RBAC_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
]
# ... and what the proxy adds when it runs inside the daemon
PROXY_RBAC_RULES = [
    {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
]


@contextlib.contextmanager
def daemon_cluster(name: str, shape: str = "routed", nodes: int = 3, ip_family: str = "ipv4"):
    """A running harness cluster (underlay, Nodes and ranges in `ip_family`: ipv4, ipv6, dual) with
    the daemon's (and proxy's) ClusterRoles granted to the group podwire:daemons; torn down on
    exit, failing loudly on teardown errors."""
    from e2e import build  # here, so the ping helpers serve tests without the harness too
    from e2e import cluster as cluster_mod

    build.ensure_built()  # as e2e's own fixture: nothing when warm, tens of minutes when cold
    c = cluster_mod.Cluster(name, shape, nodes, ip_family=ip_family)
    c.up()
    try:
        grant_role(c, "podwire-daemon", RBAC_RULES, "podwire:daemons")
        grant_role(c, "podwire-proxy", PROXY_RBAC_RULES, "podwire:daemons")
        yield c
    finally:
        errors = c.down()
        if errors:
            raise AssertionError("cluster teardown: " + "; ".join(errors))


def core(c):
    from kubernetes import client

    return client.CoreV1Api(c.api_client())


def grant_role(c, name, rules, group):
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(c.api_client())
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
    rbac.create_cluster_role_binding({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "Group", "name": group, "apiGroup": "rbac.authorization.k8s.io"}]})


# ---- pods ------------------------------------------------------------------------------------
def pod_in(node, tag, index=10, mtu=None, prefix="pwd"):
    """A pod namespace `<prefix>-<tag>-<node>` behind the node's podwire0 bridge, with `mtu` on
    both veth ends (default: the kernel's 1500); returns (netns, IP). Remove with del_pods."""
    cidr = node.pod_cidr
    gw, ip = cidr.network_address + 1, cidr.network_address + index
    ns = f"{prefix}-{tag}-{node.name}"
    sh("ip", "netns", "add", ns)
    if sh("ip", "-n", node.netns, "link", "show", "podwire0", check=False).returncode != 0:
        sh("ip", "-n", node.netns, "link", "add", "podwire0", "type", "bridge")
        sh("ip", "-n", node.netns, "link", "set", "podwire0", "up")
    sh("ip", "-n", node.netns, "addr", "replace", f"{gw}/{cidr.prefixlen}", "dev", "podwire0")
    mtu_args = ["mtu", mtu] if mtu else []
    sh("ip", "-n", node.netns, "link", "add", f"v{tag}", *mtu_args, "type", "veth",
       "peer", "name", "eth0", *mtu_args, "netns", ns)
    sh("ip", "-n", node.netns, "link", "set", f"v{tag}", "master", "podwire0", "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "addr", "add", f"{ip}/{cidr.prefixlen}", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", str(gw))
    return ns, str(ip)


def del_pods(*namespaces):
    for ns in namespaces:
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            sh("kill", "-9", pid, check=False)  # only what a test started in its own pod
        sh("ip", "netns", "del", ns, check=False)


def ping(ns, ip):
    return sh(*nsexec(ns, "ping", "-c", "1", "-W", "1", ip), check=False).returncode == 0


def ping_df(ns, ip, payload):
    """One ping with Don't Fragment and `payload` bytes; returns (ok, ping's output)."""
    p = sh(*nsexec(ns, "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", payload, ip), check=False)
    return p.returncode == 0, p.stdout + p.stderr


def too_big(output: str, mtu: int) -> bool:
    """ping's report that a DF packet exceeded `mtu`: locally (the pod's own link) or an ICMP
    fragmentation-needed from a router on the path (the node, in front of its VXLAN device); IPv6's
    ping says the same as "mtu: N" and "Packet too big: mtu=N"."""
    return bool(re.search(rf"message too long, mtu(=|: ){mtu}\b|Frag needed and DF set \(mtu = {mtu}\)"
                          rf"|Packet too big: mtu={mtu}\b", output))


def routes(node, version: int = 4):
    """The daemon's routes (its route protocol) of one IP family."""
    return sh("ip", "-n", node.netns, f"-{version}", "route", "show", "proto", "212").stdout


def healthy(node):
    return sh(*nsexec(node.netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                      f"{METRICS}/healthz"), check=False).stdout == "200"


def metrics(node):
    return sh(*nsexec(node.netns, "curl", "-s", f"{METRICS}/metrics")).stdout


# ---- daemons ---------------------------------------------------------------------------------
def cluster_cidr_args(cluster) -> list[str]:
    """`--cluster-cidr` for each of the cluster's pod ranges (the controller-manager's, every family)."""
    return [arg for cidr in cluster.control_plane.config.cluster_cidrs for arg in ("--cluster-cidr", str(cidr))]


def start_daemon(cluster, n, conf_dir, log_path, *extra):
    # its own identity, with only the daemon's ClusterRole (as a DaemonSet's account would)
    kubeconfig = cluster.control_plane.kubeconfig_for(
        f"pwd-{n.name}", f"podwire-daemon:{n.name}", orgs=("podwire:daemons",))
    with open(log_path, "a") as log:
        return subprocess.Popen(
            nsexec(n.netns, sys.executable, "-m", "node_daemon", "--node-name", n.name,
                   "--kubeconfig", kubeconfig, "--cni-conf-dir", conf_dir,
                   *cluster_cidr_args(cluster), "--metrics-address", METRICS,
                   "--resync-interval", "10", *extra),
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def start_daemons(cluster, tmp_path, *extra):
    return {n.name: start_daemon(cluster, n, tmp_path / n.name, tmp_path / f"{n.name}.log", *extra)
            for n in cluster.nodes}


def kill_leftovers(procs):
    """Daemons a failed test did not stop (only the ones this test started, by their Popen)."""
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()


def stop_daemons(procs, tmp_path):
    """SIGTERM, then assert a clean exit (code 0, no traceback in the log)."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for name, p in procs.items():
        try:
            code = p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            # the daemon's own deadline is 8 s: dump every thread's stack into its log (faulthandler on
            # SIGUSR1) so a shutdown that hangs says where
            p.send_signal(signal.SIGUSR1)
            time.sleep(1)
            p.kill()
            p.wait()
            code = "killed after 20 s (stacks at the end of the log)"
        log = (tmp_path / f"{name}.log").read_text()
        assert code == 0 and "Traceback" not in log, f"{name}: exit {code}\n{log}"


# ---- traffic and overlay state --------------------------------------------------------------
SERVER = r"""
import hashlib, json, socket, struct, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], int(sys.argv[1])))  # the server's own address: either family
s.listen(1)
print("listening", flush=True)
c, peer = s.accept()
h, n = hashlib.sha256(), 0
while chunk := c.recv(1 << 20):
    h.update(chunk)
    n += len(chunk)
# tcpi_rcv_mss: the largest segment seen from the peer (capped by our own advertised MSS)
rcv_mss = struct.unpack_from("8xIIII", c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104))[3]
c.close()
print(json.dumps({"peer": peer[0], "bytes": n, "sha256": h.hexdigest(), "rcv_mss": rcv_mss}), flush=True)
"""

CLIENT = r"""
import json, socket, struct, sys, time
data = open(sys.argv[3], "rb").read()
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
t = time.monotonic()
c.sendall(data)
c.shutdown(socket.SHUT_WR)
snd_mss = struct.unpack_from("8xIIII", c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104))[2]
c.recv(1)  # returns at the server's close, i.e. once it has read everything
print(json.dumps({"seconds": time.monotonic() - t, "snd_mss": snd_mss}))
"""


def transfer(client_ns, server_ns, server_ip, payload: Path, port=5001) -> tuple[dict, dict, str]:
    """Send `payload` over one TCP connection pod -> pod; returns (server's view, client's view,
    the payload's SHA-256). The server reports the peer address it saw and what it received."""
    server = subprocess.Popen(nsexec(server_ns, sys.executable, "-c", SERVER, port, server_ip),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        client = sh(*nsexec(client_ns, sys.executable, "-c", CLIENT, server_ip, port, payload), timeout=180)
        out, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    return json.loads(out.strip().splitlines()[-1]), json.loads(client.stdout), digest


def fdb(node):
    return sh("bridge", "-n", node.netns, "fdb", "show", "dev", "podwire.vxlan").stdout


def neighbours(node):
    return sh("ip", "-n", node.netns, "neigh", "show", "dev", "podwire.vxlan").stdout


def delete_nodes(api, *names):
    from kubernetes.client.exceptions import ApiException

    for name in names:
        try:
            api.delete_node(name)
        except ApiException as e:
            if e.status != 404:
                raise


class Pinger:
    """Pings `ip` from pod `ns` every 50 ms until stop(), in back-to-back runs of
    `ping -c 20`: each run waits for its last reply, so stopping never counts a packet that
    is still in flight as lost (SIGINT to one long ping would)."""

    def __init__(self, ns, ip):
        self.ns, self.ip = ns, ip
        self.sent = self.received = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            p = subprocess.run(nsexec(self.ns, "ping", "-n", "-q", "-c", "20", "-i", "0.05", "-W", "2", self.ip),
                               capture_output=True, text=True, timeout=120)
            m = re.search(r"(\d+) packets transmitted, (\d+) received", p.stdout)
            if m is None:
                self.failures.append(p.stdout + p.stderr)
                time.sleep(0.05)
                continue
            self.sent += int(m[1])
            self.received += int(m[2])

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join(150)
        return self.sent, self.received


def stop_pingers(pingers) -> dict:
    results = {f"{p.ns}->{p.ip}": (*p.stop(), p.failures) for p in pingers}
    return results


def assert_no_loss(results):
    for what, (sent, received, failures) in results.items():
        assert not failures and sent > 0 and received == sent, f"{what}: {received}/{sent} {failures}"
