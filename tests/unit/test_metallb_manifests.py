"""e2e/metallb.py's pure parts: upstream's metallb-native.yaml changed for the side-by-side cluster
(--lb-class on both workloads, no webhook, images never pulled), the disjoint pools, the Services."""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from e2e import edge_images, metallb


def _upstream() -> list[dict]:
    try:
        path = edge_images.metallb_manifest()
    except FileNotFoundError:
        pytest.skip("MetalLB's module is not in the module cache (python3 -m e2e.edge_images)")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _container(objs, kind, name):
    [obj] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    [c] = [c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def test_upstream_manifest_gets_lb_class_on_both_and_loses_only_the_webhook():
    docs = _upstream()
    objs = metallb.metallb_objects(docs)
    for kind, name in (("Deployment", "controller"), ("DaemonSet", "speaker")):
        c = _container(objs, kind, name)
        assert [a for a in c["args"] if a.startswith("--lb-class")] == [f"--lb-class={metallb.METALLB_CLASS}"]
        assert c["imagePullPolicy"] == "Never"
        # the upstream image name, which edge_images builds under the same name
        assert c["image"] == _container(docs, kind, name)["image"]
        # upstream's other arguments stay
        assert set(_container(docs, kind, name)["args"]) < set(c["args"])
    assert "--webhook-mode=disabled" in _container(objs, "Deployment", "controller")["args"]
    assert "--webhook-mode=disabled" not in _container(objs, "DaemonSet", "speaker")["args"]
    kinds = lambda os_: sorted((o["kind"], o["metadata"]["name"]) for o in os_)  # noqa: E731
    dropped = set(kinds(docs)) - set(kinds(objs))
    assert dropped == {("ValidatingWebhookConfiguration", "metallb-webhook-configuration")}
    # memberlist as upstream: the controller creates the Secret the speakers mount
    env = {e["name"]: e.get("value") for e in _container(objs, "Deployment", "controller")["env"]}
    assert env["METALLB_ML_SECRET_NAME"] == "memberlist"
    # the input is not changed in place
    assert not any(a.startswith("--lb-class") for a in _container(docs, "Deployment", "controller")["args"])


def test_webhook_kept_when_asked_and_lb_class_replaced_not_repeated():
    docs = _upstream()
    objs = metallb.metallb_objects(metallb.metallb_objects(docs, "a/b"), "c/d", webhook=True)
    args = _container(objs, "Deployment", "controller")["args"]
    assert [a for a in args if a.startswith("--lb-class")] == ["--lb-class=c/d"]
    assert any(o["kind"] == "ValidatingWebhookConfiguration" for o in metallb.metallb_objects(docs, webhook=True))


@pytest.mark.parametrize("args,want", [
    (["--lb-class", "x", "--port=1"], ["--port=1", "--lb-class=y"]),
    (["--lb-class=x"], ["--lb-class=y"]),
    ([], ["--lb-class=y"]),
])
def test_flag_replacement(args, want):
    assert metallb._with_flag(args, "lb-class", "y") == want


@pytest.mark.parametrize("bad", ["", "a b", "x\n"])
def test_bad_class_is_refused(bad):
    with pytest.raises(metallb.MetalLBError):
        metallb.metallb_objects([], bad)


def test_manifest_without_the_workloads_is_refused():
    with pytest.raises(metallb.MetalLBError, match="controller, speaker"):
        metallb.metallb_objects([{"kind": "Namespace", "metadata": {"name": "x"}}])


def test_pools_disjoint_on_the_outside_subnet_and_off_the_hosts():
    net = ipaddress.ip_network("172.30.0.0/24")
    ranges = metallb.pool_ranges(net)
    bounds = {impl: [int(ipaddress.ip_address(a)) for a in r.split("-")] for impl, r in ranges.items()}
    addrs = {impl: set(range(first, last + 1)) for impl, (first, last) in bounds.items()}
    assert not addrs["podwire"] & addrs["metallb"]
    assert all(len(a) >= 40 for a in addrs.values())  # bench/lb_compare.py's default 20 Services fit twice
    hosts = {int(ipaddress.ip_address(h)) for h in ("172.30.0.1", "172.30.0.2", "172.30.0.11", "172.30.0.12",
                                                     "172.30.0.13", "172.30.0.100", "172.30.0.255")}
    assert not hosts & (addrs["podwire"] | addrs["metallb"])
    assert metallb.in_range("172.30.0.160", ranges["podwire"]) and not metallb.in_range("172.30.0.200",
                                                                                          ranges["podwire"])
    with pytest.raises(metallb.MetalLBError):
        metallb.pool_ranges(ipaddress.ip_network("10.0.0.0/25"))
    objs = metallb.pool_objects(ranges)
    adv = next(o for o in objs if o["kind"] == "L2Advertisement")
    assert adv["spec"]["ipAddressPools"] == [next(o for o in objs if o["kind"] == "IPAddressPool")["metadata"]["name"]]


def test_services_each_in_its_class_with_its_annotations():
    pw = metallb.service_body("podwire", "a", address="172.30.0.170", share="k", local=True)
    ml = metallb.service_body("metallb", "b", address="172.30.0.210", share="k")
    assert "loadBalancerClass" not in pw["spec"] and ml["spec"]["loadBalancerClass"] == metallb.METALLB_CLASS
    assert pw["metadata"]["annotations"] == {"podwire.io/loadbalancer-ips": "172.30.0.170",
                                             "podwire.io/allow-shared-ip": "k"}
    assert ml["metadata"]["annotations"] == {"metallb.io/loadBalancerIPs": "172.30.0.210",
                                             "metallb.io/allow-shared-ip": "k"}
    assert pw["spec"]["externalTrafficPolicy"] == "Local" and "externalTrafficPolicy" not in ml["spec"]
    assert metallb.PODWIRE_CLASS == __import__("loadbalancer.model").model.OUR_CLASS
    with pytest.raises(metallb.MetalLBError):
        metallb.service_body("cilium", "c")
    with pytest.raises(ValueError):
        metallb.service_body("podwire", "c", address="172.30.0.300")


@pytest.mark.parametrize("body,want", [
    ("10.244.1.5 [::ffff:172.30.0.100]\n", ("10.244.1.5", "172.30.0.100")),
    ("10.244.1.5 172.30.0.100", ("10.244.1.5", "172.30.0.100")),
])
def test_who_answer(body, want):
    assert metallb.parse_who(body) == want


@pytest.mark.parametrize("body", ["", "404 Not Found", "a b c", "x y"])
def test_who_answer_refused(body):
    with pytest.raises((metallb.MetalLBError, ValueError)):
        metallb.parse_who(body)


def test_who_backends_one_per_node():
    objs = metallb.who_objects(["node1", "node2"])
    deps = [o for o in objs if o["kind"] == "Deployment"]
    assert [d["spec"]["template"]["spec"]["nodeSelector"] for d in deps] == [
        {"kubernetes.io/hostname": "node1"}, {"kubernetes.io/hostname": "node2"}]
    assert all(d["spec"]["selector"]["matchLabels"] == d["spec"]["template"]["metadata"]["labels"] for d in deps)
