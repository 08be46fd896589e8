"""policy.verdict: the reference semantics as truth tables (issue 11, item 6).

Part 1 encodes upstream e2e cases (kubernetes v1.34 test/e2e/network/netpol/network_policy.go,
`[sig-network] Netpol NetworkPolicy between server and client ...`): the same namespaces x, y, z,
pods a, b, c serving 80/81 on TCP/UDP/SCTP with agnhost's port names (serve-80-tcp ...), the same
pods per case, the same policies (written as the API's JSON and converted by policy.from_api) and the
same Reachability expectations (ExpectPeer / ExpectAllIngress / ExpectAllEgress / Expect), checked on
every ordered pod pair except loopback (the e2e suite ignores it; here loopback must always pass:
a pod cannot block access to itself).
Part 2 covers the semantics traps of shared/notes/network-policy.md that upstream does not probe.
"""
from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

import pytest

from policy.from_api import namespace_from_api, pod_from_api, policy_from_api
from policy.model import Cluster, IPBlock, Pod, Port
from policy.verdict import (
    Verdict,
    isolating,
    peer_pods,
    peer_selects,
    port_range,
    selected_pods,
    selects,
    verdict,
)

NS_KEY = "kubernetes.io/metadata.name"
NS_INDEX = {"x": 1, "y": 2, "z": 3}
POD_INDEX = {"a": 1, "b": 2, "c": 3}


def pod_ip(ns: str, name: str, v6: bool = False) -> str:
    return f"fd00:{NS_INDEX[ns]}::{POD_INDEX[name]}" if v6 else f"10.{NS_INDEX[ns]}.0.{POD_INDEX[name]}"


def agnhost_pod(ns: str, name: str, labels: dict | None = None, ips: tuple[str, ...] | None = None,
                ports: dict | None = None, **spec) -> Pod:
    """An upstream test pod: one container per port and protocol, named serve-<port>-<proto>."""
    containers = [{"name": f"cont-{port}-{proto.lower()}",
                   "ports": [{"name": f"serve-{port}-{proto.lower()}", "containerPort": port, "protocol": proto}]}
                  for port in (80, 81) for proto in ("TCP", "UDP", "SCTP")]
    if ports:
        containers.append({"name": "extra", "ports": [{"name": k, "containerPort": v} for k, v in ports.items()]})
    return pod_from_api({
        "metadata": {"name": name, "namespace": ns, "labels": {"pod": name} if labels is None else labels},
        "spec": {"nodeName": "node-1", "containers": containers, **spec},
        "status": {"phase": "Running",
                   "podIPs": [{"ip": ip} for ip in (ips if ips is not None else (pod_ip(ns, name),))]}})


def namespaces(extra: dict | None = None):
    return [namespace_from_api({"metadata": {"name": n, "labels": dict((extra or {}).get(n, {}), ns=n)}})
            for n in ("x", "y", "z", "kube-system")]


def cluster(pod_names, policies=(), ns_labels=None, pod_labels=None, extra_pods=()) -> Cluster:
    pods = []
    for s in pod_names:
        ns, name = s.split("/")
        pods.append(agnhost_pod(ns, name, labels=(pod_labels or {}).get(s)))
    return Cluster.build(pods + list(extra_pods), namespaces(ns_labels),
                         [policy_from_api(p) for p in policies])


def np(ns, name, pod_selector, ingress=None, egress=None, types=None):
    spec: dict = {"podSelector": pod_selector}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    if types is not None:
        spec["policyTypes"] = types
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


class Reach:
    """Upstream's Reachability: every ordered pair starts at `default`."""

    def __init__(self, pods, default=True):
        self.pods = list(pods)
        self.m = {(s, d): default for s in self.pods for d in self.pods}

    def _sel(self, ns=None, pod=None):
        return [p for p in self.pods
                if (ns is None or p.split("/")[0] == ns) and (pod is None or p.split("/")[1] == pod)]

    def expect_peer(self, frm: dict, to: dict, value: bool):
        for s in self._sel(**frm):
            for d in self._sel(**to):
                self.m[(s, d)] = value

    def expect_all_ingress(self, pod, value):
        for s in self.pods:
            self.m[(s, pod)] = value

    def expect_all_egress(self, pod, value):
        for d in self.pods:
            self.m[(pod, d)] = value

    def expect(self, s, d, value):
        self.m[(s, d)] = value


@dataclass
class Case:
    name: str
    pods: tuple[str, ...]
    policies: list
    checks: list  # (port, proto, fn(Reach) -> None)
    ns_labels: dict = field(default_factory=dict)
    pod_labels: dict = field(default_factory=dict)


def ports_rule(*ports, **kw):
    return dict(kw, ports=list(ports))


NOTIN_X = {"matchExpressions": [{"key": NS_KEY, "operator": "NotIn", "values": ["x"]}]}
NS_Y = {"matchLabels": {NS_KEY: "y"}}
POD = lambda n: {"matchLabels": {"pod": n}}  # noqa: E731
ALL: dict = {}


def _no_change(r: Reach):
    pass


