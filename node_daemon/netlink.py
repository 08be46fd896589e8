"""The netlink edge: read the node's dataplane back from the kernel, and apply a diff to it.

Ownership is decided by the kernel state alone, so a restarted daemon finds what an earlier run
left: routes carry our route protocol number (main table), and everything on our VXLAN device
(addresses, FDB, permanent neighbours) is ours. The IPRoute object is passed in, opened in the
node's namespace by the caller (the daemon runs inside it; tests use IPRoute(netns=...)), so this
process never switches namespaces.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from pyroute2.netlink.exceptions import NetlinkError

from .dataplane import Changes, Dataplane, FdbEntry, Neighbour, Route, VxlanDevice, diff
from .plan import Underlay

log = logging.getLogger(__name__)

NUD_PERMANENT = 0x80
IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 4
IFF_UP = 1
MAIN_TABLE = 254
DEFAULT_ROUTE_PROTOCOL = 212  # unassigned in /etc/iproute2/rt_protos; configurable


class DataplaneError(RuntimeError):
    """Some part of the dataplane could not be read or programmed; the message lists what."""


def replaced_in_place(removed, added) -> set:
    """The removed routes that a `replace` of the same destination supersedes (no gap in between).
    Not an IPv6 route whose device changes (a peer going from direct to VXLAN): the kernel checks the
    new onlink gateway against the table, where the old route to that destination still covers it
    through another device, and refuses the replace (EINVAL); such a route is deleted first."""
    new = {r.dst: r for r in added}
    return {r for r in removed if r.dst in new and (r.dst.version == 4 or new[r.dst].dev == r.dev)}


class NetlinkDataplane:
    def __init__(self, ipr, route_protocol: int = DEFAULT_ROUTE_PROTOCOL):
        self.ipr = ipr
        self.proto = route_protocol

    # ---- reading -----------------------------------------------------------------------
    def read_underlay(self, ifname: str | None, node_ips) -> Underlay:
        """The configured interface, or else the one holding one of this node's InternalIPs."""
        if ifname:
            found = self.ipr.link_lookup(ifname=ifname)
            if not found:
                raise DataplaneError(f"underlay interface {ifname} not found")
            index = found[0]
        else:
            wanted = {str(ip) for ip in node_ips}
            index = next((a["index"] for a in self.ipr.get_addr()
                          if a.get("IFA_ADDRESS") in wanted), None)
            if index is None:
                raise DataplaneError(f"no interface holds any of this node's InternalIPs {sorted(wanted)}")
        link = self.ipr.get_links(index)[0]
        addresses = tuple(
            ipaddress.ip_interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in self.ipr.get_addr(index=index) if a["scope"] == 0)
        return Underlay(ifname=link.get("IFLA_IFNAME"), addresses=addresses, mtu=link.get("IFLA_MTU"))

    def read(self, vxlan_name: str) -> Dataplane:
        names = {link["index"]: link.get("IFLA_IFNAME") for link in self.ipr.get_links()}
        routes = frozenset(self._routes(names))
        index = next((i for i, n in names.items() if n == vxlan_name), None)
        if index is None:
            return Dataplane(routes=routes)
        return Dataplane(
            vxlan=self._vxlan(index, names), routes=routes,
            addresses=frozenset(
                ipaddress.ip_interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
                for a in self.ipr.get_addr(index=index)
                if not ipaddress.ip_address(a.get("IFA_ADDRESS")).is_link_local),
            fdb=frozenset(
                FdbEntry(f.get("NDA_LLADDR"), ipaddress.ip_address(f.get("NDA_DST")))
                for f in self.ipr.fdb("dump", ifindex=index)
                if f["ifindex"] == index and f.get("NDA_DST") and f.get("NDA_LLADDR")),
            neighbours=frozenset(
                Neighbour(ipaddress.ip_address(n.get("NDA_DST")), n.get("NDA_LLADDR"))
                for n in self.ipr.get_neighbours(ifindex=index)
                if n["ifindex"] == index and n["state"] & NUD_PERMANENT and n.get("NDA_LLADDR")),
        )

    def _routes(self, names):
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in self.ipr.get_routes(family=family, table=MAIN_TABLE):
                if r["proto"] != self.proto or r.get("RTA_TABLE", r["table"]) != MAIN_TABLE:
                    continue
                any_addr = "::" if family == socket.AF_INET6 else "0.0.0.0"
                dst = ipaddress.ip_network(f"{r.get('RTA_DST') or any_addr}/{r['dst_len']}")
                gw = r.get("RTA_GATEWAY")
                yield Route(dst=dst, gateway=ipaddress.ip_address(gw) if gw else None,
                            dev=names.get(r.get("RTA_OIF"), ""), onlink=bool(r["flags"] & RTNH_F_ONLINK))

    def _vxlan(self, index, names) -> VxlanDevice:
        link = self.ipr.get_links(index)[0]
        info = link.get("IFLA_LINKINFO")
        if info is None or info.get("IFLA_INFO_KIND") != "vxlan":
            raise DataplaneError(f"{link.get('IFLA_IFNAME')} exists and is not a VXLAN device; not touching it")
        data = info.get("IFLA_INFO_DATA")
        local = data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")
        return VxlanDevice(
            name=link.get("IFLA_IFNAME"), vni=data.get("IFLA_VXLAN_ID"), port=data.get("IFLA_VXLAN_PORT"),
            mac=link.get("IFLA_ADDRESS"), mtu=link.get("IFLA_MTU"),
            local=ipaddress.ip_address(local) if local else None,
            underlay=names.get(data.get("IFLA_VXLAN_LINK"), ""), up=bool(link["flags"] & IFF_UP))

    # ---- applying ----------------------------------------------------------------------
    def apply(self, desired: Dataplane, vxlan_name: str) -> Changes:
        """Make the kernel match `desired`. Returns what was changed. Raises DataplaneError after
        applying everything it could when some operations failed."""
        actual = self.read(vxlan_name)
        changes = diff(desired, actual)
        if changes.device:
            try:
                self._device(changes.device, desired.vxlan, actual.vxlan)
            except NetlinkError as e:
                raise DataplaneError(f"VXLAN device {changes.device}: {e}") from None
        failures: list[str] = []
        names = {link["index"]: link.get("IFLA_IFNAME") for link in self.ipr.get_links()}
        index = {n: i for i, n in names.items()}
        vx = index.get(vxlan_name)
        # Removals first, except those a replace below supersedes (same route dst, same neighbour IP).
        kept = replaced_in_place(changes.remove["routes"], changes.add["routes"])
        new_neigh = {n.ip for n in changes.add["neighbours"]}
        for r in changes.remove["routes"]:
            if r not in kept:
                self._try(failures, f"delete route {r}", self._route, "del", r, index)
        for n in changes.remove["neighbours"]:
            if n.ip not in new_neigh:
                self._try(failures, f"delete neighbour {n}", self.ipr.neigh, "del", ifindex=vx, dst=str(n.ip))
        for f in changes.remove["fdb"]:
            self._try(failures, f"delete fdb {f}", self.ipr.fdb, "del", ifindex=vx, lladdr=f.mac, dst=str(f.dst))
        for a in changes.remove["addresses"]:
            self._try(failures, f"delete address {a}", self.ipr.addr, "del", index=vx,
                      address=str(a.ip), prefixlen=a.network.prefixlen)
        for a in changes.add["addresses"]:
            self._try(failures, f"add address {a}", self.ipr.addr, "replace", index=vx, **vtep_address(a))
        for f in changes.add["fdb"]:
            self._try(failures, f"add fdb {f}", self.ipr.fdb, "append", ifindex=vx, lladdr=f.mac,
                      dst=str(f.dst), state=NUD_PERMANENT)
        for n in changes.add["neighbours"]:
            self._try(failures, f"add neighbour {n}", self.ipr.neigh, "replace", ifindex=vx,
                      dst=str(n.ip), lladdr=n.mac, state=NUD_PERMANENT)
        for r in changes.add["routes"]:
            self._try(failures, f"add route {r}", self._route, "replace", r, index)
        if failures:
            raise DataplaneError("; ".join(failures))
        return changes

    def _route(self, cmd, r: Route, index):
        kw = dict(dst=str(r.dst), table=MAIN_TABLE, proto=self.proto)
        if r.gateway is not None:
            kw["gateway"] = str(r.gateway)
        if r.dev in index:
            kw["oif"] = index[r.dev]
        if r.onlink:
            kw["flags"] = RTNH_F_ONLINK
        self.ipr.route(cmd, **kw)

    def _device(self, change, want: VxlanDevice | None, have: VxlanDevice | None):
        # dataplane.device_change: delete/recreate have a device, create/recreate/update want one
        dev = want or have
        assert dev is not None
        log.info("VXLAN device %s: %s", dev.name, change)
        if change in ("delete", "recreate"):
            assert have is not None
            self.ipr.link("del", index=self.ipr.link_lookup(ifname=have.name)[0])
        if change == "delete":
            return
        assert want is not None and want.local is not None  # the plan always sets `local`
        if change in ("create", "recreate"):
            link = self.ipr.link_lookup(ifname=want.underlay)
            local = "vxlan_local" if want.local.version == 4 else "vxlan_local6"
            self.ipr.link("add", ifname=want.name, kind="vxlan", vxlan_id=want.vni,
                          vxlan_port=want.port, vxlan_learning=0, **{local: str(want.local)},
                          **({"vxlan_link": link[0]} if link else {}))
        index = self.ipr.link_lookup(ifname=want.name)[0]
        self.ipr.link("set", index=index, address=want.mac, mtu=want.mtu, state="up")

    @staticmethod
    def _try(failures, what, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except NetlinkError as e:
            if e.code in (errno.ESRCH, errno.ENOENT) and ("delete" in what):
                return  # already gone: deleting is idempotent
            failures.append(f"{what}: {e.args[-1] if e.args else e}")


def vtep_address(a) -> dict:
    """IPRoute.addr arguments for a VTEP address (an ip_interface). IPv6 ones without duplicate
    address detection: the address is unique by construction (the first of this node's podCIDR),
    DAD over a VXLAN device that floods nothing cannot find a duplicate anyway, and a tentative
    address is neither a source nor a destination for ~1-2 s after every (re)creation of the
    device on a host with accept_dad on (the default)."""
    args = {"address": str(a.ip), "prefixlen": a.network.prefixlen}
    if a.version == 6:
        args["flags"] = IFA_F_NODAD
    return args
