"""hostPort (the portMappings capability) and ipMasq, in podwire's own nftables table.

Layout (table inet podwire-cni, IPv4 and IPv6 at once):
  map hostports   proto . port -> goto <pod chain>       one lookup per packet, any number of pods
  map hostports4/6  hostIP . proto . port -> goto <pod chain>   mappings for one hostIP, looked up
                  first: pods may share a port on different hostIPs (the HostPort conformance test)
  chain hp-<pod>  the pod's DNAT rules (optionally only for one hostIP)
  set masq4/6     pod addresses whose egress is masqueraded (ipMasq)
Traffic that enters from the pod bridge and is DNATed back onto it (a pod reaching a hostPort, its own
included) is masqueraded: without br_netfilter the reply would skip the host and never be un-NATed.

What was programmed for each attachment is kept in <stateDir>/hostport/<name>.json, so DEL and GC
remove exactly that without listing the kernel's ruleset. The base (table, maps, sets, base chains) is
applied by the first hostPort ADD of a boot, remembered in <stateDir>/hostport-base/ (see _apply).
"""

from __future__ import annotations

import os
import zlib

from cni_plugin import wirejson
from cni_plugin.config import PROTOCOLS, is_safe_name
from cni_plugin.errors import HOSTPORT_CONFLICT, CNIError

TABLE = "podwire-cni"
MARK = "0x00002000"


def _family(ip: str) -> str:
    return "ip6" if ":" in ip else "ip"


def _element(host_ip, protocol: str, port: int) -> str:
    return f"{host_ip} . {protocol} . {port}" if host_ip else f"{protocol} . {port}"


def _parse_element(text) -> str | None:
    """A map key from a state file, re-parsed into typed parts and printed again; None if it is
    not one we could have written (a file from a version that pasted hostIP into nft text)."""
    from ipam import addr

    parts = text.split(" . ") if isinstance(text, str) else []
    if len(parts) not in (2, 3) or parts[-2] not in PROTOCOLS or not parts[-1].isdigit() or not parts[-1].isascii():
        return None
    port = int(parts[-1])
    if not 0 < port < 65536:
        return None
    host_ip = None
    if len(parts) == 3:
        try:
            host_ip = addr.ip_address(parts[0])  # refuses scope ids
        except ValueError:
            return None
    return _element(host_ip, parts[-2], port)


def _parse_ip(text):
    from ipam import addr

    try:
        return str(addr.ip_address(text))  # refuses scope ids and non-strings
    except ValueError:
        return None


def checked_state(state) -> dict:
    """What render_delete may act on from a state file read back from disk: only elements,
    addresses and a chain name of the shapes we write; anything else is dropped, not rendered."""
    if not isinstance(state, dict):
        return {"elements": [], "chain": "", "masq": []}
    chain = state.get("chain")
    if not (isinstance(chain, str) and chain.startswith("hp-") and is_safe_name(chain[3:])):
        chain = ""
    elements = [e for e in map(_parse_element, _list(state.get("elements"))) if e is not None]
    masq = [ip for ip in map(_parse_ip, _list(state.get("masq"))) if ip is not None]
    return {"elements": elements, "chain": chain, "masq": masq}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def base_ruleset(bridge: str) -> str:
    """Idempotent: re-creates the base chains' rules every time, keeps maps, sets and pod chains."""
    return f"""
add table inet {TABLE}
add map inet {TABLE} hostports {{ type inet_proto . inet_service : verdict; }}
add map inet {TABLE} hostports4 {{ type ipv4_addr . inet_proto . inet_service : verdict; }}
add map inet {TABLE} hostports6 {{ type ipv6_addr . inet_proto . inet_service : verdict; }}
add set inet {TABLE} masq4 {{ type ipv4_addr; }}
add set inet {TABLE} masq6 {{ type ipv6_addr; }}
add chain inet {TABLE} prerouting {{ type nat hook prerouting priority dstnat; }}
add chain inet {TABLE} output {{ type nat hook output priority -100; }}
add chain inet {TABLE} postrouting {{ type nat hook postrouting priority srcnat; }}
flush chain inet {TABLE} prerouting
flush chain inet {TABLE} output
flush chain inet {TABLE} postrouting
add rule inet {TABLE} prerouting ip daddr . meta l4proto . th dport vmap @hostports4
add rule inet {TABLE} prerouting ip6 daddr . meta l4proto . th dport vmap @hostports6
add rule inet {TABLE} prerouting fib daddr type local meta l4proto . th dport vmap @hostports
add rule inet {TABLE} output ip daddr . meta l4proto . th dport vmap @hostports4
add rule inet {TABLE} output ip6 daddr . meta l4proto . th dport vmap @hostports6
add rule inet {TABLE} output ip daddr 127.0.0.0/8 return
add rule inet {TABLE} output ip6 daddr ::1 return
add rule inet {TABLE} output fib daddr type local meta l4proto . th dport vmap @hostports
add rule inet {TABLE} postrouting meta mark & {MARK} == {MARK} masquerade
add rule inet {TABLE} postrouting ip saddr @masq4 oifname != "{bridge}" fib daddr type != local masquerade
add rule inet {TABLE} postrouting ip6 saddr @masq6 oifname != "{bridge}" fib daddr type != local masquerade
"""


