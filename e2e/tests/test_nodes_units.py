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
from e2e.node_runtime import NodeRuntime, containerd_config, kube_proxy_config, kubelet_config, podwire_conflist
from e2e.topology import Node, plan


class FakeControlPlane:
    config = None


def runtime(tmp_path, name="node2") -> NodeRuntime:
    p = plan("k1", "l2", 3)
    hp = next(h for h in p.hosts if h.name == name)
    node = Node(hp, p.netns(name), tmp_path / "hosts" / name, ledger=None)
    node.pod_cidr = ipaddress.ip_network("10.244.2.0/24")
    return NodeRuntime(node, "k1", FakeControlPlane(), tmp_path / "bin")


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
    assert conf["cniVersion"] == "1.1.0"
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
    assert "forward" not in corefile and "loop" not in corefile
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa" in corefile
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == images.COREDNS and container["imagePullPolicy"] == "IfNotPresent"
    rules = docs["ClusterRole"]["rules"]
    assert {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]} in rules


def test_oci_tarball_is_a_valid_layout(tmp_path):
    rootfs = images.Rootfs({"bin/tool": (b"#!/bin/sh\n", 0o755)}, {"bin/sh": "tool"})
    layer = rootfs.tar()
    assert rootfs.tar() == layer  # reproducible
    path = images.write_oci_tarball(tmp_path / "x.tar", "example.test/x:1", layer, {"Cmd": ["/bin/tool"]})
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
    with tarfile.open(fileobj=io.BytesIO(blobs["blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]])) as t:
        names = {m.name: m for m in t.getmembers()}
    assert names["bin/tool"].mode == 0o755 and names["bin/sh"].linkname == "tool" and names["tmp"].isdir()


def test_image_names_are_what_pods_ask_for():
    assert images.PAUSE == "registry.k8s.io/pause:3.10.1"
    assert {s.name for s in images.SPECS} == {images.PAUSE, images.BUSYBOX, images.COREDNS}
    assert Path(images.BUSYBOX_BIN).name == "busybox"
