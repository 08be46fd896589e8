"""API JSON (as `json.loads` of a list/watch response gives it) -> proxy.model objects.

Each converter handles exactly one object and raises a `Skip` subclass when the object
gets no rules; the caller logs the reason and goes on with the others, so one odd object
never breaks a sync. This module must not import the `kubernetes` client: the node daemon
hands us plain dicts and the proxy stays testable without it.
"""
from __future__ import annotations

import functools
import ipaddress
import re
from datetime import datetime
from typing import Any, Iterable

from proxy.model import (
    PROTOCOLS,
    SERVICE_TYPES,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    LoadBalancerIngress,
    NodeInfo,
    Service,
    ServicePort,
)

SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"


class Skip(Exception):
    """The object gets no rules; `reason` says why (for the caller's log)."""

    def __init__(self, kind: str, key: str, reason: str):
        reason = reason if len(reason) <= 300 else reason[:300] + "..."  # hostile values are logged too
        super().__init__(f"{kind} {key}: {reason}")
        self.kind, self.key, self.reason = kind, key, reason


class NotOurs(Skip):
    """Selected away by kube-proxy's label selector (another proxy owns it)."""


class NoRules(Skip):
    """A valid object that needs no dataplane rules (headless, ExternalName)."""


class Invalid(Skip):
    """Malformed or inconsistent object."""


# What the API server allows (DNS-1123 subdomains and labels); anything else is not an object it
# could have served. Names end up (hashed, and readable) in nft chain names.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def is_name(value: Any) -> bool:
    """A namespace, object or Node name the API server could have accepted."""
    return isinstance(value, str) and _SUBDOMAIN.fullmatch(value) is not None


