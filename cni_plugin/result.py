"""The ADD result as typed data, rendered in the shape of the version the config asked for."""

from __future__ import annotations

from netkit.record import Record

from cni_plugin.config import version_tuple


class Interface(Record):
    name: str
    mac: str
    sandbox: str = ""
    mtu: int = 0


class IPConfig(Record):
    address: str  # "a.b.c.d/nn"
    gateway: str
    interface: int  # index into interfaces

    @property
    def family(self) -> str:
        return "6" if ":" in self.address else "4"


class RouteConfig(Record):
    dst: str
    gw: str = ""
    mtu: int = 0
    advmss: int = 0
    priority: int | None = None
    table: int | None = None
    scope: int | None = None


class Result(Record):
    interfaces: tuple[Interface, ...]
    ips: tuple[IPConfig, ...]
    routes: tuple[RouteConfig, ...]
    dns: dict | None = None

    def to_json(self, version: str) -> dict:
        v = version_tuple(version)
        ifaces = []
        for i in self.interfaces:
            d = {"name": i.name, "mac": i.mac}
            if i.mtu and v >= (1, 1, 0):
                d["mtu"] = i.mtu
            if i.sandbox:
                d["sandbox"] = i.sandbox
            ifaces.append(d)
        ips = []
        for ip in self.ips:
            d = {"address": ip.address, "gateway": ip.gateway, "interface": ip.interface}
            if v < (1, 0, 0):
                d = {"version": ip.family, **d}
            if not ip.gateway:
                del d["gateway"]
            ips.append(d)
        routes = []
        for r in self.routes:
            d = {"dst": r.dst}
            if r.gw:
                d["gw"] = r.gw
            if v >= (1, 1, 0):  # route attributes new in 1.1.0
                for key in ("mtu", "advmss", "priority", "table", "scope"):
                    value = getattr(r, key)
                    if value:
                        d[key] = value
            routes.append(d)
        return {"cniVersion": version, "interfaces": ifaces, "ips": ips, "routes": routes, "dns": self.dns or {}}

    @staticmethod
    def from_json(raw: dict) -> "Result":
        """Read a prevResult of any supported version."""
        return Result(
            tuple(Interface(i.get("name", ""), i.get("mac", ""), i.get("sandbox", ""), i.get("mtu", 0))
                  for i in raw.get("interfaces") or ()),
            tuple(IPConfig(ip["address"], ip.get("gateway", ""), ip.get("interface", -1)) for ip in raw.get("ips") or ()),
            tuple(RouteConfig(r["dst"], r.get("gw", ""), r.get("mtu", 0), r.get("advmss", 0), r.get("priority"),
                              r.get("table"), r.get("scope")) for r in raw.get("routes") or ()),
            raw.get("dns") or None,
        )
