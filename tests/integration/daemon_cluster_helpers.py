"""Shared by the daemon's real-cluster tests (test_daemon_cluster.py, test_daemon_acceptance.py).

A cluster of the e2e harness (`e2e/`) with the daemon's RBAC granted; pods as namespaces behind a
bridge in each node, as the CNI plugin would make them; `python3 -m node_daemon` processes, one
per node namespace, each with its own client certificate bound only to the daemon's ClusterRole.
Everything here runs commands in other namespaces through `ip -n` / `nsenter`; the test process
never switches namespaces. Every helper that creates something has a matching cleanup.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

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
def daemon_cluster(name: str, shape: str = "routed", nodes: int = 3):
    """A running harness cluster with the daemon's (and proxy's) ClusterRoles granted to the
    group podwire:daemons; torn down on exit, failing loudly on teardown errors."""
    from e2e import build  # here, so the ping helpers serve tests without the harness too
    from e2e import cluster as cluster_mod

    build.ensure_built()  # as e2e's own fixture: nothing when warm, tens of minutes when cold
    c = cluster_mod.Cluster(name, shape, nodes)
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
    fragmentation-needed from a router on the path (the node, in front of its VXLAN device)."""
    return bool(re.search(rf"message too long, mtu={mtu}\b|Frag needed and DF set \(mtu = {mtu}\)", output))


def routes(node):
    return sh("ip", "-n", node.netns, "route", "show", "proto", "212").stdout


def healthy(node):
    return sh(*nsexec(node.netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                      f"{METRICS}/healthz"), check=False).stdout == "200"


def metrics(node):
    return sh(*nsexec(node.netns, "curl", "-s", f"{METRICS}/metrics")).stdout


# ---- daemons ---------------------------------------------------------------------------------
def start_daemon(cluster, n, conf_dir, log_path, *extra):
    # its own identity, with only the daemon's ClusterRole (as a DaemonSet's account would)
    kubeconfig = cluster.control_plane.kubeconfig_for(
        f"pwd-{n.name}", f"podwire-daemon:{n.name}", orgs=("podwire:daemons",))
    with open(log_path, "a") as log:
        return subprocess.Popen(
            nsexec(n.netns, sys.executable, "-m", "node_daemon", "--node-name", n.name,
                   "--kubeconfig", kubeconfig, "--cni-conf-dir", conf_dir,
                   "--cluster-cidr", "10.244.0.0/16", "--metrics-address", METRICS,
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
