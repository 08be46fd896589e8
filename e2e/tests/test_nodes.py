"""Full nodes: containerd + kubelet per node namespace, pods wired by podwire's frozen CNI plugin.

The module brings up its own 3-node cluster (name k<pid>) with full nodes and installs
podwire's CNI on each node directly (a symlink to a copy of dist/podwire and the conflist
node_daemon/cniconf.py renders, for the node's podCIDR) — podwire's DaemonSet does that in
a later issue. No node daemon runs: these tests need same-node traffic only (cross-node pod
routes are the daemon's job). The last test tears the cluster down and checks that nothing
is left (namespaces, processes, mounts, cgroups, files).
"""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest

from e2e import cgroups, coredns, host_sysctls, images
from e2e import netns as ns
from e2e.cluster import Cluster
from e2e.node_runtime import CLUSTER_DNS, KUBELET_SYSCTLS, install_podwire_cni, node_ready

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow, pytest.mark.frozen]

NAMESPACE = "nodes-test"
UP_TIMES: dict[str, float] = {}
BEFORE_CNI: dict[str, object] = {}  # node -> its Ready condition before a CNI config existed
SYSCTLS_BEFORE: dict[str, str] = {}  # the machine's host-global sysctls before the cluster came up


def wait(fn, timeout=60.0, what="condition", interval=0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def full(k8s_bin, podwire_dist):
    Cluster.sweep_abandoned()
    c = Cluster(f"kn{os.getpid() % 100000}", "l2", 3, bin_dir=k8s_bin, full_nodes=True,
                owner=ns.this_process("pytest"))
    SYSCTLS_BEFORE.update(host_sysctls.snapshot())
    started = time.monotonic()
    c.up()
    try:
        UP_TIMES["registered"] = time.monotonic() - started
        core = core_api(c)
        BEFORE_CNI.update({n.name: ready_condition(core.read_node(n.name)) for n in c.nodes})
        install_podwire_cni(c, podwire_dist)
        wait(lambda: all(node_ready(core.read_node(n.name)) for n in c.nodes), 90, "nodes Ready")
        UP_TIMES["ready"] = time.monotonic() - started
        print(f"\nfull cluster: registered in {UP_TIMES['registered']:.1f}s, Ready in {UP_TIMES['ready']:.1f}s")
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        wait(lambda: core.list_namespaced_service_account(NAMESPACE, field_selector="metadata.name=default").items,
             30, "default ServiceAccount")
        yield c
    finally:
        c.down()


def ready_condition(node_obj):
    return next((c for c in node_obj.status.conditions or [] if c.type == "Ready"), None)


def core_api(c):
    from kubernetes import client

    return client.CoreV1Api(c.api_client())


def run_pod(c, name: str, node: str, command: list[str], namespace: str = NAMESPACE, image: str = images.BUSYBOX):
    core = core_api(c)
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": image, "command": command}]},
    })
    return wait_running(c, name, namespace)


def wait_running(c, name, namespace=NAMESPACE, timeout=90):
    core = core_api(c)

    def running():
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == "Running" and pod.status.pod_ip else None

    try:
        return wait(running, timeout, f"pod {namespace}/{name} Running")
    except AssertionError:
        events = c.kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}",
                           check=False).stdout
        raise AssertionError(f"pod {name} not Running:\n{events}") from None


def exec_(c, pod, *argv, namespace=NAMESPACE, check=True):
    return c.kubectl("exec", "-n", namespace, pod, "--", *argv, check=check)


# -- the tests --------------------------------------------------------------------------------


def test_three_nodes_register_and_become_ready(full):
    # registered by their kubelets, but NotReady until the CNI config was written
    for node in full.nodes:
        cond = BEFORE_CNI[node.name]
        assert cond.status == "False" and "NetworkPluginNotReady" in cond.message, cond
    core = core_api(full)
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert sorted(nodes) == ["node1", "node2", "node3"]
    for node in full.nodes:
        obj = nodes[node.name]
        assert node_ready(obj)
        assert obj.status.node_info.kubelet_version == "v1.34.10"
        assert obj.status.node_info.container_runtime_version == "containerd://2.2.1"
        internal = [a.address for a in obj.status.addresses if a.type == "InternalIP"]
        assert internal == [str(node.ip)]
        assert ipaddress.ip_network(obj.spec.pod_cidr) == node.pod_cidr
    assert len({n.pod_cidr for n in full.nodes}) == 3


