"""Shared by the NetworkPolicy tests on the harness (test_policy_cluster.py, test_policy_first_packet.py):
pods that are API objects bound to a node and network namespaces attached by the real CNI plugin
(from source) with the daemon's conflist, servers and probes. Everything made here is removed by
Pods.close()."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

from e2e.netbed import nsexec, sh
from tests.integration.cni_harness import daemon_conf
from tests.integration.daemon_cluster_helpers import ROOT, core, daemon_cluster, grant_role, start_daemon

POLICY_RBAC_RULES = [
    {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "watch"]},
]


def cni(command, node, conf_dir, pod_ns, namespace, name, uid, tmp_path, check=True):
    """Run the plugin (from source) on the daemon's conflist, as a runtime would; returns (rc, output)."""
    conf = daemon_conf(os.path.join(conf_dir, "10-podwire.conflist"), tmp_path / node.name, negotiate=False)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": f"c{uid.replace('-', '')[:20]}", "CNI_NETNS": f"/run/netns/{pod_ns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "PYTHONPATH": ROOT,
           "CNI_ARGS": f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID={uid}"}
    p = subprocess.run(nsexec(node.netns, sys.executable, "-P", "-m", "cni_plugin"), input=json.dumps(conf),
                       capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p.returncode, p.stdout


class Pods:
    """API pods + their network namespaces (attached through the plugin); cleans both up."""

    def __init__(self, cluster, tmp_path, tag):
        self.cluster, self.tmp_path, self.tag = cluster, tmp_path, tag
        self.api = core(cluster)
        self.netns: list[str] = []
        self.ips: dict[str, str] = {}

    def create(self, namespace, name, node, labels, ports=()):
        body = {"metadata": {"name": name, "labels": labels},
                "spec": {"nodeName": node.name, "containers": [{
                    "name": "c", "image": "registry.k8s.io/pause:3.10",
                    "ports": [{"containerPort": p, "name": n, "protocol": "TCP"} for n, p in ports]}]}}
        return self.api.create_namespaced_pod(namespace, body).metadata.uid

    def attach(self, namespace, name, node, uid, expect_ok=True):
        ns = f"pwp-{self.tag}-{name}"[:40]
        if ns not in self.netns:
            sh("ip", "netns", "add", ns)
            self.netns.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        rc, out = cni("ADD", node, self.tmp_path / node.name, ns, namespace, name, uid, self.tmp_path,
                      check=expect_ok)
        if rc != 0:
            return ns, None, out
        ip = json.loads(out)["ips"][0]["address"].split("/")[0]
        self.ips[name] = ip
        # kubelet's part: status after the sandbox is up (the other node learns the IP from here)
        self.api.patch_namespaced_pod_status(name, namespace, {"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
        return ns, ip, out

    def close(self):
        for ns in self.netns:
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", ns, check=False)


def serve(ns, *ports):
    return [subprocess.Popen(nsexec(ns, "socat", f"TCP-LISTEN:{p},fork,reuseaddr", f"SYSTEM:echo hi-{p}"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]


def connects(ns, ip, port) -> bool:
    out = sh(*nsexec(ns, "socat", "-T", "1", "-", f"TCP:{ip}:{port},connect-timeout=1"), check=False).stdout
    return out.strip() == f"hi-{port}"


def start_policy_daemons(cluster, tmp_path):
    """One daemon per node with --policy; one host, several nodes: each gets its own socket (a
    DaemonSet uses the node's /run/podwire). Returns {node name: Popen} once every conflist names it."""
    from e2e.netbed import eventually

    procs = {n.name: start_daemon(cluster, n, tmp_path / n.name, tmp_path / f"{n.name}.log", "--policy",
                                  "--policy-socket", str(tmp_path / n.name / "run" / "policy.sock"))
             for n in cluster.nodes}
    for n in cluster.nodes:
        conflist = tmp_path / n.name / "10-podwire.conflist"
        eventually(lambda c=conflist: c.exists() and "run/policy.sock" in c.read_text(), timeout=60,
                   what=f"{n.name} conflist with its own socket")
        eventually(lambda n=n: os.path.exists(tmp_path / n.name / "run" / "policy.sock"), what="gate socket")
    return procs


@contextlib.contextmanager
def policy_cluster(name: str):
    """A 2-node routed harness cluster whose daemons may also watch what NetworkPolicy needs."""
    with daemon_cluster(name, "routed", 2) as c:
        grant_role(c, "podwire-policy", POLICY_RBAC_RULES, "podwire:daemons")
        yield c
