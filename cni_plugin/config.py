"""The plugin's network configuration (one entry of a conflist, as the runtime hands it over).

Parsed once into frozen records (netkit.record); everything after this sees checked values. Unknown keys pass
through untouched (the spec lets runtimes and other plugins add their own).
"""

from __future__ import annotations

from cni_plugin.errors import INCOMPATIBLE_VERSION, CNIError, invalid_config
from netkit.record import Record

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_BRIDGE = "podwire0"
DEFAULT_STATE_DIR = "/var/lib/cni/podwire"
DEFAULT_LOG_FILE = "/var/log/podwire/cni.log"
PROTOCOLS = ("tcp", "udp", "sctp")
# Names that reach nft text or file names come from this alphabet: libcni's container ID rule
# (^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$), checked without `re` (~3 ms per plugin start).
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
NAME_CHARS = _ALNUM | frozenset("_.-")
IFNAMSIZ = 16


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def is_safe_name(text: object) -> bool:
    """libcni's rule for container IDs: an ASCII letter or digit, then letters, digits, '_', '.', '-'."""
    return isinstance(text, str) and text != "" and text[0] in _ALNUM and all(c in NAME_CHARS for c in text)


def ifname_problem(name: object) -> str | None:
    """Why the kernel (dev_valid_name) would refuse `name` as an interface name, or None."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if len(name.encode()) >= IFNAMSIZ:
        return f"is longer than {IFNAMSIZ - 1} bytes"
    if name in (".", ".."):
        return "is . or .."
    if any(c in "/:" or c.isspace() or not c.isprintable() for c in name):
        return "contains '/', ':', whitespace or a control character"
    return None


class PortMapping(Record):
    host_port: int
    container_port: int
    protocol: str  # tcp | udp | sctp
    host_ip: object  # ipam.addr.IP, or None = every local address


class PolicyGate(Record):
    """`policy` in the plugin's config (written by the daemon when it enforces NetworkPolicy)."""
    socket: str  # the daemon's unix socket (policy/gate.py)
    namespaces_file: str  # namespaces holding policies, for when the daemon does not answer
    timeout: int  # seconds an ADD waits for the daemon


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
    policy: PolicyGate | None
    raw: dict

    @property
    def version(self) -> tuple[int, ...]:
        return version_tuple(self.cni_version)


def _bool(raw: dict, key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise invalid_config(f"'{key}' must be true or false, got {value!r}")
    return value


def _int(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid_config(f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


def check_version(raw: dict) -> str:
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise invalid_config("'cniVersion' is missing")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version}",
            "podwire supports " + ", ".join(SUPPORTED_VERSIONS),
        )
    return version


def _host_ip(value, where: str):
    """hostIP as an address object (None = any). Kubernetes does not validate hostIP and containerd
    passes it through: it is pod-author input, and nft would resolve a name or swallow a statement."""
    if value is None or value == "":
        return None
    from ipam import addr

    if isinstance(value, str):  # ipam.addr refuses scope ids (free text: never into nft)
        try:
            ip = addr.ip_address(value)
        except ValueError:
            pass
        else:
            return None if int(ip) == 0 else ip
    raise invalid_config(f"{where}.hostIP must be an IPv4 or IPv6 address, got {value!r}")


def _port_mappings(raw: dict) -> tuple[PortMapping, ...]:
    runtime = raw.get("runtimeConfig")
    if runtime is None:
        runtime = {}
    if not isinstance(runtime, dict):
        raise invalid_config("'runtimeConfig' must be an object")
    items = runtime.get("portMappings")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise invalid_config("runtimeConfig.portMappings must be a list")
    out = []
    for i, item in enumerate(items):
        where = f"runtimeConfig.portMappings[{i}]"
        if not isinstance(item, dict):
            raise invalid_config(f"{where} must be an object")
        # Keys match case-insensitively, as Go's encoding/json does for the reference portmap
        # plugin: containerd's CRI (go-cni's untagged PortMapping struct) sends "HostPort",
        # "ContainerPort", "Protocol", "HostIP".
        folded = {k.lower(): v for k, v in item.items()}
        protocol = folded.get("protocol") or "tcp"
        if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
            raise invalid_config(f"{where}.protocol {protocol!r} is not tcp, udp or sctp")
        out.append(
            PortMapping(
                _int(folded.get("hostport"), f"{where}.hostPort", 1, 65535),
                _int(folded.get("containerport"), f"{where}.containerPort", 1, 65535),
                protocol.lower(),
                _host_ip(folded.get("hostip"), where),
            )
        )
    return tuple(out)


def _path(raw: dict, key: str, default: str) -> str:
    """An absolute path option; a non-string would otherwise become a relative path."""
    value = raw.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise invalid_config(f"'{key}' must be an absolute path, got {value!r}")
    return value


def _policy(raw: dict) -> PolicyGate | None:
    value = raw.get("policy")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_config("'policy' must be an object")
    sock = _path(value, "socket", "")
    if not sock or len(sock.encode()) >= 108:
        raise invalid_config("'policy.socket' must be an absolute path under 108 bytes")
    return PolicyGate(socket=sock, namespaces_file=_path(value, "namespacesFile", sock + ".namespaces"),
                      timeout=_int(value.get("timeout", 15), "'policy.timeout'", 1, 120))


def parse_netconf(raw: dict, port_mappings: bool = True) -> NetConf:
    """`port_mappings=False` for verbs other than ADD: DEL removes what the state file says, so a
    config whose runtimeConfig ADD refused must still let the runtime clean up."""
    if not isinstance(raw, dict):
        raise invalid_config("expected a JSON object")
    version = check_version(raw)
    name = raw.get("name")
    # the name is a directory of the IPAM store: one path component
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise invalid_config(f"'name' must be a non-empty string without '/', got {name!r}")
    bridge = raw.get("bridge", DEFAULT_BRIDGE)
    # the bridge name is quoted in nft text: letters, digits, '_', '.', '-' only
    if not is_safe_name(bridge) or len(bridge) >= IFNAMSIZ:
        raise invalid_config("'bridge' must be an interface name of 1-15 letters, "
                       f"digits, '_', '.' or '-', got {bridge!r}")
    ipam = raw.get("ipam")
    if not isinstance(ipam, dict) or not ipam:
        raise invalid_config("'ipam' section is missing")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise invalid_config("'prevResult' must be an object")
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
        port_mappings=_port_mappings(raw) if port_mappings else (),
        state_dir=_path(raw, "stateDir", DEFAULT_STATE_DIR),
        log_file=_path(raw, "logFile", DEFAULT_LOG_FILE),
        prev_result=prev,
        policy=_policy(raw),
        raw=raw,
    )