def test_kubelets_leave_the_machines_kernel_settings_as_found(full):
    """Issue 10 item 9: kubelets set vm.overcommit_memory=1, kernel.panic=10 and
    kernel.panic_on_oops=1 on the whole machine. With three Ready kubelets running, every
    host-global sysctl is as before; inside each node kubelet saw the values it wants."""
    now = host_sysctls.snapshot()
    print(f"\nhost sysctls before: {host_sysctls.kubelet_view(SYSCTLS_BEFORE)}"
          f"\n  with 3 kubelets Ready: {host_sysctls.kubelet_view(now)}")
    assert host_sysctls.changed(SYSCTLS_BEFORE, now) == {}
    for rt in full.runtimes.values():
        # kubelet's view: files of the node over those entries (whatever the host's values are)
        assert rt.proc_sys_mounts() == {f"/proc/sys/{k}" for k in KUBELET_SYSCTLS}, rt.node.name
        inside = rt.run(["cat", *(f"/proc/sys/{k}" for k in KUBELET_SYSCTLS)]).stdout.split()
        assert [int(v) for v in inside] == list(KUBELET_SYSCTLS.values()), rt.node.name


def test_a_pod_on_each_node_gets_an_address_from_its_pod_cidr(full):
    for node in full.nodes:
        pod = run_pod(full, f"sleeper-{node.name}", node.name, ["sleep", "3600"])
        assert pod.spec.node_name == node.name
        assert ipaddress.ip_address(pod.status.pod_ip) in node.pod_cidr
        # it was podwire that wired it: its log (in the node's directory) has the ADD
        log = (node.dir / "logs" / "podwire-cni.log").read_text()
        assert f"-> {pod.status.pod_ip}/{node.pod_cidr.prefixlen}" in log
        # and the node can reach its pod directly over the bridge
        assert node.ping(pod.status.pod_ip)


def test_kubectl_exec_and_logs_reach_the_kubelet(full):
    run_pod(full, "talker", "node2", ["sh", "-c", "echo hello-from-talker; exec sleep 3600"])
    assert exec_(full, "talker", "hostname").stdout.strip() == "talker"
    assert "eth0" in exec_(full, "talker", "ip", "-o", "addr", "show", "eth0").stdout
    logs = wait(lambda: full.kubectl("logs", "-n", NAMESPACE, "talker").stdout, 20, "logs")
    assert logs.strip() == "hello-from-talker"


def test_service_account_token_and_secret_volumes_are_populated(full):
    core = core_api(full)
    core.create_namespaced_secret(NAMESPACE, {"metadata": {"name": "sekrit"}, "stringData": {"word": "swordfish"}})
    core.create_namespaced_pod(NAMESPACE, {
        "metadata": {"name": "tokens"},
        "spec": {"nodeName": "node3", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": images.BUSYBOX, "command": ["sleep", "3600"],
                                 "volumeMounts": [{"name": "s", "mountPath": "/sekrit"}]}],
                 "volumes": [{"name": "s", "secret": {"secretName": "sekrit"}}]},
    })
    wait_running(full, "tokens")
    assert exec_(full, "tokens", "cat", "/sekrit/word").stdout == "swordfish"
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    token = exec_(full, "tokens", "cat", f"{sa}/token").stdout
    assert token.count(".") == 2 and len(token) > 100  # a JWT
    assert exec_(full, "tokens", "cat", f"{sa}/namespace").stdout == NAMESPACE
    ca = exec_(full, "tokens", "cat", f"{sa}/ca.crt").stdout
    assert ca.strip() == full.control_plane.pki.path("ca.crt").read_text().strip()
    # the token is the API server's: a TokenReview accepts it
    from kubernetes import client

    review = client.AuthenticationV1Api(full.api_client()).create_token_review({"spec": {"token": token}})
    assert review.status.authenticated
    assert review.status.user.username == f"system:serviceaccount:{NAMESPACE}:default"


