"""The CNI network config list this node's runtime reads: rendered from spec.podCIDRs, written atomically.

Until the PodCIDR is known nothing is written: the kubelet then reports "cni config uninitialized"
(NotReady) instead of the runtime starting pods on a network that cannot route them.

The CNI version is the runtime's libcni's choice, so the conflist offers two (CNI 1.1 version
negotiation). libcni before v1.2 (containerd 1.6 and 1.7) implements CNI 1.0.0, ignores
`cniVersions`, reads `cniVersion` and fails every pod on a 1.1.0 result ("unsupported CNI result
version"). libcni v1.2+ (containerd 2.x) takes the highest of `cniVersion` and `cniVersions` it
implements: 1.1.0, the only version it sends STATUS and GC to.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

from .model import IPNetwork

CNI_VERSION = "1.0.0"  # what libcni without version negotiation reads
CNI_VERSIONS = ("1.0.0", "1.1.0")  # libcni v1.2+ picks the highest it implements


@dataclass(frozen=True)
class CniSettings:
    conf_dir: str = "/etc/cni/net.d"
    conf_name: str = "10-podwire.conflist"
    bridge: str = "podwire0"
    log_file: str = "/var/log/podwire-cni.log"
    data_dir: str = "/var/lib/cni/networks"

    @property
    def path(self) -> str:
        return os.path.join(self.conf_dir, self.conf_name)


POLICY_WAIT = 15  # seconds an ADD waits for the daemon to put the pod's policy in force


def policy_namespaces_file(socket_path: str) -> str:
    """Where the daemon publishes the namespaces holding policies (next to its socket)."""
    return os.path.join(os.path.dirname(socket_path), "policy-namespaces.json")


def conflist(pod_cidrs: tuple[IPNetwork, ...], mtu: int, s: CniSettings, policy_socket: str | None = None, *,
             name: str = "podwire", cni_version: str = CNI_VERSION, cni_versions: tuple[str, ...] = CNI_VERSIONS,
             state_dir: str | None = None, port_mappings: bool = True, chained: tuple[dict, ...] = ()) -> dict:
    """podwire's conflist as a dict: what the daemon writes (the defaults), and what tests, the e2e
    harness and benchmarks hand a runtime or the plugin, built here so they run the daemon's contract.

    Ranges and default routes follow the order of `pod_cidrs` (spec.podCIDRs): the first is the
    cluster's primary family, and host-local returns IPs in range order. `policy_socket`:
    NetworkPolicy is enforced; each ADD waits there until its pod's policy is in force
    (cni_plugin/policy_gate.py). Beyond the daemon's: `cni_versions=()` writes `cniVersion` alone
    (a chain with plugins that speak only it), `state_dir` moves the plugin's state off /var/lib,
    `port_mappings=False` leaves hostPorts to a chained portmap, `chained` follow podwire in the list.
    """
    if not pod_cidrs:
        raise ValueError("a conflist needs at least one podCIDR")
    if not 68 <= mtu <= 65535:
        raise ValueError(f"mtu {mtu}: not in 68..65535")
    plugin: dict = {
        "type": "podwire",
        "bridge": s.bridge,
        "isGateway": True,
        "hairpinMode": True,
        "ipMasq": False,
        "mtu": mtu,
        "logFile": s.log_file,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": str(c)}] for c in pod_cidrs],
            "routes": [{"dst": "0.0.0.0/0" if c.version == 4 else "::/0"} for c in pod_cidrs],
            "dataDir": s.data_dir,
        },
    }
    if port_mappings:
        plugin["capabilities"] = {"portMappings": True}
    if state_dir is not None:
        plugin["stateDir"] = state_dir
    if policy_socket:
        plugin["policy"] = {"socket": policy_socket, "timeout": POLICY_WAIT,
                            "namespacesFile": policy_namespaces_file(policy_socket)}
    conf: dict = {"cniVersion": cni_version}
    if cni_versions:
        conf["cniVersions"] = list(cni_versions)
    conf.update(name=name, plugins=[plugin, *chained])
    return conf


def render(pod_cidrs: tuple[IPNetwork, ...], mtu: int, s: CniSettings, policy_socket: str | None = None) -> str | None:
    """The conflist text the daemon writes (the lead's contract with the plugin), or None without
    a podCIDR: see `conflist`."""
    if not pod_cidrs:
        return None
    return json.dumps(conflist(pod_cidrs, mtu, s, policy_socket), indent=2) + "\n"


def network_config(conflist_: dict, index: int = 0, cni_version: str | None = None) -> dict:
    """The network config a runtime hands plugin `index` of a conflist (libcni: the list's `name`
    and `cniVersion` copied into the plugin's entry); `cni_version` as a negotiating libcni picks it."""
    return dict(conflist_["plugins"][index], name=conflist_["name"],
                cniVersion=cni_version or conflist_["cniVersion"])


def write_if_changed(path: str, text: str) -> bool:
    """Atomically replace `path` (temp file in the same directory, fsync, rename). False if unchanged."""
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".podwire-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True
