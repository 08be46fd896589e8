"""policy.from_api: Pods, Namespaces and NetworkPolicies into typed records, and refusal of
hostile or malformed input (issue 11, item 1). A bad object is always an `Invalid` with a reason,
never another exception; whatever is accepted holds only typed values."""
from __future__ import annotations

import copy
import ipaddress

import pytest

from policy.from_api import Invalid, convert_all, namespace_from_api, pod_from_api, policy_from_api, to_plain
from policy.model import EGRESS, INGRESS, IPBlock, Peer, Port, Rule
from policy.selector import EVERYTHING, LabelSelector, Requirement

INJECTION = "::1 . tcp . 1 : accept }\nadd table ip pwned"
HOSTILE: tuple = (INJECTION, "fd00::1%" + INJECTION, "fd00::1%eth0", "fd00::%eth0/64",
                  "10.0.0.0/8 }\nadd table ip pwned", "a\nb", "a;b", "a{b", "a b", "x" * 300, "ünïcödé",
                  "１０.0.0.1", "", 5, -1, 1.5, True, None, [], {}, ["a"], {"a": 1})


def pod(name="a", ns="x", labels=None, ips=("10.0.0.1",), **spec):
    return {"metadata": {"name": name, "namespace": ns, "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
                         "labels": {"pod": name} if labels is None else labels},
            "spec": {"nodeName": "node-1", **spec},
            "status": {"phase": "Running", "podIPs": [{"ip": ip} for ip in ips]}}


def netpol(spec, name="p", ns="x"):
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


# --- conversion ---------------------------------------------------------------------------------------------------

