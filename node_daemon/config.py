"""Daemon configuration: defaults < config file (JSON, or YAML when PyYAML is present) < flags.

Every path and port is configurable: the test harness runs one daemon per node namespace on a
single machine, so nothing may assume it is alone on the host.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import socket
from dataclasses import dataclass

from .cniconf import CniSettings
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
    log_level: str = "INFO"


_NESTED = {"vxlan": VxlanSettings, "cni": CniSettings}


def from_dict(d: dict, base: Config) -> Config:
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown config keys: {sorted(unknown)}")
    updates = {}
    for k, v in d.items():
        if k in _NESTED:
            sub = _NESTED[k]
            bad = set(v) - {f.name for f in dataclasses.fields(sub)}
            if bad:
                raise ConfigError(f"unknown keys in {k}: {sorted(bad)}")
            v = dataclasses.replace(getattr(base, k), **v)
        updates[k] = v
    return validate(dataclasses.replace(base, **updates))


def validate(c: Config) -> Config:
    try:
        mode = Mode(c.mode)
        cidrs = tuple(ipaddress.ip_network(x) for x in c.cluster_cidrs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not (1 <= c.vxlan.vni < 2**24) or not (1 <= c.vxlan.port < 65536):
        raise ConfigError(f"bad VXLAN vni/port: {c.vxlan}")
    if not c.node_name:
        raise ConfigError("node name is required (--node-name or NODE_NAME)")
    if len(c.vxlan.device) > 15:
        raise ConfigError(f"interface name too long: {c.vxlan.device}")
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
    p.add_argument("--egress", action=argparse.BooleanOptionalAction, default=None)
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
            "egress": a.egress, "log_level": a.log_level,
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

