"""The edge: LoadBalancerPool and Service objects (plain API dicts) -> loadbalancer.model records.

Every value is parsed into a typed one here: addresses with ipaddress, ports as ints in range,
names and keys against the API's alphabets. A malformed object raises Invalid (the controller logs
it and leaves that object's status as it is); readable objects with a bad *request* in their
annotations become an LBService with request_error set, so the user sees why in its condition.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from policy.selector import EVERYTHING, SelectorError, parse_selector
from proxy.from_api import is_name, parse_ip, parse_network

from .model import (
    ANN_IPS,
    ANN_POOL,
    ANN_SHARING,
    CONDITION,
    FINALIZER,
    OUR_CLASS,
    AddressRange,
    ClusterAddresses,
    LBService,
    Pool,
)

MAX_POOL_ENTRIES = 64  # the CRD's schema says the same; a hand-made object may not
_FAMILIES = {"IPv4": 4, "IPv6": 6}
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_KEY = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")  # a sharing key: a label value


class Invalid(ValueError):
    def __init__(self, kind: str, key: str, why: str):
        super().__init__(f"{kind} {key}: {why}"[:300])
        self.kind, self.key, self.why = kind, key, why


@dataclass(frozen=True)
class Release:
    """A Service we served that is no longer ours (deleted, type or class changed): its status
    address and our condition are cleared, and the finalizer removed."""

    namespace: str
    name: str
    deleting: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _dict(value: Any, kind: str, key: str, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(kind, key, f"{what}: not a map")
    return value


def _list(value: Any, kind: str, key: str, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(kind, key, f"{what}: not a list")
    return value


def parse_entry(text: Any) -> AddressRange:
    """"10.0.0.0/28", "fd00::/120", "10.0.0.5-10.0.0.9" or one address -> AddressRange; ValueError."""
    if not isinstance(text, str) or not text.isascii() or len(text) > 100 or "%" in text:
        raise ValueError(f"not an address, CIDR or range: {str(text)[:100]!r}")
    t = text.strip()
    if "/" in t:
        net = ipaddress.ip_network(t, strict=True)  # 10.0.0.1/24 is a mistake worth saying so
        return AddressRange(net[0], net[-1], cidr=True)
    first, dash, last = t.partition("-")
    a = ipaddress.ip_address(first.strip())
    b = ipaddress.ip_address(last.strip()) if dash else a
    return AddressRange(a, b)


def pool_from_api(obj: Any) -> Pool:
    if not isinstance(obj, dict):
        raise Invalid("LoadBalancerPool", "?", "not an object")
    meta = _dict(obj.get("metadata"), "LoadBalancerPool", "?", "metadata")
    name = meta.get("name")
    if not is_name(name):
        raise Invalid("LoadBalancerPool", str(name)[:100], "bad metadata.name")
    assert isinstance(name, str)
    spec = _dict(obj.get("spec"), "LoadBalancerPool", name, "spec")
    entries = _list(spec.get("addresses"), "LoadBalancerPool", name, "spec.addresses")
    if not entries or len(entries) > MAX_POOL_ENTRIES:
        raise Invalid("LoadBalancerPool", name, f"spec.addresses: 1 to {MAX_POOL_ENTRIES} entries")
    ranges = []
    for e in entries:
        try:
            ranges.append(parse_entry(e))
        except ValueError as err:
            raise Invalid("LoadBalancerPool", name, f"spec.addresses: {err}") from None
    for i, r in enumerate(ranges):
        for s in ranges[:i]:
            if r.overlaps(s):
                raise Invalid("LoadBalancerPool", name, f"spec.addresses: {r} overlaps {s}")
    selector = EVERYTHING
    if spec.get("serviceSelector") is not None:
        try:
            selector = parse_selector(spec["serviceSelector"])
        except SelectorError as err:
            raise Invalid("LoadBalancerPool", name, f"spec.serviceSelector: {err}") from None
    auto = spec.get("autoAssign", True)
    if not isinstance(auto, bool):
        raise Invalid("LoadBalancerPool", name, "spec.autoAssign: not a boolean")
    created = meta.get("creationTimestamp") or ""
    return Pool(name, tuple(ranges), selector, auto, created if isinstance(created, str) else "")


def _ours(spec: dict) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("loadBalancerClass") in (None, OUR_CLASS)


def _was_ours(obj: dict) -> bool:
    """We set our condition on every Service we serve; nothing else sets it."""
    status = obj.get("status")
    conds = status.get("conditions") if isinstance(status, dict) else None
    return isinstance(conds, list) and any(isinstance(c, dict) and c.get("type") == CONDITION for c in conds)


def _requested(spec: dict, annotations: dict) -> tuple[tuple, str]:
    """(requested addresses, error text)."""
    texts = []
    ann = annotations.get(ANN_IPS)
    if ann is not None:
        if not isinstance(ann, str):
            return (), f"{ANN_IPS}: not a string"
        texts = [t.strip() for t in ann.split(",") if t.strip()]
    elif spec.get("loadBalancerIP"):
        texts = [spec["loadBalancerIP"]]
    ips = []
    for t in texts[:3]:
        try:
            ips.append(parse_ip(t))
        except ValueError:
            return (), f"{ANN_IPS}: not an address: {str(t)[:60]!r}"
    if len(texts) > 2 or len({ip.version for ip in ips}) != len(ips):
        return (), f"{ANN_IPS}: at most one address per family"
    return tuple(ips), ""


def service_from_api(obj: Any) -> LBService | Release | None:
    """An LBService when it is ours to serve, a Release when we served it and no longer do,
    None when it is none of our business."""
    if not isinstance(obj, dict):
        raise Invalid("Service", "?", "not an object")
    meta = _dict(obj.get("metadata"), "Service", "?", "metadata")
    ns, name = meta.get("namespace"), meta.get("name")
    if not is_name(ns) or not is_name(name):
        raise Invalid("Service", f"{str(ns)[:64]}/{str(name)[:64]}", "bad metadata.name or namespace")
    assert isinstance(ns, str) and isinstance(name, str)
    key = f"{ns}/{name}"
    spec = _dict(obj.get("spec"), "Service", key, "spec")
    deleting = bool(meta.get("deletionTimestamp"))
    if not _ours(spec) or deleting:
        finalized = FINALIZER in (meta.get("finalizers") or [])
        return Release(ns, name, deleting) if _was_ours(obj) or (deleting and _ours(spec) and finalized) else None
    labels = _dict(meta.get("labels"), "Service", key, "labels")
    annotations = _dict(meta.get("annotations"), "Service", key, "annotations")
    families = []
    for f in _list(spec.get("ipFamilies"), "Service", key, "spec.ipFamilies") or ["IPv4"]:
        if f not in _FAMILIES or _FAMILIES[f] in families:
            raise Invalid("Service", key, f"spec.ipFamilies: bad entry {str(f)[:20]!r}")
        families.append(_FAMILIES[f])
    policy = spec.get("ipFamilyPolicy") or "SingleStack"
    if policy not in ("SingleStack", "PreferDualStack", "RequireDualStack"):
        raise Invalid("Service", key, f"spec.ipFamilyPolicy: {str(policy)[:30]!r}")
    ports = set()
    for p in _list(spec.get("ports"), "Service", key, "spec.ports"):
        p = _dict(p, "Service", key, "spec.ports[]")
        proto, port = p.get("protocol", "TCP"), p.get("port")
        if proto not in _PROTOCOLS or not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise Invalid("Service", key, f"spec.ports: bad port {str(port)[:10]}/{str(proto)[:10]}")
        ports.add((proto, port))
    selector = _dict(spec.get("selector"), "Service", key, "spec.selector")
    current = []
    status = _dict(obj.get("status"), "Service", key, "status")
    for ing in _list(_dict(status.get("loadBalancer"), "Service", key, "status.loadBalancer").get("ingress"),
                     "Service", key, "status.loadBalancer.ingress"):
        if isinstance(ing, dict) and ing.get("ip"):
            try:
                current.append(parse_ip(ing["ip"]))
            except ValueError:
                pass  # not one of ours: it is replaced
    requested, error = _requested(spec, annotations)
    pool = annotations.get(ANN_POOL) or ""
    if pool and not is_name(pool):
        error = error or f"{ANN_POOL}: not a pool name: {str(pool)[:60]!r}"
        pool = ""
    sharing = annotations.get(ANN_SHARING) or ""
    if sharing and not (isinstance(sharing, str) and _KEY.fullmatch(sharing)):
        error = error or f"{ANN_SHARING}: not a key (letters, digits, '-', '_', '.'; 63 at most)"
        sharing = ""
    created = meta.get("creationTimestamp") or ""
    return LBService(
        namespace=ns, name=name, families=tuple(families), family_policy=policy,
        labels={k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)},
        created=created if isinstance(created, str) else "", requested=requested, pool=pool,
        sharing_key=sharing, ports=frozenset(ports), local=spec.get("externalTrafficPolicy") == "Local",
        selector=tuple(sorted((str(k), str(v)) for k, v in selector.items())),
        current=tuple(current), request_error=error)


MAX_CLUSTER_ENTRIES = 16  # per object: a Node has a few addresses and pod CIDRs, a ServiceCIDR two CIDRs


def _name(meta: Any) -> str:
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and is_name(name) else "?"


def cluster_addresses(nodes: Any, service_cidrs: Any, cluster_cidrs: Any = ()) -> ClusterAddresses:
    """What pools must not hand out, from Nodes (status.addresses of kind InternalIP/ExternalIP,
    spec.podCIDRs), ServiceCIDR objects (spec.cidrs) and the daemon's configured cluster CIDRs.
    Values that do not parse are skipped: this only narrows what is handed out, and a node whose
    address we cannot read is no reason to stop allocating for everyone."""
    networks: list = []
    addrs: list = []

    def network(text: Any, what: str) -> None:
        try:
            net = parse_network(text)
        except ValueError:
            return
        networks.append((net, f"{what} {net}"))

    for cidr in cluster_cidrs or ():
        network(str(cidr), "pod CIDR (the cluster's)")
    for obj in service_cidrs or ():
        if isinstance(obj, dict) and isinstance(obj.get("spec"), dict):
            cidrs = obj["spec"].get("cidrs")
            for text in (cidrs if isinstance(cidrs, list) else [])[:MAX_CLUSTER_ENTRIES]:
                network(text, f"Service CIDR (ServiceCIDR {_name(obj.get('metadata'))})")
    for obj in nodes or ():
        if not isinstance(obj, dict):
            continue
        name = _name(obj.get("metadata"))
        spec, status = obj.get("spec"), obj.get("status")
        pod_cidrs = spec.get("podCIDRs") if isinstance(spec, dict) else None
        for text in (pod_cidrs if isinstance(pod_cidrs, list) else [])[:MAX_CLUSTER_ENTRIES]:
            network(text, f"pod CIDR of node {name}")
        found = status.get("addresses") if isinstance(status, dict) else None
        for a in (found if isinstance(found, list) else [])[:MAX_CLUSTER_ENTRIES]:
            if isinstance(a, dict) and a.get("type") in ("InternalIP", "ExternalIP"):
                try:
                    addrs.append((parse_ip(a.get("address")), name))
                except ValueError:
                    pass
    # a node's pod CIDR lies inside the cluster's: keep the wider one only, it names the clash
    networks.sort(key=lambda n: (n[0].version, n[0].prefixlen))
    kept: list = []
    for net, what in networks:
        if not any(k.version == net.version and net.subnet_of(k) for k, _ in kept):
            kept.append((net, what))
    return ClusterAddresses(tuple(kept), tuple(sorted(set(addrs), key=lambda a: (a[0].version, int(a[0]), a[1]))))