def _map_of(element: str) -> str:
    """The map of an element: "proto . port" (any local address; state files of older
    versions hold only these) or "hostIP . proto . port"."""
    if element.count(" . ") == 1:
        return "hostports"
    return "hostports6" if ":" in element.split(" . ")[0] else "hostports4"


def chain_name(host_if: str) -> str:
    return "hp-" + host_if


def render_add(state: dict, bridge: str) -> str:
    """nft text that programs one attachment (`state` as returned by `plan_state`) and the base."""
    return base_ruleset(bridge) + render_pod(state, bridge)


def render_pod(state: dict, bridge: str) -> str:
    """The attachment's part of render_add: its chain, map elements and masquerade set entries."""
    chain = state["chain"]
    lines = []
    if state["elements"]:
        lines.append(f"add chain inet {TABLE} {chain}")
        lines.append(f"flush chain inet {TABLE} {chain}")
        for m in state["mappings"]:
            for pod_ip in state["pod_ips"]:
                fam = _family(pod_ip)
                if m["hostIP"] and _family(m["hostIP"]) != fam:
                    continue
                nfproto = "ipv6" if fam == "ip6" else "ipv4"
                match = f"{fam} daddr {m['hostIP']} " if m["hostIP"] else f"meta nfproto {nfproto} "
                target = f"[{pod_ip}]:{m['containerPort']}" if fam == "ip6" else f"{pod_ip}:{m['containerPort']}"
                lines.append(
                    f'add rule inet {TABLE} {chain} {match}meta l4proto {m["protocol"]} th dport {m["hostPort"]} '
                    f'iifname "{bridge}" meta mark set mark | {MARK}'
                )
                lines.append(
                    f"add rule inet {TABLE} {chain} {match}meta l4proto {m['protocol']} th dport {m['hostPort']} "
                    f"dnat {fam} to {target}"
                )
        # `create` fails when another pod holds the port: a conflict must fail this ADD, not steal it
        for el in state["elements"]:
            lines.append(f"create element inet {TABLE} {_map_of(el)} {{ {el} : goto {chain} }}")
    for ip in state["masq"]:
        lines.append(f"add element inet {TABLE} masq{'6' if ':' in ip else '4'} {{ {ip} }}")
    return "\n".join(lines) + "\n"


def render_delete(state: dict) -> list[str]:
    """Statements removing one attachment; run together first, then one by one if any is gone."""
    out = [f"delete element inet {TABLE} {_map_of(el)} {{ {el} }}" for el in state["elements"]]
    if state["elements"] and state["chain"]:
        out.append(f"delete chain inet {TABLE} {state['chain']}")
    out += [f"delete element inet {TABLE} masq{'6' if ':' in ip else '4'} {{ {ip} }}" for ip in state["masq"]]
    return out


def plan_state(container_id: str, ifname: str, host_if: str, mappings, pod_ips, ip_masq: bool) -> dict:
    # every value below is typed: config.PortMapping (ints, a protocol of a fixed set, an ipam.addr.IP
    # object) and the pod's IPAM addresses; nothing a pod author wrote reaches the text as it came
    pod_ips = [ip.split("/")[0] for ip in pod_ips]
    elements = sorted({_element(m.host_ip, m.protocol, m.host_port) for m in mappings})
    return {
        "containerID": container_id,
        "ifname": ifname,
        "chain": chain_name(host_if),
        "elements": elements,
        "mappings": [
            {"hostPort": m.host_port, "containerPort": m.container_port, "protocol": m.protocol,
             "hostIP": str(m.host_ip) if m.host_ip else ""}
            for m in mappings
        ],
        "pod_ips": pod_ips,
        "masq": pod_ips if ip_masq else [],
    }


