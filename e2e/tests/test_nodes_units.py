"""Unit tests (no root) of the full-node pieces: configs, manifests, the OCI image writer."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import tarfile
import tomllib
from pathlib import Path

import yaml

from e2e import coredns, images
from e2e.control_plane import ControlPlaneConfig
from e2e.node_runtime import (
    KUBELET_SYSCTLS,
    NodeRuntime,
    containerd_config,
    kube_proxy_config,
    kubelet_config,
    podwire_conflist,
)
from e2e.topology import Node, plan
from node_daemon import cniconf


class FakeControlPlane:
    config = ControlPlaneConfig()


def runtime(tmp_path, name="node2", containerd="2.2", family="ipv4") -> NodeRuntime:
    p = plan("k1", "l2", 3, family)
    hp = next(h for h in p.hosts if h.name == name)
    node = Node(hp, p.netns(name), tmp_path / "hosts" / name, ledger=None)
    node.pod_cidr = ipaddress.ip_network("10.244.2.0/24")
    cp = FakeControlPlane()
    cp.config = ControlPlaneConfig(family=family)
    return NodeRuntime(node, "k1", cp, tmp_path / "bin", containerd)


def test_kubelet_in_each_family(tmp_path):
    """The node's addresses of every family (--node-ip), kube-dns's of every family, primary first."""
    ca = tmp_path / "ca.crt"
    v4 = kubelet_config(runtime(tmp_path, family="ipv4"), ca)
    assert (v4["address"], v4["clusterDNS"]) == ("172.30.0.12", ["10.96.0.10"])
    v6 = kubelet_config(runtime(tmp_path, family="ipv6"), ca)
    assert (v6["address"], v6["clusterDNS"]) == ("::", ["fd00:10:96::a"])
    dual = runtime(tmp_path, family="dual")
    assert kubelet_config(dual, ca)["clusterDNS"] == ["10.96.0.10", "fd00:10:96::a"]
    assert [str(ip) for ip in dual.node.ips] == ["172.30.0.12", "fd00:172:30::12"]  # --node-ip, in order


def test_containerd_config_keeps_everything_of_a_node_in_its_directory(tmp_path):
    rt = runtime(tmp_path)
    conf = tomllib.loads(containerd_config(rt))
    assert conf["version"] == 3
    for key in ("root", "state"):
        assert conf[key].startswith(str(rt.dir))
    assert conf["grpc"]["address"] == str(rt.containerd_socket)
    assert conf["ttrpc"]["address"].startswith(str(rt.dir))
    cri = conf["plugins"]["io.containerd.cri.v1.runtime"]
    assert cri["cni"] == {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d", "max_conf_num": 1,
                          "use_internal_loopback": True}
    assert cri["netns_mounts_under_state_dir"] is True  # not /run/netns, which is the host's
    assert cri["restrict_oom_score_adj"] is True
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc["SystemdCgroup"] is False
    assert conf["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == images.PAUSE
    assert "io.containerd.nri.v1.nri" in conf["disabled_plugins"]  # its socket is a fixed host path


def test_containerd_1_6_node_gets_a_version_2_config_of_the_same_node(tmp_path):
    """Debian's containerd 1.6.20 reads config version 2 (one CRI plugin, 1.x key names)."""
    rt = runtime(tmp_path, containerd="1.6")
    assert rt.containerd.bin_dir == Path("/usr/bin") and rt.containerd.config_version == 2
    conf = tomllib.loads(containerd_config(rt))
    assert conf["version"] == 2
    for key in ("root", "state"):
        assert conf[key].startswith(str(rt.dir))
    assert conf["grpc"]["address"] == str(rt.containerd_socket)
    cri = conf["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == images.PAUSE
    assert cri["netns_mounts_under_state_dir"] is True  # not the host's /run/netns
    assert cri["restrict_oom_score_adj"] is True
    assert cri["cni"] == {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d", "max_conf_num": 1}
    assert cri["containerd"]["snapshotter"] == rt.snapshotter
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2" and runc["options"]["SystemdCgroup"] is False
    assert "io.containerd.cri.v1.runtime" not in conf["plugins"]  # 2.x names would be ignored by 1.6
    try:
        runtime(tmp_path, containerd="1.5")
    except ValueError as err:
        assert "1.6" in str(err) and "2.2" in str(err)
    else:
        raise AssertionError("unknown containerd accepted")


def test_kubelet_never_writes_the_hosts_kernel_settings(tmp_path):
    """Issue 10 item 9: kubelet wrote vm.overcommit_memory, kernel.panic, kernel.panic_on_oops on
    the shared machine. Now each node's mount namespace shows it files holding the values it wants
    over those /proc/sys entries, and protectKernelDefaults makes it fail rather than write."""
    rt = runtime(tmp_path)
    assert kubelet_config(rt, tmp_path / "ca.crt")["protectKernelDefaults"] is True
    # exactly what kubelet 1.34's setupKernelTunables checks (pkg/kubelet/cm/container_manager_linux.go)
    assert KUBELET_SYSCTLS == {"vm/overcommit_memory": 1, "vm/panic_on_oom": 0, "kernel/panic": 10,
                               "kernel/panic_on_oops": 1, "kernel/keys/root_maxkeys": 1000000,
                               "kernel/keys/root_maxbytes": 25000000}
    script = rt.holder_script()
    assert script[:2] == ["set -e", "mount --make-rslave /"]  # first: nothing propagates to the host
    # the only lines touching /proc/sys: one bind mount of a node file per tunable
    binds = {line.split()[3]: Path(line.split()[2]) for line in script if "/proc/sys" in line}
    assert all(line.startswith("mount --bind ") and len(line.split()) == 4 for line in script if "/proc/sys" in line)
    assert sorted(binds) == sorted(f"/proc/sys/{k}" for k in KUBELET_SYSCTLS)
    for target, source in binds.items():
        assert source.is_relative_to(rt.dir)  # a file of the node, removed with it
        assert int(source.read_text()) == KUBELET_SYSCTLS[target.removeprefix("/proc/sys/")]


def test_kubelet_config_is_per_node(tmp_path):
    a, b = runtime(tmp_path, "node1"), runtime(tmp_path, "node2")
    ca = tmp_path / "ca.crt"
    ka, kb = kubelet_config(a, ca), kubelet_config(b, ca)
    for key in ("cgroupRoot", "podLogsDir", "resolvConf", "containerRuntimeEndpoint", "address", "volumePluginDir"):
        assert ka[key] != kb[key], key
    assert ka["cgroupRoot"] == "/pwe-k1-node1"
    assert ka["cgroupDriver"] == "cgroupfs" and ka["failSwapOn"] is False and ka["failCgroupV1"] is False
    assert ka["imageGCHighThresholdPercent"] == 100
    assert ka["clusterDNS"] == ["10.96.0.10"] and ka["clusterDomain"] == "cluster.local"
    assert ka["authentication"]["anonymous"]["enabled"] is False
    assert ka["authentication"]["x509"]["clientCAFile"] == str(ca)


def test_kube_proxy_config_masquerades_service_traffic(tmp_path):
    rt = runtime(tmp_path)
    conf = kube_proxy_config(rt, tmp_path / "kp.kubeconfig", ipaddress.ip_network("10.244.0.0/16"))
    assert conf["mode"] == "nftables" and conf["nftables"]["masqueradeAll"] is True
    assert conf["hostnameOverride"] == "node2" and conf["conntrack"]["maxPerCore"] == 0


def test_podwire_conflist_is_the_daemons_shape_with_per_node_paths(tmp_path):
    rt = runtime(tmp_path)
    conf = podwire_conflist(rt)
    # what node_daemon/cniconf.py renders: 1.0.0 for libcni without negotiation, 1.1.0 offered
    assert conf["cniVersion"] == cniconf.CNI_VERSION == "1.0.0"
    assert conf["cniVersions"] == list(cniconf.CNI_VERSIONS)
    plugin = conf["plugins"][0]
    assert plugin["type"] == "podwire"
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24"}]]
    other = podwire_conflist(runtime(tmp_path, "node1"))["plugins"][0]  # (same podCIDR in this fake)
    for key in ("logFile", "stateDir"):
        assert plugin[key].startswith(str(rt.node.dir)) and plugin[key] != other[key]
    assert plugin["ipam"]["dataDir"].startswith(str(rt.dir))
    assert plugin["ipam"]["dataDir"] != other["ipam"]["dataDir"]


def test_coredns_manifests():
    docs = {d["kind"]: d for d in yaml.safe_load_all(coredns.manifest_yaml())}
    assert docs["Service"]["spec"]["clusterIP"] == "10.96.0.10"
    ports = {(p["port"], p["protocol"]) for p in docs["Service"]["spec"]["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (9153, "TCP")}
    corefile = docs["ConfigMap"]["data"]["Corefile"]
    assert "forward . /etc/resolv.conf" in corefile and "\n    loop\n" in corefile  # kubeadm's, to the harness upstream
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa" in corefile
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == images.COREDNS and container["imagePullPolicy"] == "IfNotPresent"
    rules = docs["ClusterRole"]["rules"]
    assert {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]} in rules


def test_oci_tarball_is_a_valid_layout(tmp_path):
    rootfs = images.rootfs({"bin/tool": (b"#!/bin/sh\n", 0o755)}, {"bin/sh": "tool"})
    layer = images.oci.layer_tar(rootfs)
    assert images.oci.layer_tar(rootfs) == layer  # reproducible
    path = images.write_image(tmp_path / "x.tar", "example.test/x:1", layer, {"Cmd": ["/bin/tool"]})
    with tarfile.open(path) as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for name, data in blobs.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(blobs["index.json"])
    entry = index["manifests"][0]
    assert entry["annotations"]["io.containerd.image.name"] == "example.test/x:1"
    manifest = json.loads(blobs["blobs/sha256/" + entry["digest"].split(":")[1]])
    config = json.loads(blobs["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    assert config["config"]["Cmd"] == ["/bin/tool"]
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]  # uncompressed layer
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    with tarfile.open(fileobj=io.BytesIO(blobs["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]])) as t:
        names = {m.name: m for m in t.getmembers()}
    assert names["bin/tool"].mode == 0o755 and names["bin/sh"].linkname == "tool" and names["tmp"].isdir()


def test_image_names_are_what_pods_ask_for():
    assert images.PAUSE == "registry.k8s.io/pause:3.10.1"
    assert {s.name for s in images.SPECS} == {images.PAUSE, images.BUSYBOX, images.COREDNS}
    assert Path(images.BUSYBOX_BIN).name == "busybox"


def test_host_sysctl_snapshot_sees_every_setting_but_counters(tmp_path):
    from e2e import host_sysctls

    for key, value in {"kernel/panic": "1", "vm/overcommit_memory": "0", "kernel/keys/root_maxkeys": "1000000",
                       "kernel/ns_last_pid": "4242", "fs/file-nr": "1 0 9", "fs/quota/lookups": "7",
                       "net/ipv4/ip_forward": "0", "net/core/somaxconn": "4096"}.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_text(value + "\n")
    before = host_sysctls.snapshot(str(tmp_path))
    assert before == {"kernel/panic": "1", "vm/overcommit_memory": "0", "kernel/keys/root_maxkeys": "1000000",
                      "net/ipv4/ip_forward": "0"}
    (tmp_path / "kernel/panic").write_text("10\n")  # what kubelet used to do
    (tmp_path / "kernel/ns_last_pid").write_text("5000\n")
    (tmp_path / "vm/new_module_knob").write_text("1\n")
    assert host_sysctls.changed(before, host_sysctls.snapshot(str(tmp_path))) == {"kernel/panic": ("1", "10")}
    assert "kernel.panic=1 " in host_sysctls.kubelet_view(before)


def test_a_cluster_picks_containerd_per_node(tmp_path, monkeypatch):
    import argparse

    from e2e.cluster import Cluster, _node_containerd

    monkeypatch.setenv("PODWIRE_E2E_DIR", str(tmp_path))
    c = Cluster("u1", "l2", 2, bin_dir=tmp_path, full_nodes=True, containerd={"node2": "1.6"})
    rts = c.node_runtimes()
    assert rts["node1"].containerd.name == "2.2" and rts["node2"].containerd.name == "1.6"
    assert rts["node2"].support_plugins() == {"loopback": Path("/usr/lib/cni/loopback")}
    assert rts["node1"].support_plugins() == {}
    try:
        Cluster("u1", "l2", 2, bin_dir=tmp_path, containerd={"node3": "1.6"})
    except ValueError as err:
        assert "node3" in str(err)
    else:
        raise AssertionError("containerd for a missing node accepted")
    assert _node_containerd("node2=1.6") == ("node2", "1.6")
    for bad in ("node2=1.7", "node2", "cp=1.6", "node2=1.6;x"):
        try:
            _node_containerd(bad)
        except argparse.ArgumentTypeError:
            continue
        raise AssertionError(f"{bad!r} accepted")
