"""API objects -> policy.model records: Pods, Namespaces, NetworkPolicies.

Input is what the daemon's informers hand over (plain dicts, as `json.loads` gives them) or the
`kubernetes` client's model objects (turned into the same dicts through their `attribute_map`,
without importing the client). Every value is typed here; a bad object raises `Invalid` (a
`proxy.from_api.Skip`) with a reason for the caller's one log line, never another exception.
The helpers and the `Invalid`/`Skip` pattern are the proxy's (imported, so both edges refuse the
same things).
"""
from __future__ import annotations

import re
import sys
import weakref
from typing import Any

from policy.model import (
    EGRESS,
    INGRESS,
    NAMESPACE_NAME_LABEL,
    NO_NAMED_PORTS,
    IPBlock,
    NamedPort,
    NamedPorts,
    Namespace,
    NetworkPolicy,
    Peer,
    Pod,
    Port,
    Rule,
    default_policy_types,
)
from policy.selector import (
    LabelSelector,
    SelectorError,
    intern_labels,
    is_interned,
    is_label_key,
    is_label_value,
    parse_selector,
)
from proxy.from_api import (  # noqa: F401  (Skip, convert_all: re-exported for callers)
    Invalid,
    Skip,
    _guarded,
    _list,
    _map,
    _port,
    _protocol,
    convert_all,
    is_name,
    parse_ip,
    parse_network,
)

_NS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # DNS-1123 label
# IANA_SVC_NAME: 1-15 of a-z 0-9 '-', at least one letter, no '-' at either end, no '--'.
_SVC_NAME = re.compile(r"(?=.*[a-z])[a-z0-9](-?[a-z0-9])*")
_MAX_DEPTH = 64


def to_plain(obj: Any, depth: int = 0) -> Any:
    """A `kubernetes.client` model object as the API's JSON dict (camelCase keys); dicts, lists and
    scalars pass through. Datetimes and other leaves are kept as they are."""
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    if depth == 0 and isinstance(obj, dict):
        return obj  # the informers' JSON: nothing to convert (and no per-object copy)
    amap = getattr(type(obj), "attribute_map", None)
    if isinstance(amap, dict) and hasattr(type(obj), "openapi_types"):
        out = {}
        for attr, json_key in amap.items():
            value = getattr(obj, attr, None)
            if value is not None:
                out[json_key] = to_plain(value, depth + 1)
        return out
    if isinstance(obj, dict):
        return {k: to_plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, depth + 1) for v in obj]
    return obj