UPSTREAM = [
    Case("should support a 'default-deny-ingress' policy", ("x/a", "x/b", "y/a", "y/b"),
         [np("x", "deny-ingress", ALL, ingress=[])],
         [(80, "TCP", lambda r: r.expect_peer({}, {"ns": "x"}, False))]),
    Case("should support a 'default-deny-all' policy", ("x/a", "x/b", "y/a"),
         [np("x", "deny-all", ALL, ingress=[], egress=[], types=["Ingress", "Egress"])],
         [(80, "TCP", lambda r: (r.expect_peer({}, {"ns": "x"}, False), r.expect_peer({"ns": "x"}, {}, False)))]),
    Case("should enforce policy to allow traffic from pods within server namespace based on PodSelector",
         ("x/a", "x/b", "x/c", "y/a"),
         [np("x", "x-a-allows-x-b", POD("a"), ingress=[{"from": [{"podSelector": POD("b")}]}])],
         [(80, "TCP", lambda r: (r.expect_all_ingress("x/a", False), r.expect("x/b", "x/a", True)))]),
    Case("should enforce policy to allow ingress traffic for a target", ("x/a", "x/b", "y/a"),
         [np("x", "deny-all", ALL, ingress=[]),
          np("x", "allow-all-to-a", POD("a"), ingress=[{"from": [{"podSelector": {}, "namespaceSelector": {}}]}])],
         [(80, "TCP", lambda r: (r.expect_all_ingress("x/a", True), r.expect_all_ingress("x/b", False)))]),
    Case("should enforce policy to allow ingress traffic from pods in all namespaces", ("x/a", "x/b", "y/a", "z/a"),
         [np("x", "allow-from-another-ns", POD("a"), ingress=[{"from": [{"namespaceSelector": {"matchLabels": {}}}]}])],
         [(80, "TCP", _no_change)]),
    Case("should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
         ("x/a", "x/b", "y/a", "z/a"),
         [np("x", "allow-client-a-via-ns-selector", POD("a"), ingress=[{"from": [{"namespaceSelector": NS_Y}]}])],
         [(80, "TCP", lambda r: (r.expect_peer({"ns": "x"}, {"ns": "x", "pod": "a"}, False),
                                 r.expect_peer({"ns": "z"}, {"ns": "x", "pod": "a"}, False)))]),
    Case("should enforce policy based on PodSelector with MatchExpressions", ("x/a", "x/b", "y/a"),
         [np("x", "x-a-allows-x-b", POD("a"), ingress=[{"from": [{"podSelector": {"matchExpressions": [
             {"key": "pod", "operator": "In", "values": ["b"]}]}}]}])],
         [(80, "TCP", lambda r: (r.expect_all_ingress("x/a", False), r.expect("x/b", "x/a", True)))]),
    Case("should enforce policy based on NamespaceSelector with MatchExpressions", ("x/a", "x/b", "y/a", "z/a"),
         [np("x", "allow-ns-y-match-selector", POD("a"), ingress=[{"from": [{"namespaceSelector": {
             "matchExpressions": [{"key": NS_KEY, "operator": "In", "values": ["y"]}]}}]}])],
         [(80, "TCP", lambda r: (r.expect_peer({"ns": "x"}, {"ns": "x", "pod": "a"}, False),
                                 r.expect_peer({"ns": "z"}, {"ns": "x", "pod": "a"}, False)))]),
    Case("should enforce policy based on PodSelector or NamespaceSelector", ("x/a", "x/b", "x/c", "y/a"),
         [np("x", "allow-ns-y-match-selector", POD("a"),
             ingress=[{"from": [{"namespaceSelector": NOTIN_X}, {"podSelector": POD("b")}]}])],
         [(80, "TCP", lambda r: (r.expect("x/a", "x/a", False), r.expect("x/c", "x/a", False)))]),
    Case("should enforce policy based on PodSelector and NamespaceSelector", ("x/a", "x/b", "y/a", "y/b", "z/b"),
         [np("x", "allow-ns-y-podselector-and-nsselector", POD("a"),
             ingress=[{"from": [{"namespaceSelector": NOTIN_X, "podSelector": POD("b")}]}])],
         [(80, "TCP", lambda r: (r.expect_all_ingress("x/a", False), r.expect("y/b", "x/a", True),
                                 r.expect("z/b", "x/a", True)))]),
    Case("should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
         ("x/a", "x/b", "y/a", "y/b", "y/c"),
         [np("x", "allow-ns-y-z-pod-b-c", POD("a"), ingress=[{"from": [{"namespaceSelector": NOTIN_X, "podSelector": {
             "matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}])],
         [(80, "TCP", lambda r: (r.expect_peer({"ns": "x"}, {"ns": "x", "pod": "a"}, False),
                                 r.expect("y/a", "x/a", False)))]),
    Case("should enforce policy based on any PodSelectors", ("x/a", "x/b", "x/c"),
         [np("x", "allow-ns-x-pod-b-c", POD("a"), ingress=[{"from": [{"podSelector": POD("b")},
                                                                     {"podSelector": POD("c")}]}])],
         [(80, "TCP", lambda r: (r.expect_all_ingress("x/a", False), r.expect("x/b", "x/a", True),
                                 r.expect("x/c", "x/a", True)))]),
    Case("should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and "
         "NamespaceSelector", ("x/a", "x/b", "y/a", "y/b", "z/a"),
         [np("x", "allow-ns-y-pod-a-via-namespace-pod-selector", POD("a"),
             ingress=[{"from": [{"namespaceSelector": NS_Y, "podSelector": POD("a")}]}])],
         [(80, proto, lambda r: (r.expect_all_ingress("x/a", False), r.expect("y/a", "x/a", True)))
          for proto in ("TCP", "UDP", "SCTP")]),  # the TCP, UDP and SCTP variants share the table
    Case("should enforce policy based on Ports", ("x/a", "x/b", "y/a", "y/b", "z/a"),
         [np("x", "allow-client-a-via-ns-selector", POD("a"),
             ingress=[{"from": [{"namespaceSelector": NS_Y}], "ports": [{"port": 81, "protocol": "TCP"}]}])],
         [(81, "TCP", lambda r: (r.expect_peer({"ns": "x"}, {"ns": "x", "pod": "a"}, False),
                                 r.expect_peer({"ns": "y"}, {"ns": "x", "pod": "a"}, True),
                                 r.expect_peer({"ns": "z"}, {"ns": "x", "pod": "a"}, False))),
          (80, "TCP", lambda r: r.expect_all_ingress("x/a", False)),
          (81, "UDP", lambda r: r.expect_all_ingress("x/a", False))]),
    Case("should enforce multiple, stacked policies with overlapping podSelectors",
         ("x/a", "x/b", "y/a", "y/b", "z/a"),
         [np("x", "allow-client-a-via-ns-selector", POD("a"),
             ingress=[{"from": [{"namespaceSelector": NS_Y}], "ports": [{"port": 81, "protocol": "TCP"}]}]),
          np("x", "allow-client-a-via-ns-selector-80", POD("a"),
             ingress=[{"from": [{"namespaceSelector": NS_Y}], "ports": [{"port": 80, "protocol": "TCP"}]}])],
         [(port, "TCP", lambda r: (r.expect_peer({"ns": "x"}, {"ns": "x", "pod": "a"}, False),
                                   r.expect_peer({"ns": "y"}, {"ns": "x", "pod": "a"}, True),
                                   r.expect_peer({"ns": "z"}, {"ns": "x", "pod": "a"}, False))) for port in (80, 81)]),
    Case("should support allow-all policy", ("x/a", "x/b", "y/a"),
         [np("x", "allow-all", ALL, ingress=[{}])], [(80, "TCP", _no_change), (81, "TCP", _no_change)]),
    Case("should allow ingress access on one named port", ("x/a", "x/b", "y/a"),
         [np("x", "allow-all", ALL, ingress=[{"ports": [{"port": "serve-81-tcp"}]}])],
         [(81, "TCP", _no_change), (80, "TCP", lambda r: r.expect_peer({}, {"ns": "x"}, False))]),
    Case("should allow ingress access from namespace on one named port", ("x/a", "x/b", "y/a", "z/a"),
         [np("x", "allow-client-a-via-ns-selector-80", POD("a"),
             ingress=[{"from": [{"namespaceSelector": NS_Y}],
                       "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}]}])],
         [(80, "TCP", lambda r: (r.expect_peer({"ns": "x"}, {"ns": "x", "pod": "a"}, False),
                                 r.expect_peer({"ns": "z"}, {"ns": "x", "pod": "a"}, False))),
          (81, "TCP", lambda r: r.expect_all_ingress("x/a", False))]),
    Case("should allow egress access on one named port", ("x/a", "y/a"),
         [np("x", "allow-egress", ALL, egress=[{"ports": [{"port": "serve-80-tcp"}]}], types=["Egress"])],
         [(80, "TCP", _no_change), (81, "TCP", lambda r: r.expect_peer({"ns": "x"}, {}, False))]),
    Case("should enforce updated policy [allow all]", ("x/a", "y/a"),
         [np("x", "allow-all-mutate-to-deny-all", ALL, ingress=[{}])], [(81, "TCP", _no_change)]),
    Case("should enforce updated policy [mutated to deny all]", ("x/a", "y/a"),
         [np("x", "allow-all-mutate-to-deny-all", ALL, ingress=[])],
         [(81, "TCP", lambda r: r.expect_peer({}, {"ns": "x"}, False))]),
    Case("should allow ingress access from updated namespace [before]", ("x/a", "y/a"),
         [np("x", "allow-client-a-via-ns-selector", POD("a"), ingress=[{"from": [{"namespaceSelector": {
             "matchLabels": {"ns2": "updated"}}}]}])],
         [(80, "TCP", lambda r: r.expect_all_ingress("x/a", False))]),
    Case("should allow ingress access from updated namespace [after]", ("x/a", "y/a"),
         [np("x", "allow-client-a-via-ns-selector", POD("a"), ingress=[{"from": [{"namespaceSelector": {
             "matchLabels": {"ns2": "updated"}}}]}])],
         [(80, "TCP", lambda r: (r.expect_all_ingress("x/a", False), r.expect_peer({"ns": "y"}, {}, True)))],
         ns_labels={"y": {"ns2": "updated"}}),
    Case("should allow ingress access from updated pod [before]", ("x/a", "x/b"),
         [np("x", "allow-client-a-via-pod-selector", POD("a"), ingress=[{"from": [{"podSelector": {
             "matchLabels": {"pod": "b", "pod2": "updated"}}}]}])],
         [(80, "TCP", lambda r: r.expect_all_ingress("x/a", False))]),
    Case("should allow ingress access from updated pod [after]", ("x/a", "x/b"),
         [np("x", "allow-client-a-via-pod-selector", POD("a"), ingress=[{"from": [{"podSelector": {
             "matchLabels": {"pod": "b", "pod2": "updated"}}}]}])],
         [(80, "TCP", lambda r: (r.expect_all_ingress("x/a", False), r.expect("x/b", "x/a", True)))],
         pod_labels={"x/b": {"pod": "b", "pod2": "updated"}}),
    Case("should deny ingress from pods on other namespaces", ("x/a", "x/b", "y/a", "z/a"),
         [np("x", "deny-empty-policy", ALL, ingress=[{"from": [{"podSelector": {"matchLabels": {}}}]}])],
         [(80, "TCP", lambda r: (r.expect_peer({"ns": "y"}, {"ns": "x"}, False),
                                 r.expect_peer({"ns": "z"}, {"ns": "x"}, False)))]),
    Case("should deny ingress access to updated pod [before]", ("x/a", "y/a"),
         [np("x", "deny-ingress-via-label-selector", {"matchLabels": {"target": "isolated"}}, ingress=[])],
         [(80, "TCP", _no_change)]),
    Case("should deny ingress access to updated pod [after]", ("x/a", "y/a"),
         [np("x", "deny-ingress-via-label-selector", {"matchLabels": {"target": "isolated"}}, ingress=[])],
         [(80, "TCP", lambda r: r.expect_all_ingress("x/a", False))],
         pod_labels={"x/a": {"pod": "a", "target": "isolated"}}),
    Case("should deny egress from pods based on PodSelector", ("x/a", "x/b", "y/a"),
         [np("x", "deny-egress-pod-a", POD("a"), egress=[], types=["Egress"])],
         [(80, "TCP", lambda r: r.expect_all_egress("x/a", False))]),
    Case("should deny egress from all pods in a namespace", ("x/a", "x/b", "y/a"),
         [np("x", "deny-egress-ns-x", ALL, egress=[], types=["Egress"])],
         [(80, "TCP", lambda r: r.expect_peer({"ns": "x"}, {}, False))]),
    Case("should work with Ingress, Egress specified together", ("x/a", "x/b", "x/c", "y/a"),
         [np("x", "allow-client-a-via-pod-selector", POD("a"), ingress=[{"from": [{"podSelector": POD("b")}]}],
             egress=[{"ports": [{"port": 80}]}], types=["Egress", "Ingress"])],
         [(80, "TCP", lambda r: (r.expect_all_ingress("x/a", False), r.expect("x/b", "x/a", True))),
          (81, "TCP", lambda r: (r.expect_all_ingress("x/a", False), r.expect_all_egress("x/a", False),
                                 r.expect("x/b", "x/a", True)))]),
    Case("should support denying of egress traffic on the client side (even if the server explicitly allows this "
         "traffic)", ("x/a", "y/a", "y/b"),
         [np("x", "allow-to-ns-y-pod-a", POD("a"), egress=[{"to": [{"namespaceSelector": NS_Y,
                                                                     "podSelector": POD("a")}]}], types=["Egress"]),
          np("y", "allow-from-xa-on-ya-match-selector", POD("a"), ingress=[{"from": [{
              "namespaceSelector": {"matchLabels": {NS_KEY: "x"}}, "podSelector": POD("a")}]}]),
          np("y", "allow-from-xa-on-yb-match-selector", POD("b"), ingress=[{"from": [{
              "namespaceSelector": {"matchLabels": {NS_KEY: "x"}}, "podSelector": POD("a")}]}])],
         [(80, "TCP", lambda r: (r.expect_peer({"ns": "x", "pod": "a"}, {}, False),
                                 r.expect_peer({}, {"ns": "y", "pod": "a"}, False),
                                 r.expect_peer({"ns": "x", "pod": "a"}, {"ns": "y", "pod": "a"}, True),
                                 r.expect_peer({}, {"ns": "y", "pod": "b"}, False)))]),
    Case("should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector "
         "and NamespaceSelector", ("x/a", "y/a", "y/b"),
         [np("x", "allow-to-ns-y-pod-a", POD("a"), egress=[{"to": [{"namespaceSelector": NS_Y,
                                                                     "podSelector": POD("a")}]}], types=["Egress"])],
         [(80, "TCP", lambda r: (r.expect_all_egress("x/a", False), r.expect("x/a", "y/a", True)))]),
    Case("should enforce ingress policy allowing any port traffic to a server on a specific protocol", ("x/a", "y/a"),
         [np("x", "allow-ingress-by-proto", POD("a"), ingress=[{"ports": [{"protocol": "TCP"}]}])],
         [(80, "TCP", _no_change), (80, "UDP", lambda r: r.expect_peer({}, {"ns": "x", "pod": "a"}, False))]),
    Case("should enforce multiple ingress policies with ingress allow-all policy taking precedence", ("x/a", "y/a"),
         [np("x", "allow-ingress-port-80", ALL, ingress=[{"ports": [{"port": 80}]}]),
          np("x", "allow-ingress", ALL, ingress=[{}])],
         [(81, "TCP", _no_change)]),
    Case("should enforce multiple egress policies with egress allow-all policy taking precedence [port 80 only]",
         ("x/a", "y/a"), [np("x", "allow-egress-port-80", ALL, egress=[{"ports": [{"port": 80}]}], types=["Egress"])],
         [(81, "TCP", lambda r: r.expect_peer({"ns": "x"}, {}, False))]),
    Case("should enforce multiple egress policies with egress allow-all policy taking precedence", ("x/a", "y/a"),
         [np("x", "allow-egress-port-80", ALL, egress=[{"ports": [{"port": 80}]}], types=["Egress"]),
          np("x", "allow-egress", ALL, egress=[{}], types=["Egress"])],
         [(81, "TCP", _no_change)]),
    Case("should stop enforcing policies after they are deleted", ("x/a", "y/a"), [], [(80, "TCP", _no_change)]),
    Case("should allow egress access to server in CIDR block", ("x/a", "y/a", "y/b"),
         [np("x", "allow-client-a-via-cidr-egress-rule", POD("a"),
             egress=[{"to": [{"ipBlock": {"cidr": pod_ip("y", "b") + "/32"}}]}], types=["Egress"])],
         [(80, "TCP", lambda r: (r.expect_all_egress("x/a", False), r.expect("x/a", "y/b", True)))]),
    Case("should enforce except clause while egress access to server in CIDR block", ("x/a", "x/b", "x/c"),
         [np("x", "allow-client-a-via-cidr-egress-rule", POD("a"), egress=[{"to": [{"ipBlock": {
             "cidr": "0.0.0.0/4", "except": [pod_ip("x", "b") + "/32"]}}]}], types=["Egress"])],
         [(80, "TCP", lambda r: r.expect("x/a", "x/b", False))]),
    Case("should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed", ("x/a", "x/b", "x/c"),
         [np("x", "allow-client-a-via-cidr-egress-rule", POD("a"), egress=[{"to": [{"ipBlock": {
             "cidr": pod_ip("x", "b") + "/32"}}]}], types=["Egress"])],  # the update replaced the except policy
         [(80, "TCP", lambda r: (r.expect_all_egress("x/a", False), r.expect("x/a", "x/b", True)))]),
    Case("should enforce policies to check ingress and egress policies can be controlled independently based on "
         "PodSelector", ("x/a", "x/b", "y/a"),
         [np("x", "allow-egress-for-target", POD("a"), egress=[{}], types=["Egress"]),
          np("x", "deny-ingress-via-label-selector", POD("a"), ingress=[])],
         [(80, "TCP", lambda r: r.expect_all_ingress("x/a", False))]),
    Case("should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
         ("x/a", "y/a"),
         [np("x", "deny-ingress", ALL, ingress=[]),
          np("x", "allow-only-sctp-ingress-on-port-81", POD("a"), ingress=[{"ports": [{"port": 81,
                                                                                       "protocol": "SCTP"}]}])],
         [(81, "TCP", lambda r: r.expect_peer({}, {"ns": "x"}, False)), (81, "SCTP", _no_change)]),
    Case("should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't "
         "support SCTP", ("x/a", "y/a"),
         [np("x", "allow-only-sctp-ingress-on-port-80", POD("a"),
             ingress=[{"ports": [{"port": 80, "protocol": "SCTP"}]}])],
         [(81, "TCP", lambda r: r.expect_all_ingress("x/a", False))]),
    Case("should not allow access by TCP when a policy specifies only UDP", ("x/a", "y/a"),
         [np("x", "allow-only-udp-ingress-on-port-81", POD("a"),
             ingress=[{"ports": [{"port": 81, "protocol": "UDP"}]}])],
         [(81, "TCP", lambda r: r.expect_all_ingress("x/a", False)), (81, "UDP", _no_change)]),
    Case("should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
         ("x/a", "x/b", "y/a", "z/a"),
         [np("x", "allow-client-a-via-ns-selector-for-immutable-ns-label", POD("a"),
             ingress=[{"from": [{"namespaceSelector": NS_Y}]}])],
         [(80, "TCP", lambda r: (r.expect_peer({"ns": "x"}, {"ns": "x", "pod": "a"}, False),
                                 r.expect_peer({"ns": "z"}, {"ns": "x", "pod": "a"}, False)))]),
    Case("should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
         ("x/a", "x/b", "y/a", "z/a"),
         [np("x", "allow-ns-y-match-selector-for-immutable-ns-label", POD("a"), egress=[{"to": [{"namespaceSelector": {
             "matchExpressions": [{"key": NS_KEY, "operator": "NotIn", "values": ["y"]}]}}]}], types=["Egress"])],
         [(80, "TCP", lambda r: r.expect_peer({"ns": "x", "pod": "a"}, {"ns": "y"}, False))]),
]


def _table(c: Cluster, pods, port, proto):
    by_key = {str(p): p for p in c.pods}
    return {(s, d): verdict(c, by_key[s], by_key[d], port, proto).allowed for s in pods for d in pods}


@pytest.mark.parametrize("case", UPSTREAM, ids=[c.name for c in UPSTREAM])
def test_upstream_truth_table(case: Case):
    c = cluster(case.pods, case.policies, case.ns_labels, case.pod_labels)
    for port, proto, expect in case.checks:
        want = Reach(case.pods)
        expect(want)
        got = _table(c, case.pods, port, proto)
        wrong = sorted(f"{s} -> {d}: want {want.m[(s, d)]}" for s, d in got if s != d and got[(s, d)] != want.m[(s, d)])
        assert not wrong, f"{port}/{proto}: " + "; ".join(wrong)
        assert all(got[(p, p)] for p in case.pods), f"{port}/{proto}: a pod blocked itself"


def test_the_upstream_cases_are_all_here():
    """The TCP names of upstream's 42 plus its UDP/SCTP variants; every case above has an upstream name."""
    names = {c.name.split(" [")[0] for c in UPSTREAM}
    assert len(names) >= 40


# --- part 2: the traps ------------------------------------------------------------------------------------------------

ALL_PODS = tuple(f"{n}/{p}" for n in "xyz" for p in "abc")


def V(c: Cluster, s, d, port=80, proto="TCP") -> Verdict:
    by_key = {str(p): p for p in c.pods}
    s = by_key.get(s, s) if isinstance(s, str) else s
    d = by_key.get(d, d) if isinstance(d, str) else d
    return verdict(c, s, d, port, proto)


def ip(text):
    return ipaddress.ip_address(text)


def test_no_policy_everything_allowed_and_because_says_why():
    c = cluster(ALL_PODS)
    v = V(c, "x/a", "y/b")
    assert v.allowed and v.policies == ()
    assert v.because == ("egress from x/a: no policy isolates it for egress; "
                         "ingress to y/b: no policy isolates it for ingress")


def test_because_names_the_isolating_policies_and_the_allowing_rule():
    c = cluster(ALL_PODS, [np("x", "deny-all", ALL, ingress=[]),
                           np("x", "allow-from-y", POD("b"), ingress=[{"ports": [{"port": 81}]},
                                                                      {"from": [{"namespaceSelector": NS_Y}]}])])
    denied = V(c, "y/a", "x/a")
    assert not denied.allowed and denied.policies == (("x", "deny-all"),)
    assert denied.because == ("ingress to x/a denied: namespace x pod a is isolated for ingress by policies "
                              "[x/deny-all]; none allows y/a on TCP/80")
    ok = V(c, "y/a", "x/b")
    assert ok.allowed and ok.policies == (("x", "allow-from-y"),)
    assert "ingress to x/b allowed by x/allow-from-y (ingress rule 1)" in ok.because
    both = V(c, "y/a", "x/b", 81)
    assert "(ingress rule 0)" in both.because
    outside = V(c, ip("192.0.2.9"), "x/a", 443)
    assert outside.because.endswith("none allows 192.0.2.9 on TCP/443")
    assert "egress from 192.0.2.9: not a pod" in V(c, ip("192.0.2.9"), "y/a").because


def test_both_sides_denied_names_both_once():
    c = cluster(ALL_PODS, [np("x", "deny-all", ALL, ingress=[], egress=[], types=["Ingress", "Egress"])])
    v = V(c, "x/a", "x/b", 81, "UDP")
    assert not v.allowed and v.policies == (("x", "deny-all"),)
    assert v.because == ("egress from x/a denied: namespace x pod a is isolated for egress by policies [x/deny-all]; "
                         "none allows x/b on UDP/81; ingress to x/b denied: namespace x pod b is isolated for ingress "
                         "by policies [x/deny-all]; none allows x/a on UDP/81")


def test_egress_deny_all_with_dns_allowed():
    dns = agnhost_pod("kube-system", "a", labels={"k8s-app": "kube-dns"}, ips=("10.9.0.10",))
    c = cluster(ALL_PODS, [np("x", "default-deny-egress", ALL, egress=[{
        "to": [{"namespaceSelector": {"matchLabels": {NS_KEY: "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}], types=["Egress"])],
        extra_pods=[dns])
    assert V(c, "x/a", dns, 53, "UDP").allowed and V(c, "x/a", dns, 53, "TCP").allowed
    assert not V(c, "x/a", dns, 80).allowed and not V(c, "x/a", dns, 53, "SCTP").allowed
    assert not V(c, "x/a", "y/a").allowed and not V(c, "x/a", "x/b").allowed
    assert not V(c, "x/a", ip("8.8.8.8"), 53, "UDP").allowed  # not the cluster DNS pod
    assert V(c, "x/a", ip("10.9.0.10"), 53, "UDP").allowed  # the address is the pod (after Service DNAT)
    assert V(c, "y/a", "x/a").allowed  # ingress untouched


def test_end_port_is_an_inclusive_range_per_protocol():
    c = cluster(ALL_PODS, [np("x", "range", POD("a"), ingress=[{"ports": [{"port": 8000, "endPort": 8080}]}])])
    assert [V(c, "y/a", "x/a", p).allowed for p in (7999, 8000, 8040, 8080, 8081)] == [False, True, True, True, False]
    assert not V(c, "y/a", "x/a", 8000, "UDP").allowed


def test_named_port_resolves_on_the_destination_pod():
    b = agnhost_pod("y", "b", ports={"http": 8080})
    cc = agnhost_pod("y", "c", ports={"http": 9090})
    a = agnhost_pod("x", "a")
    c = Cluster.build([a, b, cc], namespaces(), [
        policy_from_api(np("y", "ingress-http", ALL, ingress=[{"ports": [{"port": "http"}]}])),
        policy_from_api(np("x", "egress-http", POD("a"), egress=[{"ports": [{"port": "http"}]}], types=["Egress"]))])
    # ingress: the name resolves on each selected pod separately
    assert V(c, ip("192.0.2.1"), b, 8080).allowed and not V(c, ip("192.0.2.1"), b, 9090).allowed
    assert V(c, ip("192.0.2.1"), cc, 9090).allowed and not V(c, ip("192.0.2.1"), cc, 8080).allowed
    # egress: on the peer pod; an address that is no pod has no named ports
    assert V(c, a, b, 8080).allowed and not V(c, a, cc, 8080).allowed and V(c, a, cc, 9090).allowed
    assert not V(c, a, ip("192.0.2.1"), 8080).allowed
    # a named port is (name, protocol): http is TCP only
    assert not V(c, ip("192.0.2.1"), b, 8080, "UDP").allowed


def test_named_port_never_matches_an_ipblock_address_that_is_no_pod():
    c = cluster(ALL_PODS, [np("x", "egress-named", POD("a"), egress=[{
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": "serve-80-tcp"}]}], types=["Egress"])])
    assert V(c, "x/a", "y/b", 80).allowed  # a pod inside the block: its serve-80-tcp is 80
    assert not V(c, "x/a", ip("198.51.100.7"), 80).allowed  # outside the cluster: no named ports
    assert not V(c, "x/a", "y/b", 81).allowed


def test_ipblock_matches_pod_ips_and_except_carves_holes():
    c = cluster(ALL_PODS, [np("x", "from-y-block", POD("a"), ingress=[{"from": [{"ipBlock": {
        "cidr": "10.2.0.0/16", "except": ["10.2.0.2/32"]}}]}])])
    assert V(c, "y/a", "x/a").allowed and V(c, "y/c", "x/a").allowed
    assert not V(c, "y/b", "x/a").allowed  # the hole
    assert not V(c, "z/a", "x/a").allowed
    assert V(c, ip("10.2.9.9"), "x/a").allowed  # any address in the block, pod or not
    assert not V(c, ip("fd00:2::1"), "x/a").allowed  # another family never matches


def test_ipblock_on_a_dual_stack_pod_uses_the_flow_family():
    a = agnhost_pod("x", "a", ips=("10.1.0.1", "fd00:1::1"))
    y = agnhost_pod("y", "a", ips=("10.2.0.1", "fd00:2::1"))
    c = Cluster.build([a, y], namespaces(), [policy_from_api(np("x", "v6-only", POD("a"), ingress=[
        {"from": [{"ipBlock": {"cidr": "fd00:2::/64"}}]}]))])
    assert V(c, ip("fd00:2::1"), ip("fd00:1::1")).allowed
    assert not V(c, ip("10.2.0.1"), ip("10.1.0.1")).allowed
    # pod to pod: the destination's first family that the source has too (IPv4 here), whose source address
    # 10.2.0.1 is outside the IPv6 block; an address on either side picks the family
    assert not V(c, y, a).allowed
    assert V(c, y, ip("fd00:1::1")).allowed and not V(c, y, ip("10.1.0.1")).allowed


def test_policy_types_traps():
    # egress rules and no policyTypes: isolates for ingress too (defaulting), allowing no ingress
    c = cluster(ALL_PODS, [np("x", "egress-only-rules", POD("a"), egress=[{}])])
    assert not V(c, "y/a", "x/a").allowed and V(c, "x/a", "y/a").allowed
    # policyTypes [Egress] with ingress rules: the ingress rules are ignored, ingress is not isolated
    c = cluster(ALL_PODS, [np("x", "egress-typed", POD("a"), ingress=[], egress=[], types=["Egress"])])
    assert V(c, "y/a", "x/a").allowed and not V(c, "x/a", "y/a").allowed
    # `egress: []` without policyTypes: Ingress only (an empty list is no egress rule)
    c = cluster(ALL_PODS, [np("x", "empty-egress", POD("a"), egress=[])])
    assert V(c, "x/a", "y/a").allowed and not V(c, "y/a", "x/a").allowed


def test_empty_vs_absent_rules():
    for rules, allowed in (([], False), ([{}], True), ([{"from": []}], True), ([{"ports": []}], True),
                           ([{"from": [], "ports": []}], True), ([{"from": [{"podSelector": {}}]}], False)):
        c = cluster(ALL_PODS, [np("x", "p", ALL, ingress=rules)])
        assert V(c, "y/a", "x/a").allowed is allowed, rules
        assert V(c, "x/b", "x/a").allowed is (rules != []), rules


def test_namespace_selector_absent_vs_empty():
    own = cluster(ALL_PODS, [np("x", "p", POD("a"), ingress=[{"from": [{"podSelector": POD("b")}]}])])
    every = cluster(ALL_PODS, [np("x", "p", POD("a"), ingress=[{"from": [{"podSelector": POD("b"),
                                                                          "namespaceSelector": {}}]}])])
    assert V(own, "x/b", "x/a").allowed and not V(own, "y/b", "x/a").allowed
    assert V(every, "x/b", "x/a").allowed and V(every, "y/b", "x/a").allowed and not V(every, "y/c", "x/a").allowed


def test_hostnetwork_pods_are_neither_subjects_nor_selector_peers():
    h = agnhost_pod("x", "h", labels={"pod": "h"}, ips=("192.168.0.10",), hostNetwork=True)
    c = cluster(ALL_PODS, [np("x", "deny-all", ALL, ingress=[], egress=[], types=["Ingress", "Egress"]),
                           np("y", "from-x-pods", POD("a"), ingress=[{"from": [{"namespaceSelector": {}}]}])],
                extra_pods=[h])
    assert V(c, h, "y/b").allowed  # not a subject: its egress is not isolated by x/deny-all
    assert not V(c, h, "y/a").allowed  # not a selector peer: y/a admits pods of every namespace, not h
    assert isolating(c, h, "Ingress") == ()
    assert ip("192.168.0.10") not in c.pods_by_ip
    c2 = cluster(ALL_PODS, [np("y", "from-node", POD("a"), ingress=[{"from": [{"ipBlock": {
        "cidr": "192.168.0.0/24"}}]}])], extra_pods=[h])
    assert V(c2, h, "y/a").allowed  # an ipBlock matches its (node) address


def test_node_to_isolated_pod_is_a_bare_address():
    """verdict() keeps the API semantics: the node's address is denied by default-deny; the kubelet-probe
    exception (node -> local pod) belongs to the dataplane, not to this function."""
    c = cluster(ALL_PODS, [np("x", "deny-all", ALL, ingress=[])])
    assert not V(c, ip("192.168.0.10"), "x/a").allowed


def test_terminal_pod_is_no_party_and_its_address_belongs_to_the_new_pod():
    old = pod_from_api({"metadata": {"name": "old", "namespace": "x", "labels": {"pod": "a"}},
                        "spec": {}, "status": {"phase": "Succeeded", "podIPs": [{"ip": pod_ip("y", "a")}]}})
    c = cluster(ALL_PODS, [np("y", "deny-from-x", ALL, ingress=[{"from": [{"namespaceSelector": NS_Y}]}]),
                           np("x", "deny-all", ALL, ingress=[])], extra_pods=[old])
    assert c.pods_by_ip[ip(pod_ip("y", "a"))].name == "a" and c.pods_by_ip[ip(pod_ip("y", "a"))].namespace == "y"
    assert isolating(c, old, "Ingress") == ()
    assert V(c, old, "y/b").allowed  # read as 10.2.0.1, which is y/a: allowed by y's own rule


def test_an_address_of_a_pod_is_that_pod():
    c = cluster(ALL_PODS, [np("x", "x-a-allows-x-b", POD("a"), ingress=[{"from": [{"podSelector": POD("b")}]}])])
    for s in ALL_PODS:
        ns, name = s.split("/")
        by_pod, by_ip = V(c, s, "x/a"), V(c, ip(pod_ip(ns, name)), ip(pod_ip("x", "a")))
        assert by_pod == by_ip, s


def test_pod_without_an_address_is_still_selected_by_labels():
    pending = agnhost_pod("x", "b", ips=())
    c = Cluster.build([pending, agnhost_pod("x", "a")], namespaces(),
                      [policy_from_api(np("x", "a-from-b", POD("a"), ingress=[{"from": [{"podSelector": POD("b")}]}]))])
    assert V(c, pending, ip(pod_ip("x", "a"))).allowed
    assert not V(c, ip("10.1.0.99"), ip(pod_ip("x", "a"))).allowed


def test_unknown_namespace_has_its_name_label():
    c = Cluster.build([agnhost_pod("x", "a")], [],
                      [policy_from_api(np("x", "from-x", ALL, ingress=[{"from": [{"namespaceSelector": {
                          "matchLabels": {NS_KEY: "x"}}}]}]))])
    assert dict(c.namespace_labels("q")) == {NS_KEY: "q"}
    assert not V(c, ip("10.9.9.9"), "x/a").allowed


def test_policies_are_additive_and_order_free():
    pols = [np("x", "deny-all", ALL, ingress=[]), np("x", "p80", POD("a"), ingress=[{"ports": [{"port": 80}]}]),
            np("x", "p81-from-y", POD("a"), ingress=[{"from": [{"namespaceSelector": NS_Y}], "ports": [{"port": 81}]}])]
    c1, c2 = cluster(ALL_PODS, pols), cluster(ALL_PODS, list(reversed(pols)))
    for port in (80, 81, 82):
        assert _table(c1, ALL_PODS, port, "TCP") == _table(c2, ALL_PODS, port, "TCP")
    assert V(c1, "z/a", "x/a", 80).allowed and not V(c1, "z/a", "x/a", 81).allowed and V(c1, "y/a", "x/a", 81).allowed
    assert not V(c1, "y/a", "x/b", 80).allowed
    v = V(c1, "y/a", "x/a", 80)
    assert v.policies == (("x", "p80"),)


def test_policies_select_only_in_their_namespace():
    c = cluster(ALL_PODS, [np("y", "deny-all", ALL, ingress=[])])
    assert V(c, "x/a", "x/b").allowed and not V(c, "x/a", "y/b").allowed


def test_notin_and_doesnotexist_match_pods_without_the_key():
    c = cluster(ALL_PODS, [np("x", "p", POD("a"), ingress=[{"from": [
        {"podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fe"]},
                                              {"key": "canary", "operator": "DoesNotExist"}]}}]}])],
        pod_labels={"x/b": {"pod": "b", "tier": "fe"}, "x/c": {"pod": "c", "canary": "1"}},
        extra_pods=[agnhost_pod("x", "d", ips=("10.1.0.4",))])
    assert V(c, "x/d", "x/a").allowed  # no tier, no canary
    assert V(c, "x/d", "x/a").policies == (("x", "p"),)
    assert not V(c, "x/b", "x/a").allowed and not V(c, "x/c", "x/a").allowed


SELF = "a pod may always reach itself"


def test_a_pod_may_always_reach_itself():
    """The Kubernetes docs: a pod cannot block access to itself (in podwire: a hairpin through a Service)."""
    dual = agnhost_pod("x", "d", ips=("10.1.0.9", "fd00:1::9"))
    c = cluster(ALL_PODS, [np("x", "deny-all", ALL, ingress=[], egress=[], types=["Ingress", "Egress"])],
                extra_pods=[dual])
    for name in ("x/a", "x/b", "x/d", "y/a"):  # isolated both ways, or not at all
        for proto in ("TCP", "UDP", "SCTP"):
            v = V(c, name, name, 81, proto)
            assert v == Verdict(True, f"{name} -> {name}: {SELF}, whatever policies select it", ())
    x_a = ip(pod_ip("x", "a"))
    for s, d in ((x_a, x_a), ("x/a", x_a), (x_a, "x/a"), (ip("fd00:1::9"), ip("fd00:1::9")),
                 (ip("10.1.0.9"), "x/d"), ("x/d", ip("fd00:1::9"))):
        assert V(c, s, d).allowed and SELF in V(c, s, d).because, (s, d)
    # only the pod itself: its neighbours, and addresses it does not own, stay denied
    assert not V(c, "x/a", "x/b").allowed and not V(c, "x/b", "x/a").allowed
    assert not V(c, "x/d", x_a).allowed and not V(c, "y/a", "x/a").allowed and not V(c, "x/a", "y/a").allowed
    assert not V(c, ip("10.1.0.9"), ip("10.1.0.99")).allowed
    assert SELF not in V(c, "y/a", "y/b").because


def test_a_pod_reaches_itself_only_at_the_addresses_it_owns():
    """An address lost in a conflict belongs to the winner: the loser sending to it is not reaching itself."""
    twin = agnhost_pod("z", "a", ips=(pod_ip("x", "a"),))  # x/a wins 10.1.0.1
    c = cluster(("x/a", "x/b"), [np("z", "deny-all", ALL, ingress=[], egress=[], types=["Ingress", "Egress"])],
                extra_pods=[twin])
    assert V(c, "z/a", "z/a").allowed  # the pod itself, asked by name
    v = V(c, twin, ip(pod_ip("x", "a")))
    assert not v.allowed and v.policies == (("z", "deny-all"),)
    assert V(c, ip(pod_ip("x", "a")), ip(pod_ip("x", "a"))).allowed  # x/a to itself


def test_cluster_is_immutable_and_verdict_is_pure():
    c = cluster(ALL_PODS, [np("x", "deny-all", ALL, ingress=[])])
    with pytest.raises(AttributeError):
        c.pods = ()
    assert V(c, "y/a", "x/a") == V(c, "y/a", "x/a")


@pytest.mark.parametrize("port,proto", [(0, "TCP"), (65536, "TCP"), (True, "TCP"), ("80", "TCP"), (80, "tcp"),
                                        (80, "ICMP")])
def test_bad_questions_are_refused(port, proto):
    c = cluster(("x/a", "y/a"))
    with pytest.raises(ValueError):
        V(c, "x/a", "y/a", port, proto)


def test_ip_conflicts_are_reported_and_resolved_by_key():
    twin = agnhost_pod("z", "a", ips=(pod_ip("x", "a"),))
    c = cluster(("x/a",), extra_pods=[twin])
    assert c.ip_conflicts == (ip(pod_ip("x", "a")),) and str(c.pods_by_ip[ip(pod_ip("x", "a"))]) == "x/a"


def test_speed_of_a_full_table():
    """81 pairs x 40 policies stays well inside the fast tier (a pure reference, not the dataplane)."""
    pols = [np("x", f"p{i}", POD("a"), ingress=[{"from": [{"namespaceSelector": NS_Y, "podSelector": POD("b")}],
                                                  "ports": [{"port": 1000 + i}]}]) for i in range(40)]
    c = cluster(ALL_PODS, pols)
    t = time.perf_counter()
    _table(c, ALL_PODS, 80, "TCP")
    assert time.perf_counter() - t < 0.5



# --- part 3: the set-shaped helpers a compiler uses agree with the predicates verdict() uses ----------------------

@pytest.mark.parametrize("case", UPSTREAM[::3], ids=[c.name for c in UPSTREAM[::3]])
def test_selected_and_peer_pods_agree_with_the_predicates(case: Case):
    h = agnhost_pod("x", "h", labels={"pod": "a"}, ips=("192.168.0.10",), hostNetwork=True)
    c = cluster(ALL_PODS, case.policies, case.ns_labels, case.pod_labels, extra_pods=[h])
    for pol in c.policies:
        assert selected_pods(c, pol) == tuple(p for p in c.pods if selects(pol, p))
        for rule in pol.ingress + pol.egress:
            for peer in rule.peers:
                assert peer_pods(c, pol, peer) == tuple(p for p in c.pods if peer_selects(c, pol, peer, p))
                assert h not in peer_pods(c, pol, peer)


@pytest.mark.parametrize("cidr,excepts", [
    ("10.0.0.0/24", ["10.0.0.7/32", "10.0.0.64/26", "10.0.0.64/27", "10.0.0.200/30"]),  # nested and separate holes
    ("10.0.0.0/24", []),
    ("10.0.0.0/24", ["10.0.0.0/25", "10.0.0.128/25"]),  # nothing left
    ("fd00::/120", ["fd00::80/121", "fd00::3/128"]),
])
def test_ipblock_nets_are_the_block_minus_the_holes(cidr, excepts):
    block = IPBlock(ipaddress.ip_network(cidr), tuple(ipaddress.ip_network(e) for e in excepts))
    nets = block.nets()
    covered = [a for n in nets for a in n]
    assert len(covered) == len(set(covered))  # disjoint
    assert set(covered) == {a for a in block.cidr if block.contains(a)}
    assert list(nets) == sorted(nets)


def test_port_range_resolves_names_on_the_destination():
    b = agnhost_pod("y", "b", ports={"http": 8080})
    assert port_range(Port("TCP", "http"), b) == ("TCP", 8080, 8080)
    assert port_range(Port("UDP", "http"), b) is None  # the name is TCP on that pod
    assert port_range(Port("TCP", "http"), None) is None  # an address that is no pod
    assert port_range(Port("TCP", "nope"), b) is None
    assert port_range(Port("SCTP", 80, 90), None) == ("SCTP", 80, 90)
    assert port_range(Port("UDP", 53), None) == ("UDP", 53, 53)
    assert port_range(Port("TCP"), None) == ("TCP", 1, 65535)