def _state_path(state_dir: str, host_if: str) -> str:
    return os.path.join(state_dir, "hostport", host_if + ".json")


def _base_marker(state_dir: str, bridge: str) -> str:
    """A file that says: this boot, the base ruleset for `bridge` in this exact text was applied.
    The boot ID makes a reboot (an empty ruleset) forget it; the text's CRC an upgrade of the rules."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "unknown-boot"
    key = zlib.crc32((boot + base_ruleset(bridge)).encode())
    return os.path.join(state_dir, "hostport-base", f"{bridge}-{key:08x}")


def _apply(state_dir: str, bridge: str, pod_text: str) -> str | None:
    """Apply the attachment's rules; None, or nft's stderr. The base ruleset (table, maps, the base
    chains re-created and flushed) costs nft ~15 ms per run on a node with pods, so it is applied by
    the first hostPort ADD of a boot (and again when the pod's part fails for any reason but a port
    conflict: the table was deleted or flushed), not by every one."""
    from netkit import nftexec

    marker = _base_marker(state_dir, bridge)
    if os.path.exists(marker):
        err = nftexec.run(pod_text)
        if err is None or "File exists" in err:
            return err
    err = nftexec.run(base_ruleset(bridge) + pod_text)
    if err is None:
        directory = os.path.dirname(marker)
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):  # earlier boots' and versions' markers
            if name.startswith(f"{bridge}-"):
                _unlink_quietly(os.path.join(directory, name))
        with open(marker, "w"):
            pass
    return err


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def program(conf, container_id: str, ifname: str, host_if: str, pod_ips, undo) -> None:
    if not conf.port_mappings and not conf.ip_masq:
        return
    state = plan_state(container_id, ifname, host_if, conf.port_mappings, pod_ips, conf.ip_masq)
    path = _state_path(conf.state_dir, host_if)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # state first: if we die after nft, DEL/GC still know what to remove
    with open(path + ".tmp", "w") as f:
        f.write(wirejson.dumps(state))
    os.replace(path + ".tmp", path)
    err = _apply(conf.state_dir, conf.bridge, render_pod(state, conf.bridge))
    if err is not None:
        # the transaction is atomic: nothing of it is in the kernel, and the elements it names may
        # belong to another pod, so only our state file goes
        os.unlink(path)
        if "File exists" in err:
            ports = ", ".join(state["elements"])
            raise CNIError(HOSTPORT_CONFLICT, f"hostPort already in use on this node ({ports})", err.strip())
        raise CNIError(5, "cannot program hostPort rules", err.strip())
    undo.callback(remove, conf.state_dir, host_if)


def remove(state_dir: str, host_if: str) -> None:
    path = _state_path(state_dir, host_if)
    try:
        with open(path) as f:
            state = wirejson.loads(f.read())
    except FileNotFoundError:
        return
    except ValueError:
        os.unlink(path)  # a torn file from a crash: nothing we can trust in it
        return
    _delete_rules(checked_state(state))
    os.unlink(path)


def _delete_rules(state: dict) -> None:
    from netkit import nftexec

    statements = render_delete(state)
    if not statements:
        return
    if nftexec.run("\n".join(statements) + "\n") is not None:
        for s in statements:  # some were gone already (reboot, manual flush): remove the rest
            nftexec.run(s + "\n")


def gc(state_dir: str, valid: set) -> list[str]:
    """Remove every attachment's rules not in `valid` {(containerID, ifname)}; go on past errors."""
    directory = os.path.join(state_dir, "hostport")
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    freed = []
    for name in sorted(names):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                state = wirejson.loads(f.read())
            if (state["containerID"], state["ifname"]) in valid:
                continue
            remove(state_dir, name[: -len(".json")])
            freed.append(name[: -len(".json")])
        except (OSError, ValueError, KeyError):
            continue
    return freed
