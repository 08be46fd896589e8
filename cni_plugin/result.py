"""The ADD result as typed data, rendered in the shape of the version the config asked for."""

from __future__ import annotations

from cni_plugin.config import version_tuple
from cni_plugin.errors import invalid_config
from netkit.record import Record


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
        d: dict[str, object]
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
        """Read a prevResult of any supported version; a malformed one is code 7 naming the field."""
        import ipaddress

        def bad(where: str, what: str, value):
            return invalid_config(f"prevResult.{where} {what}, got {value!r}"[:300])

        def items(key: str) -> list:
            value = raw.get(key)
            if value is None:
                return []
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise bad(key, "must be a list of objects", value)
            return value

        def text(obj: dict, key: str, where: str, required: bool = False) -> str:
            value = obj.get(key, None if required else "")
            if not isinstance(value, str) or (required and not value):
                raise bad(f"{where}.{key}", "must be a string" if not required else "must be a non-empty string", value)
            return value

        def number(obj: dict, key: str, where: str, default):
            value = obj.get(key, default)
            if value is default:
                return value
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
                raise bad(f"{where}.{key}", "must be an unsigned 32-bit integer", value)
            return value

        def parsed(value: str, where: str, parse) -> str:
            """The canonical text of an address (or CIDR) as the kernel will report it."""
            try:
                if "%" in value:
                    raise ValueError
                return str(parse(value))
            except ValueError:
                raise bad(where, "is not a valid address", value) from None

        if not isinstance(raw, dict):
            raise bad("", "must be an object", raw)
        interfaces, ips, routes = [], [], []
        for n, i in enumerate(items("interfaces")):
            w = f"interfaces[{n}]"
            interfaces.append(Interface(text(i, "name", w), text(i, "mac", w), text(i, "sandbox", w),
                                        number(i, "mtu", w, 0)))
        for n, ip in enumerate(items("ips")):
            w = f"ips[{n}]"
            gw = text(ip, "gateway", w)
            interface = ip.get("interface", -1)
            if isinstance(interface, bool) or not isinstance(interface, int):
                raise bad(f"{w}.interface", "must be an integer", interface)
            address = parsed(text(ip, "address", w, required=True), f"{w}.address", ipaddress.ip_interface)
            if "/" not in ip["address"]:
                raise bad(f"{w}.address", "must be in CIDR notation", ip["address"])
            ips.append(IPConfig(address, parsed(gw, f"{w}.gateway", ipaddress.ip_address) if gw else "", interface))
        for n, r in enumerate(items("routes")):
            w = f"routes[{n}]"
            dst = parsed(text(r, "dst", w, required=True), f"{w}.dst", lambda v: ipaddress.ip_network(v, strict=False))
            gw = text(r, "gw", w)
            routes.append(RouteConfig(dst, parsed(gw, f"{w}.gw", ipaddress.ip_address) if gw else "",
                                      number(r, "mtu", w, 0), number(r, "advmss", w, 0), number(r, "priority", w, None),
                                      number(r, "table", w, None), number(r, "scope", w, None)))
        dns = raw.get("dns")
        if dns is not None and not isinstance(dns, dict):
            raise bad("dns", "must be an object", dns)
        return Result(tuple(interfaces), tuple(ips), tuple(routes), dns or None)