def _meta(obj: Any, kind: str) -> tuple[str, str, dict, dict]:
    if not isinstance(obj, dict):
        raise Invalid(kind, "?", f"not an object: {type(obj).__name__}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise Invalid(kind, "?", "metadata.name missing")
    ns, name = meta.get("namespace") or "", meta["name"]
    if not is_name(name) or not (ns == "" or is_name(ns)):
        raise Invalid(kind, f"{ns!r}/{name!r}"[:200], "bad metadata.name or metadata.namespace")
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if not isinstance(labels, dict) or not isinstance(annotations, dict):
        raise Invalid(kind, f"{ns}/{name}", "labels/annotations not a map")
    return ns, name, labels, annotations


def _map(value: Any, kind: str, key: str, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(kind, key, f"{what}: not a map")
    return value


def _str(value: Any, kind: str, key: str, what: str) -> str:
    """An optional free-form string (zones, hints): compared, never rendered."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Invalid(kind, key, f"{what}: not a string: {value!r}"[:200])
    return value


def _sloppy(text: str) -> str:
    """IPv4 octets with leading zeros read as decimal ("010.1.2.3" -> "10.1.2.3").

    The API server still accepts that legacy form (with a warning) in externalIPs, ingress
    IPs, endpoint addresses and source ranges, and kube-proxy reads it so (ParseIPSloppy);
    Python's ipaddress refuses it, which would drop a whole valid Service or slice.
    """
    addr, slash, bits = text.partition("/")
    head, colon, quad = addr.rpartition(":")
    parts = quad.split(".")
    if len(parts) == 4 and all(p.isdigit() and p.isascii() and 0 < len(p) <= 3 for p in parts):
        quad = ".".join(str(int(p)) for p in parts)
    return f"{head}{colon}{quad}{slash}{bits}"


def _text(value: Any) -> str:
    # A string only (an int would be read as a packed address: 5 -> 0.0.0.5), and no IPv6 zone
    # index: ipaddress keeps any text after "%" and prints it back, newlines included.
    if not isinstance(value, str):
        raise ValueError(f"not a string: {value!r}")
    if "%" in value:
        raise ValueError(f"zone index in {value!r}")
    return value


def parse_ip(value: Any):
    """An address as Kubernetes reads it (ParseIPSloppy: no spaces, no zone); ValueError when
    it is none."""
    return ipaddress.ip_address(_sloppy(_text(value)))


def parse_network(value: Any):
    """A CIDR; surrounding spaces are trimmed, as the API server does for source ranges."""
    return ipaddress.ip_network(_sloppy(_text(value).strip()), strict=False)


def _ip(value: Any, kind: str, key: str, what: str):
    try:
        return parse_ip(value)
    except ValueError:
        raise Invalid(kind, key, f"{what}: bad IP {value!r}") from None


def _port(value: Any, kind: str, key: str, what: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(kind, key, f"{what}: not an integer: {value!r}")
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise Invalid(kind, key, f"{what}: out of range: {value}")
    return value


def _protocol(value: Any, kind: str, key: str) -> str:
    proto = value or "TCP"
    if not isinstance(proto, str) or proto not in PROTOCOLS:
        raise Invalid(kind, key, f"unsupported protocol {proto!r}"[:200])
    return proto


def _port_name(value: Any, kind: str, key: str) -> str:
    name = value or ""
    if name and not (isinstance(name, str) and _LABEL.fullmatch(name)):
        raise Invalid(kind, key, f"bad port name {name!r}"[:200])
    return name


def _guarded(kind: str):
    """A malformed object is Invalid, whatever the shape of the malformation: an exception of
    any other type would escape the watch handler, or stop every later sync."""
    def decorate(convert):
        @functools.wraps(convert)
        def wrapper(obj: Any):
            try:
                return convert(obj)
            except Skip:
                raise
            except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError) as e:
                raise Invalid(kind, "?", f"malformed: {type(e).__name__}: {e}") from None
        return wrapper
    return decorate


def _list(value: Any, kind: str, key: str, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(kind, key, f"{what}: not a list")
    return value


@_guarded("Service")
def service_from_api(obj: Any) -> Service:
    kind = "Service"
    ns, name, labels, _ = _meta(obj, kind)
    key = f"{ns}/{name}"
    if SERVICE_PROXY_NAME in labels:
        raise NotOurs(kind, key, f"label {SERVICE_PROXY_NAME}={labels[SERVICE_PROXY_NAME]!r}")
    if HEADLESS_LABEL in labels:
        raise NotOurs(kind, key, f"label {HEADLESS_LABEL}")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise Invalid(kind, key, "spec missing")
    svc_type = spec.get("type") or "ClusterIP"
    if svc_type not in SERVICE_TYPES:
        raise Invalid(kind, key, f"unknown type {svc_type!r}")
    if svc_type == "ExternalName":
        raise NoRules(kind, key, "type ExternalName (DNS only)")
    raw_ips = _list(spec.get("clusterIPs"), kind, key, "clusterIPs") or (
        [spec["clusterIP"]] if spec.get("clusterIP") else []
    )
    if not raw_ips or raw_ips[0] in ("None", ""):
        raise NoRules(kind, key, "headless (clusterIP None)")
    cluster_ips = tuple(_ip(v, kind, key, "clusterIPs") for v in raw_ips)
    if len({ip.version for ip in cluster_ips}) != len(cluster_ips):
        raise Invalid(kind, key, "two clusterIPs of one family")

    ports = []
    seen = set()
    for p in _list(spec.get("ports"), kind, key, "ports"):
        if not isinstance(p, dict):
            raise Invalid(kind, key, "port entry not an object")
        proto = _protocol(p.get("protocol"), kind, key)
        port = _port(p.get("port"), kind, key, "port")
        pname = _port_name(p.get("name"), kind, key)
        if (pname, proto) in seen or (proto, port) in seen:
            raise Invalid(kind, key, f"duplicate port {pname or port}/{proto}")
        seen.update({(pname, proto), (proto, port)})
        node_port = p.get("nodePort") or 0
        if node_port:
            node_port = _port(node_port, kind, key, "nodePort")
        target = p.get("targetPort", port)
        if not isinstance(target, (int, str)) or isinstance(target, bool):
            raise Invalid(kind, key, f"bad targetPort {target!r}")
        ports.append(ServicePort(pname, proto, port, node_port, target))

    families = []
    for fam in _list(spec.get("ipFamilies"), kind, key, "ipFamilies"):
        if fam not in ("IPv4", "IPv6"):
            raise Invalid(kind, key, f"bad ipFamily {fam!r}")
        families.append(4 if fam == "IPv4" else 6)
    if not families:
        families = [ip.version for ip in cluster_ips]

    affinity = spec.get("sessionAffinity") or "None"
    if affinity not in ("None", "ClientIP"):
        raise Invalid(kind, key, f"bad sessionAffinity {affinity!r}")
    timeout = 10800
    cfg = _map(_map(spec.get("sessionAffinityConfig"), kind, key, "sessionAffinityConfig").get("clientIP"),
               kind, key, "sessionAffinityConfig.clientIP")
    if affinity == "ClientIP" and cfg.get("timeoutSeconds") is not None:
        timeout = cfg["timeoutSeconds"]
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= 86400:
            raise Invalid(kind, key, f"bad affinity timeout {timeout!r}")

    etp = spec.get("externalTrafficPolicy") or "Cluster"
    itp = spec.get("internalTrafficPolicy") or "Cluster"
    for what, val in (("externalTrafficPolicy", etp), ("internalTrafficPolicy", itp)):
        if val not in ("Cluster", "Local"):
            raise Invalid(kind, key, f"bad {what} {val!r}")

    ingress = []
    if svc_type == "LoadBalancer":
        lb = _map(_map(obj.get("status"), kind, key, "status").get("loadBalancer"), kind, key, "loadBalancer")
        for ing in _list(lb.get("ingress"), kind, key, "status.loadBalancer.ingress"):
            if isinstance(ing, dict) and ing.get("ip"):  # hostname-only ingress: nothing to match
                mode = ing.get("ipMode") or "VIP"
                if mode not in ("VIP", "Proxy"):
                    raise Invalid(kind, key, f"bad ingress ipMode {mode!r}")
                ingress.append(LoadBalancerIngress(_ip(ing["ip"], kind, key, "ingress"), mode))
    ranges = []
    for r in _list(spec.get("loadBalancerSourceRanges"), kind, key, "loadBalancerSourceRanges"):
        try:
            ranges.append(parse_network(r))
        except ValueError:
            raise Invalid(kind, key, f"bad loadBalancerSourceRange {r!r}") from None
    hc = spec.get("healthCheckNodePort") or 0
    if hc:
        hc = _port(hc, kind, key, "healthCheckNodePort")

    return Service(
        namespace=ns,
        name=name,
        type=svc_type,
        cluster_ips=cluster_ips,
        ports=tuple(ports),
        external_ips=tuple(_ip(v, kind, key, "externalIPs")
                           for v in _list(spec.get("externalIPs"), kind, key, "externalIPs")),
        lb_ingress=tuple(ingress),
        lb_source_ranges=tuple(ranges) if svc_type == "LoadBalancer" else (),
        session_affinity=affinity,
        affinity_timeout=timeout,
        external_traffic_policy=etp,
        internal_traffic_policy=itp,
        health_check_node_port=hc,
        traffic_distribution=_str(spec.get("trafficDistribution"), kind, key, "trafficDistribution"),
        ip_families=tuple(families),
    )


def _condition(conds: dict, name: str, default: bool, kind: str, key: str) -> bool:
    v = conds.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):  # bool("false") is True
        raise Invalid(kind, key, f"condition {name}: not a boolean: {v!r}")
    return v


def _hint_names(hints: dict, field: str, kind: str, key: str) -> tuple[str, ...]:
    out = []
    for h in _list(hints.get(field), kind, key, f"hints.{field}"):
        name = _str(_map(h, kind, key, f"hints.{field}").get("name"), kind, key, f"hints.{field}.name")
        if name:
            out.append(name)
    return tuple(out)


def _trigger_time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None  # a bad annotation costs only the latency metric


@_guarded("EndpointSlice")
def slice_from_api(obj: Any) -> EndpointSlice:
    kind = "EndpointSlice"
    ns, name, labels, annotations = _meta(obj, kind)
    key = f"{ns}/{name}"
    svc_name = labels.get(SERVICE_NAME_LABEL)
    if not svc_name:
        raise NotOurs(kind, key, f"no label {SERVICE_NAME_LABEL}")
    if not is_name(svc_name):
        raise Invalid(kind, key, f"bad label {SERVICE_NAME_LABEL}={svc_name!r}")
    if SERVICE_PROXY_NAME in labels:
        raise NotOurs(kind, key, f"label {SERVICE_PROXY_NAME}")
    if HEADLESS_LABEL in labels:
        raise NotOurs(kind, key, f"label {HEADLESS_LABEL}")
    addr_type = obj.get("addressType")
    if addr_type == "FQDN":
        raise NoRules(kind, key, "addressType FQDN")
    if addr_type not in ("IPv4", "IPv6"):
        raise Invalid(kind, key, f"bad addressType {addr_type!r}")
    family = 4 if addr_type == "IPv4" else 6

    ports = []
    for p in _list(obj.get("ports"), kind, key, "ports"):
        if not isinstance(p, dict):
            raise Invalid(kind, key, "port entry not an object")
        if p.get("port") is None:  # "all ports" slices: nothing a proxy can DNAT to
            continue
        ports.append(EndpointPort(_port_name(p.get("name"), kind, key), _protocol(p.get("protocol"), kind, key),
                                  _port(p["port"], kind, key, "port")))

    endpoints = []
    for ep in _list(obj.get("endpoints"), kind, key, "endpoints"):
        if not isinstance(ep, dict):
            raise Invalid(kind, key, "endpoint not an object")
        addrs = tuple(_ip(a, kind, key, "endpoint address")
                      for a in _list(ep.get("addresses"), kind, key, "addresses"))
        if not addrs:
            continue
        if any(a.version != family for a in addrs):
            raise Invalid(kind, key, f"address family does not match addressType {addr_type}")
        conds = _map(ep.get("conditions"), kind, key, "conditions")
        ready = _condition(conds, "ready", True, kind, key)  # nil: unknown, read as ready (API doc)
        hints = _map(ep.get("hints"), kind, key, "hints")
        endpoints.append(Endpoint(
            addresses=addrs,
            ready=ready,
            serving=_condition(conds, "serving", ready, kind, key),
            terminating=_condition(conds, "terminating", False, kind, key),
            node_name=_str(ep.get("nodeName"), kind, key, "nodeName"),
            zone=_str(ep.get("zone"), kind, key, "zone"),
            hint_zones=_hint_names(hints, "forZones", kind, key),
            hint_nodes=_hint_names(hints, "forNodes", kind, key),
        ))
    return EndpointSlice(ns, name, svc_name, family, tuple(endpoints), tuple(ports),
                         _trigger_time(annotations.get(TRIGGER_TIME)))


@_guarded("Node")
def node_from_api(obj: Any) -> NodeInfo:
    kind = "Node"
    _, name, labels, _ = _meta(obj, kind)
    addrs = []
    for a in _list(_map(obj.get("status"), kind, name, "status").get("addresses"), kind, name, "addresses"):
        if isinstance(a, dict) and a.get("type") in ("InternalIP", "ExternalIP"):
            try:
                addrs.append(parse_ip(a.get("address", "")))
            except ValueError:
                continue  # a hostname or junk: not an address we can use
    # Only topology labels matter to the planner; other label churn must not replan everything.
    topo = tuple(sorted((str(k), str(v)) for k, v in labels.items() if str(k).startswith("topology.kubernetes.io/")))
    return NodeInfo(name, tuple(addrs), topo)


def convert_all(objs: Iterable[Any], convert) -> tuple[list, list[Skip]]:
    """Convert a LIST response's items; skipped ones come back with their reasons."""
    good, skipped = [], []
    for obj in objs:
        try:
            good.append(convert(obj))
        except Skip as e:
            skipped.append(e)
    return good, skipped
