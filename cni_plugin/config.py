"""The plugin's network configuration (one entry of a conflist, as the runtime hands it over).

Parsed once into frozen records (netkit.record); everything after this sees checked values. Unknown keys pass
through untouched (the spec lets runtimes and other plugins add their own).
"""

from __future__ import annotations

from netkit.record import Record

from cni_plugin.errors import INCOMPATIBLE_VERSION, INVALID_CONFIG, CNIError

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_BRIDGE = "podwire0"
DEFAULT_STATE_DIR = "/var/lib/cni/podwire"
DEFAULT_LOG_FILE = "/var/log/podwire/cni.log"
_PROTOCOLS = ("tcp", "udp", "sctp")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


class PortMapping(Record):
    host_port: int
    container_port: int
    protocol: str
    host_ip: str  # "" = every local address


class NetConf(Record):
    cni_version: str
    name: str
    bridge: str
    mtu: int
    is_gateway: bool
    is_default_gateway: bool
    hairpin: bool
    ip_masq: bool
    ipam: dict  # parsed by ipam.config.IPAMConfig.from_json, which owns its rules
    port_mappings: tuple[PortMapping, ...]
    state_dir: str
    log_file: str
    prev_result: dict | None
    raw: dict

    @property
    def version(self) -> tuple[int, ...]:
        return version_tuple(self.cni_version)


def _bool(raw: dict, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise CNIError(INVALID_CONFIG, f"invalid network config: '{key}' must be true or false, got {value!r}")
    return value


def _int(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CNIError(INVALID_CONFIG, f"invalid network config: {what} must be an integer in {low}..{high}, got {value!r}")
    return value


def check_version(raw: dict) -> str:
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CNIError(INVALID_CONFIG, "invalid network config: 'cniVersion' is missing")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version}",
            "podwire supports " + ", ".join(SUPPORTED_VERSIONS),
        )
    return version


def _port_mappings(raw: dict) -> tuple[PortMapping, ...]:
    runtime = raw.get("runtimeConfig") or {}
    items = runtime.get("portMappings") or []
    if not isinstance(items, list):
        raise CNIError(INVALID_CONFIG, "invalid network config: runtimeConfig.portMappings must be a list")
    out = []
    for i, item in enumerate(items):
        where = f"runtimeConfig.portMappings[{i}]"
        if not isinstance(item, dict):
            raise CNIError(INVALID_CONFIG, f"invalid network config: {where} must be an object")
        # Keys match case-insensitively, as Go's encoding/json does for the reference portmap
        # plugin: containerd's CRI (go-cni's untagged PortMapping struct) sends "HostPort",
        # "ContainerPort", "Protocol", "HostIP".
        folded = {str(k).lower(): v for k, v in item.items()}
        item = {k: item[k] if k in item else folded.get(k.lower())
                for k in ("hostPort", "containerPort", "protocol", "hostIP")}
        protocol = str(item.get("protocol") or "tcp").lower()
        if protocol not in _PROTOCOLS:
            raise CNIError(INVALID_CONFIG, f"invalid network config: {where}.protocol {protocol!r} is not tcp, udp or sctp")
        host_ip = item.get("hostIP") or ""
        if host_ip in ("0.0.0.0", "::"):
            host_ip = ""
        out.append(
            PortMapping(
                _int(item.get("hostPort"), f"{where}.hostPort", 1, 65535),
                _int(item.get("containerPort"), f"{where}.containerPort", 1, 65535),
                protocol,
                str(host_ip),
            )
        )
    return tuple(out)


def parse_netconf(raw: dict) -> NetConf:
    if not isinstance(raw, dict):
        raise CNIError(INVALID_CONFIG, "invalid network config: expected a JSON object")
    version = check_version(raw)
    name = raw.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise CNIError(INVALID_CONFIG, "invalid network config: 'name' must be a non-empty string without '/'")
    bridge = raw.get("bridge", DEFAULT_BRIDGE)
    if not isinstance(bridge, str) or not 0 < len(bridge) <= 15 or "/" in bridge or " " in bridge:
        raise CNIError(INVALID_CONFIG, f"invalid network config: 'bridge' must be a valid interface name (1-15 chars), got {bridge!r}")
    ipam = raw.get("ipam")
    if not isinstance(ipam, dict) or not ipam:
        raise CNIError(INVALID_CONFIG, "invalid network config: 'ipam' section is missing")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CNIError(INVALID_CONFIG, "invalid network config: 'prevResult' must be an object")
    return NetConf(
        cni_version=version,
        name=name,
        bridge=bridge,
        mtu=_int(raw.get("mtu", 1500), "'mtu'", 68, 65535),
        is_gateway=_bool(raw, "isGateway", True),
        is_default_gateway=_bool(raw, "isDefaultGateway", True),
        hairpin=_bool(raw, "hairpinMode", True),
        ip_masq=_bool(raw, "ipMasq", False),
        ipam=ipam,
        port_mappings=_port_mappings(raw),
        state_dir=str(raw.get("stateDir") or DEFAULT_STATE_DIR),
        log_file=str(raw.get("logFile") or DEFAULT_LOG_FILE),
        prev_result=prev,
        raw=raw,
    )