def test_pod_fields_named_ports_and_native_sidecars():
    p = pod_from_api(pod(ips=("10.0.0.1", "fd00::1"), containers=[
        {"name": "c", "ports": [{"name": "serve-80-tcp", "containerPort": 80},
                                {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
                                {"containerPort": 82}]}],
        initContainers=[{"name": "side", "restartPolicy": "Always",
                         "ports": [{"name": "metrics", "containerPort": 9090}]},
                        {"name": "init", "ports": [{"name": "init-only", "containerPort": 7}]}]))
    assert (p.namespace, p.name, p.node, p.phase, p.host_network) == ("x", "a", "node-1", "Running", False)
    assert p.ips == (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1"))
    assert dict(p.labels) == {"pod": "a"}
    assert p.named_ports.lookup("serve-80-tcp", "TCP") == 80
    assert p.named_ports.lookup("serve-80-tcp", "UDP") is None  # a name resolves per protocol
    assert p.named_ports.lookup("serve-81-udp", "UDP") == 81
    assert p.named_ports.lookup("metrics", "TCP") == 9090  # restartable init container (native sidecar)
    assert p.named_ports.lookup("init-only", "TCP") is None  # an ordinary init container serves nothing


def test_pods_of_one_template_share_labels_and_port_tables():
    spec = {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}
    a = pod_from_api(pod("a", labels={"app": "web", "tier": "fe"}, **spec))
    b = pod_from_api(pod("b", labels={"tier": "fe", "app": "web"}, ips=("10.0.0.2",), **spec))
    assert a.labels is b.labels and a.named_ports is b.named_ports


def test_pod_without_ips_hostnetwork_and_terminal():
    p = pod_from_api(pod(ips=()))
    assert p.ips == () and p.policed
    h = pod_from_api(pod(hostNetwork=True))
    assert h.host_network and not h.policed
    done = pod()
    done["status"]["phase"] = "Succeeded"
    assert pod_from_api(done).terminal
    legacy = pod(ips=())
    legacy["status"]["podIP"] = "10.0.0.9"
    assert pod_from_api(legacy).ips == (ipaddress.ip_address("10.0.0.9"),)


def test_namespace_gets_the_name_label_the_api_server_sets():
    n = namespace_from_api({"metadata": {"name": "y", "labels": {"team": "b"}}})
    assert dict(n.labels) == {"team": "b", "kubernetes.io/metadata.name": "y"}


def test_policy_types_defaulting():
    assert policy_from_api(netpol({"podSelector": {}})).policy_types == (INGRESS,)
    assert policy_from_api(netpol({"podSelector": {}, "egress": [{}]})).policy_types == (INGRESS, EGRESS)
    assert policy_from_api(netpol({"podSelector": {}, "egress": []})).policy_types == (INGRESS,)
    assert policy_from_api(netpol({"podSelector": {}, "policyTypes": []})).policy_types == (INGRESS,)
    assert policy_from_api(netpol({"podSelector": {}, "policyTypes": ["Egress"]})).policy_types == (EGRESS,)
    both = policy_from_api(netpol({"podSelector": {}, "policyTypes": ["Egress", "Ingress", "Egress"]}))
    assert both.policy_types == (EGRESS, INGRESS)


def test_empty_and_absent_fields():
    p = policy_from_api(netpol({"podSelector": {}, "ingress": [{}, {"from": [], "ports": []},
                                                               {"from": [{"podSelector": {}}]}]}))
    assert p.pod_selector == EVERYTHING
    assert p.ingress[0] == Rule() and p.ingress[1] == Rule()  # from/ports absent or []: every peer, every port
    assert p.ingress[2].peers == (Peer(pod_selector=EVERYTHING),)  # podSelector {}: every pod of x only
    assert policy_from_api(netpol({"podSelector": {}, "ingress": []})).ingress == ()
    assert policy_from_api(netpol({"podSelector": {}})).ingress == ()
    assert policy_from_api(netpol({})).pod_selector == EVERYTHING  # podSelector optional since 1.31


def test_peers_and_ports():
    p = policy_from_api(netpol({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{
        "from": [{"namespaceSelector": {}},
                 {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
                  "podSelector": {"matchLabels": {"pod": "b"}}},
                 {"ipBlock": {"cidr": "10.1.2.3/16", "except": ["10.1.2.0/24", "10.1.2.0/24"]}}],
        "ports": [{"port": 80}, {"protocol": "UDP", "port": 53}, {"protocol": "SCTP", "port": "serve-81-sctp"},
                  {"port": 8000, "endPort": 8080}, {"protocol": "TCP"}]}]}))
    assert p.pod_selector == LabelSelector((Requirement("pod", "In", frozenset({"a"})),))
    peers = p.ingress[0].peers
    assert peers[0] == Peer(namespace_selector=EVERYTHING)
    assert peers[1].namespace_selector == LabelSelector((Requirement("ns", "NotIn", frozenset({"x"})),))
    assert peers[1].pod_selector is not None
    assert peers[2].ip_block == IPBlock(ipaddress.ip_network("10.1.0.0/16"), (ipaddress.ip_network("10.1.2.0/24"),))
    assert p.ingress[0].ports == (Port("TCP", 80), Port("UDP", 53), Port("SCTP", "serve-81-sctp"),
                                  Port("TCP", 8000, 8080), Port("TCP", None))


def test_kubernetes_client_objects_convert_like_dicts():
    k = pytest.importorskip("kubernetes.client")
    obj = k.V1NetworkPolicy(
        metadata=k.V1ObjectMeta(name="p", namespace="x"),
        spec=k.V1NetworkPolicySpec(
            pod_selector=k.V1LabelSelector(match_labels={"pod": "a"}),
            policy_types=["Ingress", "Egress"],
            ingress=[k.V1NetworkPolicyIngressRule(_from=[k.V1NetworkPolicyPeer(
                namespace_selector=k.V1LabelSelector(match_expressions=[
                    k.V1LabelSelectorRequirement(key="ns", operator="In", values=["y"])]))],
                ports=[k.V1NetworkPolicyPort(port="serve-80-tcp")])],
            egress=[k.V1NetworkPolicyEgressRule(to=[k.V1NetworkPolicyPeer(
                ip_block=k.V1IPBlock(cidr="10.0.0.0/8", _except=["10.9.0.0/16"]))],
                ports=[k.V1NetworkPolicyPort(protocol="UDP", port=53, end_port=60)])]))
    as_dict = netpol({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress", "Egress"],
                      "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                          {"key": "ns", "operator": "In", "values": ["y"]}]}}], "ports": [{"port": "serve-80-tcp"}]}],
                      "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}],
                                  "ports": [{"protocol": "UDP", "port": 53, "endPort": 60}]}]})
    assert policy_from_api(obj) == policy_from_api(as_dict)
    v1pod = k.V1Pod(metadata=k.V1ObjectMeta(name="a", namespace="x", labels={"pod": "a"}),
                    spec=k.V1PodSpec(node_name="n1", containers=[k.V1Container(name="c", ports=[
                        k.V1ContainerPort(name="http", container_port=80)])]),
                    status=k.V1PodStatus(phase="Running", pod_ips=[k.V1PodIP(ip="10.0.0.1")]))
    p = pod_from_api(v1pod)
    assert p.ips == (ipaddress.ip_address("10.0.0.1"),) and p.named_ports.lookup("http", "TCP") == 80
    assert to_plain(k.V1Namespace(metadata=k.V1ObjectMeta(name="y")))["metadata"]["name"] == "y"
    assert namespace_from_api(k.V1Namespace(metadata=k.V1ObjectMeta(name="y"))).name == "y"


