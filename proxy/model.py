"""What the Service proxy needs to know, as frozen dataclasses.

Only the fields that change the dataplane are kept. API objects are converted at the
edge (proxy.from_api); nothing below that edge sees dicts or the Kubernetes client.
Addresses are `ipaddress` objects so the planner can split by family without parsing.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")

ZONE_LABEL = "topology.kubernetes.io/zone"


@dataclass(frozen=True)
class ServicePort:
    name: str  # "" for a single unnamed port
    protocol: str  # TCP | UDP | SCTP
    port: int
    node_port: int = 0  # 0: none
    target_port: Union[int, str] = 0  # informational: slices carry the resolved port


@dataclass(frozen=True)
class LoadBalancerIngress:
    ip: IPAddress
    ip_mode: str = "VIP"  # "VIP" | "Proxy" (Proxy: the LB delivers to nodes itself)


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: tuple[IPAddress, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[IPAddress, ...] = ()
    lb_ingress: tuple[LoadBalancerIngress, ...] = ()
    lb_source_ranges: tuple[IPNetwork, ...] = ()
    session_affinity: str = "None"  # "None" | "ClientIP"
    affinity_timeout: int = 10800  # seconds, API default
    external_traffic_policy: str = "Cluster"  # "Cluster" | "Local"
    internal_traffic_policy: str = "Cluster"  # "Cluster" | "Local"
    health_check_node_port: int = 0
    traffic_distribution: str = ""  # e.g. "PreferClose"
    ip_families: tuple[int, ...] = (4,)  # 4 and/or 6

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def external_local(self) -> bool:
        return self.external_traffic_policy == "Local"

    @property
    def internal_local(self) -> bool:
        return self.internal_traffic_policy == "Local"


@dataclass(frozen=True)
class EndpointPort:
    name: str  # matches ServicePort.name
    protocol: str
    port: int


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[IPAddress, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    hint_zones: tuple[str, ...] = ()
    hint_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str  # from label kubernetes.io/service-name
    address_family: int  # 4 | 6
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    trigger_time: float | None = None  # endpoints.kubernetes.io/last-change-trigger-time, epoch s

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def service_key(self) -> tuple[str, str]:
        return (self.namespace, self.service_name)


@dataclass(frozen=True)
class NodeInfo:
    name: str
    addresses: tuple[IPAddress, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def zone(self) -> str:
        return dict(self.labels).get(ZONE_LABEL, "")


@dataclass(frozen=True)
class ProxyConfig:
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    masquerade_all: bool = False
    masquerade_mark: int = 0x4000
    table_name: str = "podwire-proxy"

    def cidrs(self, family: int) -> tuple[IPNetwork, ...]:
        return tuple(c for c in self.cluster_cidrs if c.version == family)