def _metadata(obj: Any, kind: str, namespaced: bool) -> tuple[str, str, dict, str]:
    if not isinstance(obj, dict):
        raise Invalid(kind, "?", f"not an object: {type(obj).__name__}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise Invalid(kind, "?", "metadata missing")
    ns, name = meta.get("namespace"), meta.get("name")
    if not is_name(name):
        raise Invalid(kind, f"{ns!r}/{name!r}"[:200], "bad metadata.name")
    if namespaced and not (isinstance(ns, str) and _NS_NAME.fullmatch(ns)):
        raise Invalid(kind, f"{ns!r}/{name!r}"[:200], "bad metadata.namespace")
    key = f"{ns}/{name}" if namespaced else str(name)
    labels = _map(meta.get("labels"), kind, key, "metadata.labels")
    if not is_interned(labels):  # a label set already shared was checked when it was first seen
        for k, v in labels.items():
            if not is_label_key(k) or not is_label_value(v):
                raise Invalid(kind, key, f"bad label {k!r}={v!r}"[:200])
    uid = meta.get("uid") or ""
    if not isinstance(uid, str) or not re.fullmatch(r"[A-Za-z0-9-]{0,64}", uid):
        raise Invalid(kind, key, f"bad metadata.uid {uid!r}"[:200])
    assert isinstance(name, str)
    return (sys.intern(ns) if isinstance(ns, str) and namespaced else ""), sys.intern(name), labels, uid


def _text(value: Any, kind: str, key: str, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not value.isascii() or not value.isprintable():
        raise Invalid(kind, key, f"{what}: not a plain string: {value!r}"[:200])
    return value


# Shared while some pod holds them (pods of one template have one table).
_NAMED_PORTS: "weakref.WeakValueDictionary[tuple[NamedPort, ...], NamedPorts]" = weakref.WeakValueDictionary()


def _named_ports(spec: dict, kind: str, key: str) -> NamedPorts:
    """Named ports of containers and of restartable init containers (restartPolicy: Always)."""
    containers = list(_list(spec.get("containers"), kind, key, "containers"))
    for c in _list(spec.get("initContainers"), kind, key, "initContainers"):
        if isinstance(c, dict) and c.get("restartPolicy") == "Always":
            containers.append(c)
    found: dict[tuple[str, str], NamedPort] = {}
    for c in containers:
        for p in _list(_map(c, kind, key, "container").get("ports"), kind, key, "ports"):
            p = _map(p, kind, key, "container port")
            name = p.get("name")
            if not name:
                continue  # only named ports can be referenced by a policy
            if not _is_svc_name(name):
                raise Invalid(kind, key, f"bad container port name {name!r}"[:200])
            proto = _protocol(p.get("protocol"), kind, key)
            port = _port(p.get("containerPort"), kind, key, f"containerPort {name}")
            found.setdefault((name, proto), NamedPort(sys.intern(name), proto, port))  # first one wins
    if not found:
        return NO_NAMED_PORTS
    table = tuple(found[k] for k in sorted(found))
    shared = _NAMED_PORTS.get(table)
    if shared is None:
        shared = _NAMED_PORTS[table] = NamedPorts(table)
    return shared


def _is_svc_name(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 15 and value.isascii() and _SVC_NAME.fullmatch(value) is not None


@_guarded("Pod")
def pod_from_api(obj: Any) -> Pod:
    kind = "Pod"
    obj = to_plain(obj)
    ns, name, labels, uid = _metadata(obj, kind, namespaced=True)
    key = f"{ns}/{name}"
    spec = _map(obj.get("spec"), kind, key, "spec")
    status = _map(obj.get("status"), kind, key, "status")
    host_network = spec.get("hostNetwork", False)
    if not isinstance(host_network, bool):
        raise Invalid(kind, key, f"hostNetwork: not a boolean: {host_network!r}"[:200])
    node = _text(spec.get("nodeName"), kind, key, "nodeName")
    if node and not is_name(node):
        raise Invalid(kind, key, f"bad nodeName {node!r}"[:200])
    phase = _text(status.get("phase"), kind, key, "phase") or "Pending"
    if phase not in ("Pending", "Running", "Succeeded", "Failed", "Unknown"):
        raise Invalid(kind, key, f"bad phase {phase!r}")
    raw = [_map(p, kind, key, "podIPs").get("ip") for p in _list(status.get("podIPs"), kind, key, "podIPs")]
    if not raw and status.get("podIP"):
        raw = [status["podIP"]]
    ips = []
    for value in raw:
        try:
            ips.append(parse_ip(value))
        except ValueError:
            raise Invalid(kind, key, f"bad pod IP {value!r}"[:200]) from None
    if len({ip.version for ip in ips}) != len(ips):
        raise Invalid(kind, key, "two pod IPs of one family")
    return Pod(ns, name, uid, sys.intern(node), tuple(ips), intern_labels(labels),
               _named_ports(spec, kind, key), host_network, phase)


@_guarded("Namespace")
def namespace_from_api(obj: Any) -> Namespace:
    kind = "Namespace"
    obj = to_plain(obj)
    _, name, labels, _ = _metadata(obj, kind, namespaced=False)
    if not _NS_NAME.fullmatch(name):
        raise Invalid(kind, name, "namespace name is not a DNS-1123 label")
    # The API server sets this label on every namespace (immutable); dicts written by hand lack it.
    labels = dict(labels, **{NAMESPACE_NAME_LABEL: name})
    return Namespace(name, intern_labels(labels))


def _selector(value: Any, kind: str, key: str, what: str) -> LabelSelector:
    try:
        return parse_selector(value)
    except SelectorError as e:
        raise Invalid(kind, key, f"{what}: {e}") from None


def _ip_block(value: Any, kind: str, key: str) -> IPBlock:
    block = _map(value, kind, key, "ipBlock")
    try:
        cidr = parse_network(block.get("cidr"))
    except ValueError:
        raise Invalid(kind, key, f"ipBlock: bad cidr {block.get('cidr')!r}"[:200]) from None
    excepts = []
    for e in _list(block.get("except"), kind, key, "ipBlock.except"):
        try:
            net = parse_network(e)
        except ValueError:
            raise Invalid(kind, key, f"ipBlock: bad except {e!r}"[:200]) from None
        if net.version != cidr.version or not net.subnet_of(cidr) or net.prefixlen <= cidr.prefixlen:
            raise Invalid(kind, key, f"ipBlock: except {net} is not strictly inside {cidr}")
        excepts.append(net)
    return IPBlock(cidr, tuple(sorted(set(excepts))))


def _peer(value: Any, kind: str, key: str) -> Peer:
    peer = _map(value, kind, key, "peer")
    ps, nss, ipb = peer.get("podSelector"), peer.get("namespaceSelector"), peer.get("ipBlock")
    if ipb is not None:
        if ps is not None or nss is not None:
            raise Invalid(kind, key, "peer: ipBlock together with a selector")
        return Peer(ip_block=_ip_block(ipb, kind, key))
    if ps is None and nss is None:
        raise Invalid(kind, key, "peer: needs podSelector, namespaceSelector or ipBlock")
    return Peer(None if ps is None else _selector(ps, kind, key, "peer podSelector"),
                None if nss is None else _selector(nss, kind, key, "peer namespaceSelector"))


def _policy_port(value: Any, kind: str, key: str) -> Port:
    p = _map(value, kind, key, "ports entry")
    proto = _protocol(p.get("protocol"), kind, key)
    port, end = p.get("port"), p.get("endPort")
    if isinstance(port, str):
        if not _is_svc_name(port):
            raise Invalid(kind, key, f"bad port name {port!r}"[:200])
    elif port is not None:
        port = _port(port, kind, key, "port")
    if end is not None:
        end = _port(end, kind, key, "endPort")
        if not isinstance(port, int):
            raise Invalid(kind, key, "endPort needs a numeric port")
        if end < port:
            raise Invalid(kind, key, f"endPort {end} < port {port}")
    return Port(proto, sys.intern(port) if isinstance(port, str) else port, end)


def _rules(values: Any, kind: str, key: str, direction: str) -> tuple[Rule, ...]:
    field, peers_field = ("ingress", "from") if direction == INGRESS else ("egress", "to")
    rules = []
    for r in _list(values, kind, key, field):
        r = _map(r, kind, key, f"{field} rule")
        peers = tuple(_peer(v, kind, key) for v in _list(r.get(peers_field), kind, key, f"{field}.{peers_field}"))
        ports = tuple(_policy_port(v, kind, key) for v in _list(r.get("ports"), kind, key, f"{field}.ports"))
        rules.append(Rule(peers, ports))
    return tuple(rules)


@_guarded("NetworkPolicy")
def policy_from_api(obj: Any) -> NetworkPolicy:
    kind = "NetworkPolicy"
    obj = to_plain(obj)
    ns, name, _, _ = _metadata(obj, kind, namespaced=True)
    key = f"{ns}/{name}"
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise Invalid(kind, key, "spec missing")
    ps = spec.get("podSelector")
    selector = LabelSelector() if ps is None else _selector(ps, kind, key, "podSelector")  # optional since 1.31
    types = []
    for t in _list(spec.get("policyTypes"), kind, key, "policyTypes"):
        if t not in (INGRESS, EGRESS):
            raise Invalid(kind, key, f"bad policyType {t!r}"[:200])
        if t not in types:
            types.append(t)
    ingress = _rules(spec.get("ingress"), kind, key, INGRESS)
    egress = _rules(spec.get("egress"), kind, key, EGRESS)
    policy_types = default_policy_types(tuple(sorted(types)), bool(egress))
    return NetworkPolicy(ns, name, selector, policy_types, ingress, egress)