# --- refusals -----------------------------------------------------------------------------------------------------

BAD_POLICY_SPECS = {
    "injection in cidr": {"ingress": [{"from": [{"ipBlock": {"cidr": INJECTION}}]}]},
    "scope id in cidr": {"ingress": [{"from": [{"ipBlock": {"cidr": "fd00::%eth0/64"}}]}]},
    "scope id + injection in cidr": {"ingress": [{"from": [{"ipBlock": {"cidr": "fd00::%" + INJECTION + "/64"}}]}]},
    "scope id in except": {"ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::%x/96"]}}]}]},
    "cidr an int": {"ingress": [{"from": [{"ipBlock": {"cidr": 167772160}}]}]},
    "cidr missing": {"ingress": [{"from": [{"ipBlock": {}}]}]},
    "except outside cidr": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
    "except equal to cidr": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]},
    "except other family": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}]}]},
    "except not a list": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": "10.1.0.0/16"}}]}]},
    "ipBlock with a selector": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
    "empty peer": {"ingress": [{"from": [{}]}]},
    "In with empty values": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}},
    "NotIn without values": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn"}]}},
    "Exists with values": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}},
    "unknown operator": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}},
    "operator lower case": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "in", "values": ["1"]}]}},
    "injection in label key": {"podSelector": {"matchLabels": {INJECTION: "a"}}},
    "injection in label value": {"podSelector": {"matchLabels": {"a": INJECTION}}},
    "label value an int": {"podSelector": {"matchLabels": {"a": 1}}},
    "label value too long": {"podSelector": {"matchLabels": {"a": "v" * 64}}},
    "label key prefix bad": {"podSelector": {"matchLabels": {"Example.com/a": "b"}}},
    "matchLabels a list": {"podSelector": {"matchLabels": ["a"]}},
    "selector a string": {"podSelector": "app=web"},
    "selector field typo": {"ingress": [{"from": [{"podSelector": {"matchLabel": {"pod": "b"}}}]}]},
    "selector expression extra field": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists",
                                                                             "value": "b"}]}},
    "endPort < port": {"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
    "endPort with a named port": {"ingress": [{"ports": [{"port": "http", "endPort": 80}]}]},
    "endPort without a port": {"ingress": [{"ports": [{"endPort": 80}]}]},
    "endPort a string": {"ingress": [{"ports": [{"port": 80, "endPort": "90"}]}]},
    "port 0": {"ingress": [{"ports": [{"port": 0}]}]},
    "port 65536": {"ingress": [{"ports": [{"port": 65536}]}]},
    "port a bool": {"ingress": [{"ports": [{"port": True}]}]},
    "port a float": {"ingress": [{"ports": [{"port": 80.0}]}]},
    "port digits as a name": {"ingress": [{"ports": [{"port": "80"}]}]},
    "port name too long": {"ingress": [{"ports": [{"port": "a-very-long-port-name"}]}]},
    "port name injection": {"ingress": [{"ports": [{"port": INJECTION}]}]},
    "protocol ICMP": {"ingress": [{"ports": [{"protocol": "ICMP", "port": 80}]}]},
    "protocol lower case": {"ingress": [{"ports": [{"protocol": "tcp", "port": 80}]}]},
    "protocol injection": {"egress": [{"ports": [{"protocol": INJECTION}]}]},
    "policyType unknown": {"policyTypes": ["Both"]},
    "ingress not a list": {"ingress": {"from": []}},
    "rule not an object": {"egress": ["all"]},
    "to not a list": {"egress": [{"to": {"podSelector": {}}}]},
}


@pytest.mark.parametrize("case", sorted(BAD_POLICY_SPECS))
def test_bad_policy_is_invalid(case):
    with pytest.raises(Invalid) as e:
        policy_from_api(netpol(BAD_POLICY_SPECS[case]))
    assert e.value.reason and len(str(e.value)) < 500 and "\n" not in e.value.reason.replace("\\n", "")