def test_two_pods_on_one_node_reach_each_other(full):
    server = run_pod(full, "server", "node1",
                     ["sh", "-c", "while true; do echo hello-from-server | nc -l -p 8080; done"])
    client_pod = run_pod(full, "client", "node1", ["sleep", "3600"])
    assert ipaddress.ip_address(server.status.pod_ip) in full.node("node1").pod_cidr
    assert exec_(full, "client", "ping", "-c", "1", "-W", "2", server.status.pod_ip).returncode == 0
    reply = wait(lambda: exec_(full, "client", "nc", "-w", "3", server.status.pod_ip, "8080",
                               check=False).stdout.strip(), 20, "TCP reply")
    assert reply == "hello-from-server"
    assert client_pod.status.pod_ip != server.status.pod_ip


def test_import_image_loads_a_tarball_into_every_node(full, tmp_path):
    """What `kind load` does, for podwire's own image later: any OCI tarball, any name."""
    name = "example.test/podwire-e2e/marker:1"
    rootfs = images.busybox_rootfs({"marker": (b"loaded\n", 0o644)})
    tarball = images.write_image(tmp_path / "marker.tar", name, images.oci.layer_tar(rootfs),
                                 {"Cmd": ["/bin/sleep", "3600"]})
    full.import_image(tarball)
    for node in ("node1", "node2"):
        run_pod(full, f"marker-{node}", node, ["sleep", "3600"], image=name)
        assert exec_(full, f"marker-{node}", "cat", "/marker").stdout == "loaded\n"
    assert name in full.runtimes["node3"].ctr("images", "ls", "-q").stdout.split()


def test_hostpath_installs_land_on_their_node_only(full):
    """What podwire's DaemonSet will do: a hostNetwork pod writes into hostPath /opt/cni/bin,
    /etc/cni/net.d and /var/lib/cni. Each node has its own (its mount namespace); the host's
    files are untouched. The node's hostname (its UTS namespace) is the node's name."""
    core = core_api(full)
    paths = {"cni-bin": "/opt/cni/bin", "cni-conf": "/etc/cni/net.d", "var-lib-cni": "/var/lib/cni"}
    core.create_namespaced_pod(NAMESPACE, {
        "metadata": {"name": "installer"},
        "spec": {"nodeName": "node3", "terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
                 "hostNetwork": True,
                 "containers": [{"name": "main", "image": images.BUSYBOX, "command": [
                     "sh", "-c", "h=$(hostname); for d in /host/*; do echo $h > $d/pwe-marker; done"],
                                 "volumeMounts": [{"name": k, "mountPath": f"/host/{k}"} for k in paths]}],
                 "volumes": [{"name": k, "hostPath": {"path": v, "type": "DirectoryOrCreate"}}
                             for k, v in paths.items()]},
    })
    wait(lambda: core.read_namespaced_pod("installer", NAMESPACE).status.phase == "Succeeded", 60, "installer done")
    rt3, rt1 = full.runtimes["node3"], full.runtimes["node1"]
    assert (rt3.cni_bin_dir / "pwe-marker").read_text() == "node3\n"
    assert (rt3.cni_conf_dir / "pwe-marker").read_text() == "node3\n"
    assert (rt3.tree_upper("/var/lib") / "cni" / "pwe-marker").read_text() == "node3\n"
    assert not (rt1.cni_conf_dir / "pwe-marker").exists()
    assert not Path("/var/lib/cni/pwe-marker").exists() and not Path("/etc/cni/net.d/pwe-marker").exists()
    # inside node3 (its mount namespace) the files are where the pod put them
    assert rt3.run(["cat", "/etc/cni/net.d/pwe-marker"]).stdout == "node3\n"
    for d in (rt3.cni_bin_dir, rt3.cni_conf_dir):
        (d / "pwe-marker").unlink()


