"""podwire on IPv6-only and dual-stack harness clusters (issue 15): full nodes (containerd + kubelet with an
address per family), podwire installed from its image and manifest (its `cluster_cidrs` set to the cluster's
pod ranges, as a user edits it), CoreDNS with a ClusterIP per family. Routed shape, 2 nodes: node1 and
node2 are on different subnets, so pod traffic between them goes over VXLAN (IPv6 outer header when the
underlay is IPv6-only, MTU 1500 - 70).

Checked per family: pod -> pod across nodes (ping, full-size DF packet), a Service's ClusterIP and its DNS
name, a NodePort on each node from the outside host, egress masquerade (the outside host sees the node).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from e2e import images

pytestmark = [pytest.mark.root, pytest.mark.cluster, pytest.mark.slow, pytest.mark.frozen]

WEB = ("mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 8080 -h /w")
# Answers one TCP connection with the peer's address: what the outside host sees as the pod's source.
PEER = ("import socket, sys\n"
        "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('::', 9000)); s.listen(); s.settimeout(20)\n"
        "c, a = s.accept(); c.sendall(a[0].removeprefix('::ffff:').encode()); c.close()\n")


@pytest.fixture(scope="module", params=["ipv6", "dual"])
def cluster(request):
    from e2e.cluster import Cluster
    from e2e.podwire_install import build_image, install

    image = build_image()
    with Cluster(f"i{request.param[0]}{os.getpid() % 10000}", "routed", 2, full_nodes=True,
                 ip_family=request.param) as c:
        install(c, image)
        kubectl(c, "apply", "-f", "-", input=objects())
        kubectl(c, "wait", "--for=condition=Ready", "pod/p1", "pod/p2", "--timeout=120s", timeout=140)
        kubectl(c, "rollout", "status", "deployment/web", "--timeout=120s", timeout=140)
        yield c


def kubectl(c, *args, input=None, timeout=60) -> str:
    r = c.kubectl(*args, check=False, input=input, timeout=timeout)
    assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
    return r.stdout


def objects() -> str:
    pods = "".join(
        f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{n}}}\nspec:\n  nodeName: node{n}\n"
        f"  containers: [{{name: c, image: {images.BUSYBOX}, imagePullPolicy: IfNotPresent, "
        f"command: [sleep, '3600']}}]\n" for n in (1, 2))
    return pods + f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
         labelSelector: {{matchLabels: {{app: web}}}}}}
      containers: [{{name: httpd, image: {images.BUSYBOX}, imagePullPolicy: IfNotPresent,
                    command: [sh, -c, "{WEB}"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  ipFamilyPolicy: PreferDualStack
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def pod_ips(c, name) -> dict[int, str]:
    pod = json.loads(kubectl(c, "get", "pod", name, "-o", "json"))
    return {ipaddress.ip_address(p["ip"]).version: p["ip"] for p in pod["status"]["podIPs"]}


def exec_in(c, pod, script, timeout=30) -> str:
    r = c.kubectl("exec", pod, "--", "sh", "-c", script, check=False, timeout=timeout)
    return r.stdout.strip()


def versions(c) -> list[int]:
    return [6] if c.ip_family == "ipv6" else [4, 6]


def test_pods_have_an_address_per_family_and_reach_across_nodes_at_full_size(cluster):
    p1, p2 = pod_ips(cluster, "p1"), pod_ips(cluster, "p2")
    assert sorted(p1) == sorted(p2) == versions(cluster)
    mtu = int(exec_in(cluster, "p1", "cat /sys/class/net/eth0/mtu"))
    assert mtu == (1430 if cluster.ip_family == "ipv6" else 1450)  # VXLAN over the underlay's primary family
    for v, ip in p2.items():
        payload = mtu - (48 if v == 6 else 28)  # the largest packet that fits: IPv6 40 / IPv4 20 + ICMP 8
        out = exec_in(cluster, "p1", f"ping -c 2 -W 2 {ip} && ping -c 1 -W 2 -s {payload} {ip}")
        assert "0% packet loss" in out and ", 100%" not in out, f"IPv{v} p1 -> p2 {ip}: {out}"


def test_service_clusterip_and_dns_name_in_each_family(cluster):
    svc = json.loads(kubectl(cluster, "get", "service", "web", "-o", "json"))
    ips = {ipaddress.ip_address(ip).version: ip for ip in svc["spec"]["clusterIPs"]}
    assert sorted(ips) == versions(cluster)
    web = {p["metadata"]["name"] for p in json.loads(kubectl(cluster, "get", "pods", "-l", "app=web", "-o",
                                                               "json"))["items"]}
    for v, ip in ips.items():
        seen = {exec_in(cluster, "p1", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80 | tail -1")
                for _ in range(6)}
        assert seen and seen <= web, f"IPv{v} ClusterIP {ip}: {seen}"
    out = exec_in(cluster, "p1", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 web.default.svc.cluster.local 80"
                                 " | tail -1")
    assert out in web, out


def test_nodeport_on_every_node_address_from_outside(cluster):
    port = json.loads(kubectl(cluster, "get", "service", "web", "-o", "json"))["spec"]["ports"][0]["nodePort"]
    web = {p["metadata"]["name"] for p in json.loads(kubectl(cluster, "get", "pods", "-l", "app=web", "-o",
                                                               "json"))["items"]}
    for node in cluster.nodes:
        for ip in node.ips:
            url = f"http://[{ip}]:{port}/" if ip.version == 6 else f"http://{ip}:{port}/"
            r = subprocess.run(cluster.topology.outside.argv(["curl", "-s", "-m", "3", url]),
                               capture_output=True, text=True, timeout=20)
            assert r.stdout.strip() in web, f"{url} via {node.name}: {r.stdout or r.stderr}"


def test_egress_is_masqueraded_to_the_node_in_each_family(cluster):
    outside = cluster.topology.outside
    node1 = cluster.node("node1")
    for ip in outside.ips:
        server = subprocess.Popen(outside.argv([sys.executable, "-c", PEER]), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            seen = ""
            for _ in range(20):  # the listener takes a moment to bind
                seen = exec_in(cluster, "p1", f"nc -w 2 {ip} 9000 </dev/null")
                if seen:
                    break
            assert seen == str(next(a for a in node1.ips if a.version == ip.version)), f"to {ip}: {seen!r}"
        finally:
            server.kill()
            server.wait()