BAD_PODS = {
    "injection in pod IP": lambda p: p["status"].update(podIPs=[{"ip": INJECTION}]),
    "scope id in pod IP": lambda p: p["status"].update(podIPs=[{"ip": "fd00::1%eth0"}]),
    "pod IP an int": lambda p: p["status"].update(podIPs=[{"ip": 167772161}]),
    "two IPv4 pod IPs": lambda p: p["status"].update(podIPs=[{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]),
    "hostNetwork a string": lambda p: p["spec"].update(hostNetwork="true"),
    "bad phase": lambda p: p["status"].update(phase=INJECTION),
    "bad nodeName": lambda p: p["spec"].update(nodeName=INJECTION),
    "bad namespace": lambda p: p["metadata"].update(namespace="X_Y"),
    "namespace a subdomain": lambda p: p["metadata"].update(namespace="a.b"),
    "bad name": lambda p: p["metadata"].update(name=INJECTION),
    "name an int": lambda p: p["metadata"].update(name=5),
    "bad uid": lambda p: p["metadata"].update(uid="a\nb"),
    "bad label": lambda p: p["metadata"].update(labels={"a": INJECTION}),
    "labels a list": lambda p: p["metadata"].update(labels=["a"]),
    "port name injection": lambda p: p["spec"].update(containers=[{"ports": [{"name": INJECTION,
                                                                              "containerPort": 80}]}]),
    "named port 0": lambda p: p["spec"].update(containers=[{"ports": [{"name": "http", "containerPort": 0}]}]),
    "named port a string": lambda p: p["spec"].update(containers=[{"ports": [{"name": "http",
                                                                              "containerPort": "80"}]}]),
    "containers not a list": lambda p: p["spec"].update(containers={"a": 1}),
    "spec a string": lambda p: p.update(spec="x"),
}


@pytest.mark.parametrize("case", sorted(BAD_PODS))
def test_bad_pod_is_invalid(case):
    obj = pod()
    BAD_PODS[case](obj)
    with pytest.raises(Invalid):
        pod_from_api(obj)


@pytest.mark.parametrize("obj", [None, 5, "pod", [], {}, {"metadata": None}, {"metadata": {"name": "a"}},
                                 {"metadata": {"name": "a", "namespace": "x"}, "spec": None}])
def test_not_an_object(obj):
    with pytest.raises(Invalid):
        policy_from_api(obj)
    with pytest.raises(Invalid):
        pod_from_api(obj if obj != {"metadata": {"name": "a", "namespace": "x"}, "spec": None} else 7)


@pytest.mark.parametrize("name", [None, 5, "", "A", "a.b", "a_b", INJECTION, "x" * 64])
def test_bad_namespace_name(name):
    with pytest.raises(Invalid):
        namespace_from_api({"metadata": {"name": name}})


def test_deeply_nested_input_is_invalid_not_recursion():
    deep: dict = {}
    cur = deep
    for _ in range(5000):
        cur["x"] = {}
        cur = cur["x"]
    with pytest.raises(Invalid):
        policy_from_api(netpol({"podSelector": deep}))
    nested: list = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(Invalid):
        policy_from_api(nested)  # walked by to_plain (model objects): bounded depth, no RecursionError


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    yield path


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


FULL_POLICY = netpol({
    "podSelector": {"matchLabels": {"pod": "a"}, "matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]},
    "policyTypes": ["Ingress", "Egress"],
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}, "namespaceSelector": {}},
                          {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                 "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}, {"port": "http"}]}],
    "egress": [{"to": [{"ipBlock": {"cidr": "fd00::/48", "except": ["fd00::/64"]}}],
                "ports": [{"protocol": "UDP", "port": 53}]}]})


def test_every_field_hostile_gives_invalid_or_typed_values():
    """Each field of a full policy and pod in turn gets each hostile value: Invalid, or typed output."""
    checked = 0
    for base, convert in ((FULL_POLICY, policy_from_api), (pod(containers=[{"ports": [{"name": "http",
                                                                                        "containerPort": 80}]}]),
                                                            pod_from_api)):
        for path in list(_leaves(base)):
            if not path:
                continue
            for value in HOSTILE:
                obj = copy.deepcopy(base)
                _set(obj, path, value)
                try:
                    out = convert(obj)
                except Invalid:
                    continue
                checked += 1
                text = repr(out)
                assert "%" not in text and "\n" not in text and "pwned" not in text, (path, value, text)
    assert checked > 0


def test_convert_all_keeps_the_good_ones():
    good, skipped = convert_all([netpol({"podSelector": {}}), netpol({"policyTypes": ["x"]}, name="bad"), 7],
                                policy_from_api)
    assert [p.name for p in good] == ["p"] and len(skipped) == 2
