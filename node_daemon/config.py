"""Daemon configuration: defaults < config file (JSON, or YAML when PyYAML is present) < flags.

Every path and port is configurable: the test harness runs one daemon per node namespace on a
single machine, so nothing may assume it is alone on the host.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import socket
from dataclasses import dataclass

from proxy.conntrack_settings import MAX_TIMEOUT  # the kernel's bound on conntrack timeouts

from .cniconf import CniSettings
from .model import IPNetwork, parse_ip, parse_network
from .netlink import DEFAULT_ROUTE_PROTOCOL
from .plan import Mode, VxlanSettings


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    node_name: str
    kubeconfig: str | None = None  # None: in-cluster service account
    mode: Mode = Mode.AUTO
    underlay_interface: str | None = None  # None: the interface holding the node's InternalIP
    cluster_cidrs: tuple = ()  # egress masquerade is off while empty
    vxlan: VxlanSettings = VxlanSettings()
    cni: CniSettings = CniSettings()
    route_protocol: int = DEFAULT_ROUTE_PROTOCOL
    metrics_address: str = "127.0.0.1:9465"
    min_sync_interval: float = 1.0
    resync_interval: float = 30.0
    egress: bool = True
    ensure_forwarding: bool = True  # sysctls of the daemon's own netns only
    proxy_enabled: bool = False
    proxy_healthz_address: str = "0.0.0.0:10256"  # kube-proxy's port, served by the proxy
    # kube-proxy's metrics address (/healthz, /proxyMode, /metrics); "" or port 0: not served
    proxy_metrics_address: str = "127.0.0.1:10249"
    # conntrack sysctls the proxy sets as kube-proxy does (proxy/conntrack_settings.py), in seconds;
    # 0 leaves one as it is. Both are per network namespace: the daemon's own only.
    conntrack_tcp_timeout_close_wait: int = 3600
    conntrack_tcp_timeout_established: int = 86400
    # nf_conntrack_max = max(per_core * cores, conntrack_min), host-global (writable only from the
    # host's initial namespace): 0, the default, leaves it alone; kube-proxy's per-core value is 32768
    conntrack_max_per_core: int = 0
    conntrack_min: int = 131072
    policy_enabled: bool = False  # NetworkPolicy (policy/)
    # where the CNI plugin asks, at every ADD, for its pod's policy to be in force before the pod
    # starts (policy/gate.py); the directory is the node's own (a hostPath in the DaemonSet)
    policy_socket: str = "/run/podwire/policy.sock"
    policy_log_group: int = 100  # nflog group of denied packets (per network namespace)
    # LoadBalancer addresses (loadbalancer/): pools, the allocator (one daemon at a time, by Lease)
    # and ARP/NDP answers for the addresses this node holds a Lease for
    loadbalancer_enabled: bool = False
    loadbalancer_namespace: str = "podwire"  # where its Leases live (the daemon's own namespace)
    loadbalancer_lease_seconds: int = 6  # a dead holder's addresses move after this long
    log_level: str = "INFO"


_NESTED = {"vxlan": VxlanSettings, "cni": CniSettings}


def from_dict(d: dict, base: Config) -> Config:
    if not isinstance(d, dict):
        raise ConfigError("the config must be a map of keys to values")
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown config keys: {sorted(map(str, unknown))}")
    updates = {}
    for k, v in d.items():
        if k in _NESTED:
            sub = _NESTED[k]
            if not isinstance(v, dict):
                raise ConfigError(f"{k}: must be a map")
            bad = set(v) - {f.name for f in dataclasses.fields(sub)}
            if bad:
                raise ConfigError(f"unknown keys in {k}: {sorted(map(str, bad))}")
            v = dataclasses.replace(getattr(base, k), **v)
        updates[k] = v
    return validate(dataclasses.replace(base, **updates))


# Config values reach netlink (interface names), file paths, sockets and nft text (cluster CIDRs):
# each is checked for its type and alphabet here, so nothing later needs to.
_IFNAME = re.compile(r"[A-Za-z0-9_.\-]{1,15}")  # the kernel's rules (no '/', ':', spaces), ASCII only
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # what the API accepts for a Node
_FILE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,255}")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FIRST_ROUTE_PROTOCOL = 5  # 0-4 are the kernel's own (unspec, redirect, kernel, boot, static)


def _check(ok: bool, what: str, value) -> None:
    if not ok:
        raise ConfigError(f"bad {what}: {value!r:.100}")


def _ifname(value, what: str) -> None:
    _check(isinstance(value, str) and bool(_IFNAME.fullmatch(value)) and value not in (".", ".."),
           f"{what} (an interface name: 1-15 of A-Z a-z 0-9 _ . -)", value)


def _path(value, what: str) -> None:
    _check(isinstance(value, str) and value != "" and not any(ch in value for ch in "\0\n\r"), what, value)


def _int(value, what: str, lo: int, hi: int) -> None:
    _check(type(value) is int and lo <= value <= hi, f"{what} (an integer {lo}-{hi})", value)


def _address(value, what: str) -> None:
    """host:port with an IP literal host ([..] for IPv6): a name would need resolving."""
    try:
        host, sep, port = value.rpartition(":")
        parse_ip(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
        ok = bool(sep) and port.isdigit() and port.isascii() and 0 < int(port) < 65536
    except (AttributeError, ValueError):
        ok = False
    _check(ok, f"{what} (IP:port)", value)


def _optional_address(value, what: str) -> None:
    """host:port as _address, or switched off: "" or port 0."""
    if value == "":
        return
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    _address(f"{host}:1" if sep and port == "0" else value, what)  # the host must parse either way


def validate(c: Config) -> Config:
    try:
        mode = Mode(c.mode)
    except (ValueError, TypeError):
        raise ConfigError(f"bad mode {c.mode!r:.50}") from None
    _check(isinstance(c.cluster_cidrs, (list, tuple)), "cluster_cidrs (a list)", c.cluster_cidrs)
    try:
        # already typed when flags refine a config file: checked again, through its text
        cidrs = tuple(parse_network(str(x) if isinstance(x, IPNetwork) else x) for x in c.cluster_cidrs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not c.node_name:
        raise ConfigError("node name is required (--node-name or NODE_NAME)")
    _check(isinstance(c.node_name, str) and bool(_NODE_NAME.fullmatch(c.node_name)),
           "node name (a lowercase DNS name, as Kubernetes names Nodes)", c.node_name)
    _int(c.vxlan.vni, "VXLAN vni", 1, 2**24 - 1)
    _int(c.vxlan.port, "VXLAN port", 1, 65535)
    _ifname(c.vxlan.device, "VXLAN device")
    if c.underlay_interface is not None:
        _ifname(c.underlay_interface, "underlay interface")
    _ifname(c.cni.bridge, "CNI bridge")
    _check(isinstance(c.cni.conf_name, str) and bool(_FILE_NAME.fullmatch(c.cni.conf_name))
           and c.cni.conf_name not in (".", ".."), "CNI conf_name (a file name)", c.cni.conf_name)
    for what in ("conf_dir", "log_file", "data_dir"):
        _path(getattr(c.cni, what), f"CNI {what}")
    if c.kubeconfig is not None:
        _path(c.kubeconfig, "kubeconfig")
    _int(c.route_protocol, "route protocol", FIRST_ROUTE_PROTOCOL, 255)
    _address(c.metrics_address, "metrics address")
    _address(c.proxy_healthz_address, "proxy healthz address")
    _optional_address(c.proxy_metrics_address, "proxy metrics address")
    for what in ("conntrack_tcp_timeout_close_wait", "conntrack_tcp_timeout_established"):
        _int(getattr(c, what), f"{what} (seconds; 0 leaves it)", 0, MAX_TIMEOUT)
    _int(c.conntrack_max_per_core, "conntrack_max_per_core (0 leaves nf_conntrack_max)", 0, 2**24)
    _int(c.conntrack_min, "conntrack_min", 0, 2**31 - 1)
    for what in ("min_sync_interval", "resync_interval"):
        v = getattr(c, what)
        _check(type(v) in (int, float) and math.isfinite(v) and v > 0, f"{what} (seconds > 0)", v)
    _path(c.policy_socket, "policy socket")
    _check(c.policy_socket.startswith("/") and len(c.policy_socket.encode()) < 108,
           "policy socket (an absolute path under 108 bytes)", c.policy_socket)
    _int(c.policy_log_group, "policy log group", 1, 65535)
    _check(isinstance(c.loadbalancer_namespace, str) and bool(_NODE_NAME.fullmatch(c.loadbalancer_namespace))
           and len(c.loadbalancer_namespace) <= 63, "loadbalancer namespace (a namespace name)",
           c.loadbalancer_namespace)
    _int(c.loadbalancer_lease_seconds, "loadbalancer lease seconds", 2, 300)
    for what in ("egress", "ensure_forwarding", "proxy_enabled", "policy_enabled", "loadbalancer_enabled"):
        _check(type(getattr(c, what)) is bool, f"{what} (true or false)", getattr(c, what))
    _check(isinstance(c.log_level, str) and c.log_level.upper() in _LOG_LEVELS,
           f"log level ({', '.join(_LOG_LEVELS)})", c.log_level)
    return dataclasses.replace(c, mode=mode, cluster_cidrs=cidrs)


def _load_file(path: str) -> dict:
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ConfigError("YAML config needs PyYAML; use JSON") from None
        return yaml.safe_load(text) or {}
    return json.loads(text)


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(prog="podwire-daemon", description="podwire node daemon")
    p.add_argument("--config", help="JSON (or YAML) config file")
    p.add_argument("--node-name")
    p.add_argument("--kubeconfig", help="default: in-cluster service account")
    p.add_argument("--mode", choices=[m.value for m in Mode])
    p.add_argument("--underlay-interface")
    p.add_argument("--cluster-cidr", action="append", dest="cluster_cidrs",
                   help="repeat for dual-stack; enables egress masquerade")
    p.add_argument("--vxlan-port", type=int)
    p.add_argument("--vxlan-vni", type=int)
    p.add_argument("--vxlan-device")
    p.add_argument("--cni-conf-dir")
    p.add_argument("--cni-conf-name")
    p.add_argument("--metrics-address", help="host:port for /metrics and /healthz")
    p.add_argument("--route-protocol", type=int)
    p.add_argument("--resync-interval", type=float)
    p.add_argument("--proxy", dest="proxy_enabled", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--policy", dest="policy_enabled", action=argparse.BooleanOptionalAction, default=None,
                   help="enforce NetworkPolicies")
    p.add_argument("--policy-socket", help="unix socket the CNI plugin waits on (default /run/podwire/policy.sock)")
    p.add_argument("--loadbalancer", dest="loadbalancer_enabled", action=argparse.BooleanOptionalAction,
                   default=None, help="assign LoadBalancer addresses from LoadBalancerPools and answer for them")
    p.add_argument("--loadbalancer-namespace", help="namespace of its Leases (default podwire)")
    p.add_argument("--loadbalancer-lease-seconds", type=int, help="failover time of an address (default 6)")
    p.add_argument("--egress", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--proxy-metrics-address",
                   help="kube-proxy's metrics address, default 127.0.0.1:10249 (empty or port 0: off)")
    p.add_argument("--conntrack-tcp-timeout-close-wait", type=int, metavar="SECONDS",
                   help="default 3600 (kube-proxy's); 0 leaves it")
    p.add_argument("--conntrack-tcp-timeout-established", type=int, metavar="SECONDS",
                   help="default 86400 (kube-proxy's); 0 leaves it")
    p.add_argument("--conntrack-max-per-core", type=int,
                   help="set the host-global nf_conntrack_max to max(this x cores, --conntrack-min); "
                        "default 0: leave it")
    p.add_argument("--conntrack-min", type=int)
    p.add_argument("--log-level")
    a = p.parse_args(argv)

    try:
        base = Config(node_name=os.environ.get("NODE_NAME") or socket.gethostname())
        cfg = from_dict(_load_file(a.config), base) if a.config else base
        flags = {k: v for k, v in {
            "node_name": a.node_name, "kubeconfig": a.kubeconfig, "mode": a.mode,
            "underlay_interface": a.underlay_interface, "cluster_cidrs": a.cluster_cidrs,
            "metrics_address": a.metrics_address, "route_protocol": a.route_protocol,
            "resync_interval": a.resync_interval, "proxy_enabled": a.proxy_enabled,
            "egress": a.egress, "log_level": a.log_level, "policy_enabled": a.policy_enabled,
            "policy_socket": a.policy_socket, "proxy_metrics_address": a.proxy_metrics_address,
            "conntrack_tcp_timeout_close_wait": a.conntrack_tcp_timeout_close_wait,
            "conntrack_tcp_timeout_established": a.conntrack_tcp_timeout_established,
            "conntrack_max_per_core": a.conntrack_max_per_core, "conntrack_min": a.conntrack_min,
            "loadbalancer_enabled": a.loadbalancer_enabled, "loadbalancer_namespace": a.loadbalancer_namespace,
            "loadbalancer_lease_seconds": a.loadbalancer_lease_seconds,
        }.items() if v is not None}
        vx = {k: v for k, v in {"port": a.vxlan_port, "vni": a.vxlan_vni, "device": a.vxlan_device}.items()
              if v is not None}
        cni = {k: v for k, v in {"conf_dir": a.cni_conf_dir, "conf_name": a.cni_conf_name}.items()
               if v is not None}
        if vx:
            flags["vxlan"] = vx
        if cni:
            flags["cni"] = cni
        return from_dict(flags, cfg)
    except (ConfigError, OSError, json.JSONDecodeError) as e:
        p.error(str(e))

