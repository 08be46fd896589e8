"""The harness's CoreDNS is kubeadm's: objects compared with kubeadm's own addon templates
(cmd/kubeadm/app/phases/addons/dns/manifests.go of the Kubernetes version the harness builds),
and the harness's upstream resolver's Corefile."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
import yaml

from e2e import build, coredns, upstream_dns
from e2e.node_runtime import CLUSTER_DNS, CLUSTER_DOMAIN
from e2e.topology import plan


def kubeadm_manifests_go() -> Path:
    module = build.cache_root() / "gomodcache" / f"k8s.io/kubernetes@{build.KUBERNETES_VERSION}"
    p = module / "cmd/kubeadm/app/phases/addons/dns/manifests.go"
    if p.exists():
        return p
    pytest.skip("kubeadm's manifests.go is not in the module cache (python3 -m e2e.build fills it)")


def render_go_template(text: str, values: dict[str, str]) -> str:
    """The subset kubeadm's addon templates use: {{ .X }} and {{- if .X }}...{{- end }} (X set)."""
    text = re.sub(r"\s*\{\{- if \.\w+ \}\}", "", text)
    text = re.sub(r"\s*\{\{- end \}\}", "", text)
    return re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values[m.group(1)], text)


def kubeadm_objects() -> dict[str, dict]:
    src = kubeadm_manifests_go().read_text()
    values = {"DeploymentName": "coredns", "Replicas": "2", "Image": "IMAGE", "DNSDomain": CLUSTER_DOMAIN,
              "DNSIP": str(CLUSTER_DNS), "ControlPlaneTaintKey": coredns.CONTROL_PLANE_TAINT}
    out = {}
    for _name, body in re.findall(r"(CoreDNS\w+) = `(.*?)`", src, re.S):
        obj = yaml.safe_load(render_go_template(body, values))
        obj["metadata"].pop("resourceVersion", None)  # kubeadm's upgrade trick, not part of the object
        out[obj["kind"]] = obj
    return out


def test_objects_are_kubeadms():
    ours = {o["kind"]: o for o in coredns.manifests(replicas=2, image="IMAGE")}
    theirs = kubeadm_objects()
    assert set(ours) == set(theirs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
                                        "Deployment", "Service"}
    for kind in ours:
        assert ours[kind] == theirs[kind], kind


def test_corefile_has_kubeadms_plugins_in_order():
    plugins = [line.split()[0] for line in coredns.COREFILE.splitlines()
               if line.startswith("    ") and not line.startswith("       ") and line.split()[0] != "}"]
    assert plugins == ["errors", "health", "ready", "kubernetes", "prometheus", "forward", "cache", "loop",
                       "reload", "loadbalance"]
    assert "forward . /etc/resolv.conf" in coredns.COREFILE


def test_corefile_is_a_mounted_configmap_volume_not_a_subpath():
    dep = next(o for o in coredns.manifests() if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    mount = pod["containers"][0]["volumeMounts"][0]
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates; reload needs them
    assert pod["volumes"][0]["configMap"]["name"] == "coredns"
    assert pod["dnsPolicy"] == "Default"  # the node's resolv.conf: the harness's upstream


def test_upstream_corefile_binds_only_the_gateways():
    for shape, want in (("l2", ["172.30.0.1"]), ("routed", ["172.30.1.1", "172.30.2.1"])):
        p = plan("u", shape, 3)
        assert [str(a) for a in upstream_dns.gateways(p)] == want
        text = upstream_dns.corefile(upstream_dns.gateways(p))
        assert text.count(f"bind {' '.join(want)}\n") == 2  # both server blocks, no wildcard
    assert upstream_dns.gateway_netns(plan("u", "l2", 3)) == "pwe-u-underlay"
    assert upstream_dns.gateway_netns(plan("u", "routed", 3)) == "pwe-u-router"


def test_upstream_corefile_serves_its_records_and_nxdomain_elsewhere():
    text = upstream_dns.corefile([ipaddress.IPv4Address("10.0.0.1")], {"8.8.8.8": ("dns.google",)})
    assert "template ANY ANY {\n        rcode NXDOMAIN" in text.split("\n}\n")[0]
    assert "dns.google.:53 8.in-addr.arpa.:53 {" in text
    assert "8.8.8.8 dns.google" in text


@pytest.mark.parametrize("records", [{"8.8.8.8": ("bad name",)}, {"8.8.8.8": ("x}\n. {",)},
                                     {"not-an-ip": ("a.b",)}])
def test_upstream_corefile_refuses_bad_records(records):
    with pytest.raises(ValueError):
        upstream_dns.corefile([ipaddress.IPv4Address("10.0.0.1")], records)


def test_upstream_corefile_needs_an_address():
    with pytest.raises(ValueError):
        upstream_dns.corefile([])


def test_kube_dns_has_a_cluster_ip_per_family_primary_first():
    assert coredns.dns_service_ips() == {"clusterIP": "10.96.0.10"}
    assert coredns.dns_service_ips(["fd00:10:96::a"]) == {"clusterIP": "fd00:10:96::a"}
    assert coredns.dns_service_ips(["10.96.0.10", "fd00:10:96::a"]) == {
        "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10:96::a"],
        "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}
    svc = next(o for o in coredns.manifests(cluster_ips=["fd00:10:96::a", "10.96.0.10"]) if o["kind"] == "Service")
    assert svc["spec"]["ipFamilies"] == ["IPv6", "IPv4"] and svc["spec"]["ports"][0]["port"] == 53