def test_coredns_runs_and_answers(full):
    """CoreDNS pods run and answer on their pod IPs; with a Service proxy (kube-proxy here,
    the anchor; podwire's own proxy later) they sync with the API server and resolve Services
    through the kube-dns ClusterIP."""
    coredns.deploy(full)
    core = core_api(full)

    def dns_pods():
        pods = core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-dns").items
        running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        return running if len(running) == 2 else None

    pods = wait(dns_pods, 90, "2 CoreDNS pods Running")
    assert core.read_namespaced_service("kube-dns", "kube-system").spec.cluster_ip == str(CLUSTER_DNS)
    dns = pods[0]
    node = dns.spec.node_name
    run_pod(full, f"dig-{node}", node, ["sleep", "3600"])
    query = ["nslookup", "-type=A", "kubernetes.default.svc.cluster.local"]  # busybox ignores `search`

    # No Service proxy yet: the pod answers on its IP (once CoreDNS gave up waiting for the
    # API, ~5 s), but its `kubernetes` plugin cannot reach the API server (10.96.0.1 leads
    # nowhere), so the answer is SERVFAIL.
    def answer():
        r = exec_(full, f"dig-{node}", *query, dns.status.pod_ip, check=False)
        return r.stdout + r.stderr if f"Server:\t\t{dns.status.pod_ip}" in r.stdout else None

    out = wait(answer, 30, "an answer from CoreDNS's pod IP")
    assert "SERVFAIL" in out, out

    for rt in full.runtimes.values():
        rt.start_kube_proxy()

    def resolves(*argv):
        out = exec_(full, f"dig-{node}", *argv, check=False).stdout
        return out if "Address: 10.96.0.1\n" in out else None

    wait(lambda: resolves(*query, dns.status.pod_ip), 90, "CoreDNS to resolve kubernetes.default on its pod IP")
    # and through the kube-dns Service. Only same-node traffic works without podwire's node
    # daemon (cross-node pod routes), so the Service keeps to node-local endpoints here.
    core.patch_namespaced_service("kube-dns", "kube-system", {"spec": {"internalTrafficPolicy": "Local"}})
    out = wait(lambda: resolves(*query), 60, "a lookup through the kube-dns Service")
    assert f"Server:\t\t{CLUSTER_DNS}" in out
    # synced, so /ready turned true and the pods are Ready
    ready = lambda p: any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])  # noqa: E731
    wait(lambda: all(ready(core.read_namespaced_pod(p.metadata.name, "kube-system")) for p in pods), 30,
         "CoreDNS pods Ready")


def test_teardown_leaves_nothing(full):
    """Runs last: `down` removes namespaces, processes (containerd, shims, kubelet, containers),
    mounts, cgroups and files."""
    prefix = f"pwe-{full.name}-"
    cluster_dir = str(full.dir)
    procs = [ns.Proc.of(pid, "x") for pid in _pids_mentioning(cluster_dir)]
    container_pids = set().union(*(cgroups.pids(rt.cgroup_root) for rt in full.runtimes.values()))
    procs += [ns.Proc.of(pid, "c") for pid in container_pids]
    assert any("containerd-shim" in _cmdline(p.pid) for p in procs)
    assert any("kubelet" in _cmdline(p.pid) for p in procs)
    assert container_pids
    assert cgroups.list_roots(prefix)

    errors = full.down()
    assert errors == []
    assert ns.list_netns(prefix) == []
    assert [p for p in procs if p.alive()] == []
    assert _pids_mentioning(cluster_dir) == []
    assert cgroups.list_roots(prefix) == []
    assert not Path(cluster_dir).exists()
    assert cluster_dir not in Path("/proc/self/mountinfo").read_text()
    after = host_sysctls.snapshot()
    print(f"\nhost sysctls after teardown: {host_sysctls.kubelet_view(after)}")
    assert host_sysctls.changed(SYSCTLS_BEFORE, after) == {}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids_mentioning(text: str) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and text in _cmdline(int(p.name))]
