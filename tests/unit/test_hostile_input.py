"""Hostile input through every renderer of the daemon and the proxy (issue 10, item 1).

Every field of a Service, an EndpointSlice and a Node, and every daemon config key, gets in turn
the CNI plugin's injection string and a list of hostile values; the whole path runs (conversion,
plan, nft text; netlink values for the daemon) and the output must hold only typed things:
keywords, numbers, addresses that `ipaddress` reads without a zone index, our own object names.
Objects that cannot be read are skipped with a reason (a `Skip` / `BadNode` / `ConfigError`,
never another exception), and the valid objects beside them still render.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import re

import pytest

from node_daemon import cniconf, egress
from node_daemon.config import Config, ConfigError, from_dict
from node_daemon.model import BadNode, routing_view
from node_daemon.model import node_from_api as daemon_node
from node_daemon.plan import Mode, Underlay, VxlanSettings
from node_daemon.plan import plan as daemon_plan
from proxy import nft
from proxy.from_api import Skip, node_from_api, service_from_api, slice_from_api
from proxy.model import NodeInfo, ProxyConfig
from proxy.plan import Planner
from proxy.proxier import Proxier
from proxy.sync import render_diff

INJECTION = ("::1 . tcp . 1 : accept }\nadd table ip pwned\ndelete table ip victim\n"
             "create element inet podwire-cni hostports6 { ::2")
HOSTILE = (
    INJECTION,
    "fd00::1%" + INJECTION,  # ipaddress reads any text after % as an IPv6 zone index
    "fd00::%" + INJECTION + "/64",
    "fe80::1%eth0", "fd00::%eth0/64",
    "10.0.0.0/8 }\nadd table ip pwned", "10.1.2.3\nadd table ip pwned",
    "a\nb", "a;b", "a{b", "a}b", "a#b", 'a"b', "a'b", "a$b", "a\\b", "x" * 5000, "ünïcödé", "１０.0.0.1",
    "localhost", "garbage", "0x7f.1", "127.1", " 10.0.0.1\n", "10.0.0.1\n", "\n10.0.0.1", "",
    "None", "TCP\n", "tcp", "ClientIP\n", "Local;", "http\nadd table ip pwned",
    5, 0, -1, 70000, 2**64, True, 1.5, None, [], {}, ["10.0.0.1", INJECTION], {"name": INJECTION},
)
# Text that must never reach the nft text, whatever field it was put in.
NEVER = ("pwned", "victim", "podwire-cni", "%", "0.0.0.5", "127.0.0.1", '"', "'", "$", "\\",
         "#", "ünï", "１")


# ---- fixtures: one object of each kind with every field the converters read ----------------

def rich_service() -> dict:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "default", "name": "rich", "labels": {"app": "rich"},
                     "annotations": {"a": "b"}},
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 30080},
                      {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}],
            "externalIPs": ["192.0.2.7", "fd00:7::7"],
            "loadBalancerSourceRanges": ["198.51.100.0/24", "fd00:51::/64"],
            "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster",
            "healthCheckNodePort": 31000, "trafficDistribution": "PreferClose",
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.50", "ipMode": "VIP"}, {"ip": "fd00:50::50"}]}},
    }


def rich_slice(family: str = "IPv4") -> dict:
    addr, other = ("10.244.1.5", "10.244.2.5") if family == "IPv4" else ("fd00:244::5", "fd00:244::6")
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
        "metadata": {"namespace": "default", "name": f"rich-{family.lower()}",
                     "labels": {"kubernetes.io/service-name": "rich"},
                     "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2024-01-02T03:04:05Z"}},
        "endpoints": [
            {"addresses": [addr], "conditions": {"ready": True, "serving": True, "terminating": False},
             "nodeName": "n1", "zone": "z1",
             "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "n1"}]}},
            {"addresses": [other], "conditions": {"ready": False, "serving": True, "terminating": True},
             "nodeName": "n2", "zone": "z2"},
        ],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}, {"name": "dns", "protocol": "UDP", "port": 5353}],
    }


def proxy_node() -> dict:
    return {"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"},
                                     {"type": "InternalIP", "address": "fd00:18::2"},
                                     {"type": "Hostname", "address": "n1"}]}}


def daemon_node_obj(name: str = "n2", v4: str = "192.168.1.2", v6: str = "fd00::2",
                    cidrs=("10.244.2.0/24", "fd10:244:2::/64"), mac: str = "0a:00:00:00:00:02") -> dict:
    return {
        "metadata": {"name": name, "creationTimestamp": "2024-01-02T03:04:05Z",
                     "annotations": {"podwire.io/vtep-mac": mac}, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": list(cidrs)},
        "status": {"addresses": [{"type": "InternalIP", "address": v4}, {"type": "InternalIP", "address": v6},
                                 {"type": "Hostname", "address": name}],
                   "conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": "x"}]},
    }


# ---- mutation: every path of an object gets every hostile value ----------------------------

def paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, prefix + (i,))


def put(obj, path, value):
    out = copy.deepcopy(obj)
    if not path:
        return copy.deepcopy(value)
    cur = out
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = copy.deepcopy(value)
    return out


def mutations(obj, rename=None):
    """(path, value, mutated object); `rename(obj, i)` keeps each mutant's key unique unless the
    mutation is on the key itself, so all of them can live side by side in one plan."""
    i = 0
    for path in paths(obj):
        for value in HOSTILE:
            m = put(obj, path, value)
            if rename is not None and isinstance(m, dict) and isinstance(m.get("metadata"), dict) \
                    and path[:2] not in (("metadata", "name"), ("metadata", "namespace")):
                rename(m, i)
            i += 1
            yield path, value, m
    # hostile label/annotation keys too
    for where in ("labels", "annotations"):
        for value in HOSTILE[:12]:
            m = copy.deepcopy(obj)
            if isinstance(value, str):
                m["metadata"].setdefault(where, {})[value] = value
                if rename is not None:
                    rename(m, i)
                i += 1
                yield ("metadata", where, value), value, m


def _rename_service(m, i):
    m["metadata"]["name"] = f"m{i}"


def _rename_slice(m, i):
    m["metadata"]["name"] = f"m{i}"


# ---- what the proxy's nft text may contain ---------------------------------------------------

OBJ_NAME = re.compile(r"@?(svc|svl|ext|fw|ep|aff)-[A-Z2-7]{8}-[A-Za-z0-9/_.\-]*")
NUMBER = re.compile(r"-?(\d+s?|0x[0-9a-f]+)")
ADDR_PORT = re.compile(r"\[?([0-9a-f:.]+)\]?:(\d+)")
VERBS = re.compile(r"(add|flush|delete) (table|chain|rule|set|map|element) (ip|ip6) podwire-proxy( |$)")


def _is_addr(tok: str) -> bool:
    try:
        ipaddress.ip_network(tok, strict=False)
    except ValueError:
        m = ADDR_PORT.fullmatch(tok)
        return bool(m) and _is_addr(m.group(1)) and int(m.group(2)) < 65536
    return "%" not in tok


def keywords(text: str) -> set[str]:
    return {t for line in text.splitlines() for t in line.replace(",", " ").split()
            if not (OBJ_NAME.fullmatch(t) or NUMBER.fullmatch(t) or _is_addr(t))}


def baseline_text() -> str:
    """A render of valid objects that uses every kind of rule the planner writes."""
    svcs = [rich_service()]
    plain = rich_service()
    plain["metadata"]["name"] = "plain"
    plain["spec"].update(sessionAffinity="None", externalTrafficPolicy="Cluster", type="NodePort")
    noep = copy.deepcopy(plain)
    noep["metadata"]["name"] = "noep"
    svcs += [plain, noep]
    slices = [rich_slice("IPv4"), rich_slice("IPv6")]
    for sl in copy.deepcopy(slices):
        sl["metadata"]["name"] += "-plain"
        sl["metadata"]["labels"]["kubernetes.io/service-name"] = "plain"
        slices.append(sl)
    node = node_from_api(proxy_node())
    return "".join(nft.render_full(Planner(f).plan([service_from_api(s) for s in svcs],
                                                   [slice_from_api(s) for s in slices], node,
                                                   PROXY_CONFIG).table()) for f in (4, 6))


PROXY_CONFIG = ProxyConfig(cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd00:244::/48")))
KEYWORDS = None
# planner words the baseline may not happen to use
COMMAND_WORDS = {"add", "flush", "delete", "table", "chain", "rule", "set", "map", "element", "numgen", "random",
                 "mod", "vmap", "goto", "drop", "reject", "update", "dynamic", "timeout", "jump", "return"}


def assert_typed_proxy_text(text: str) -> None:
    global KEYWORDS
    if KEYWORDS is None:
        KEYWORDS = keywords(baseline_text()) | COMMAND_WORDS
    for bad in NEVER:
        assert bad not in text, f"{bad!r} reached the nft text"
    for line in text.splitlines():
        assert VERBS.match(line), f"not one of our commands on our table: {line!r}"
        for tok in line.replace(",", " ").split():
            assert (tok in KEYWORDS or OBJ_NAME.fullmatch(tok) or NUMBER.fullmatch(tok) or _is_addr(tok)), \
                f"untyped token {tok!r} in {line!r}"


# ---- the proxy -------------------------------------------------------------------------------

GOOD_SVC = {"metadata": {"namespace": "default", "name": "good"},
            "spec": {"clusterIP": "10.96.99.99", "clusterIPs": ["10.96.99.99"],
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}}
GOOD_SLICE = {"addressType": "IPv4",
              "metadata": {"namespace": "default", "name": "good-1", "labels": {"kubernetes.io/service-name": "good"}},
              "endpoints": [{"addresses": ["10.244.9.9"]}],
              "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}


class Recorder:
    def __init__(self):
        self.texts = []

    def apply(self, text):
        self.texts.append(text)


def _convert_or_skip(convert, obj, what):
    try:
        return convert(obj)
    except Skip:
        return None
    except Exception as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{convert.__name__} raised {type(e).__name__} ({e}) for {what}")


@pytest.mark.parametrize("kind", ["service", "slice", "node"])
def test_converters_skip_hostile_objects_with_a_reason_never_another_exception(kind):
    convert, obj, rename = {"service": (service_from_api, rich_service(), _rename_service),
                            "slice": (slice_from_api, rich_slice(), _rename_slice),
                            "node": (node_from_api, proxy_node(), None)}[kind]
    for path, value, m in mutations(obj, rename):
        _convert_or_skip(convert, m, f"{'.'.join(map(str, path))} = {value!r}"[:200])


def hostile_proxier(runners=None):
    """A Proxier fed every mutant beside the valid objects, as the daemon's watches would."""
    runners = runners or {4: Recorder(), 6: Recorder()}
    p = Proxier("n1", PROXY_CONFIG, runners)
    for obj in (GOOD_SVC, rich_service()):
        p.on_service(copy.deepcopy(obj))
    for obj in (GOOD_SLICE, rich_slice("IPv4"), rich_slice("IPv6")):
        p.on_slice(copy.deepcopy(obj))
    assert p.sync() is True
    for _, _, m in mutations(rich_service(), _rename_service):
        p.on_service(m)
    for fam in ("IPv4", "IPv6"):
        for _, _, m in mutations(rich_slice(fam), _rename_slice):
            p.on_slice(m)
    return p, runners


def test_proxier_renders_only_typed_text_from_hostile_objects():
    p, runners = hostile_proxier()
    assert p.sync() is True  # the diff sync
    p.request_full_sync()
    assert p.sync() is True  # and a full rewrite
    for r in runners.values():
        assert len(r.texts) == 3
        for text in r.texts:
            assert_typed_proxy_text(text)
    full4 = runners[4].texts[-1]
    # the valid Services beside the hostile ones still render
    assert "10.96.99.99 . tcp . 80 : goto svc-" in full4 and "dnat to 10.244.9.9:8080" in full4
    assert "10.96.0.10 . tcp . 80 : goto svc-" in full4
    assert "fd00:96::10 . tcp . 80 : goto svc-" in runners[6].texts[-1]


@pytest.mark.parametrize("node_obj", [m for _, _, m in mutations(proxy_node())][::7])
def test_hostile_node_changes_nothing_but_topology(node_obj):
    node = _convert_or_skip(node_from_api, node_obj, repr(node_obj)[:200]) or NodeInfo("n1")
    state = Planner(4).plan([service_from_api(rich_service())], [slice_from_api(rich_slice())], node, PROXY_CONFIG)
    assert_typed_proxy_text(nft.render_full(state.table()))


def test_proxier_survives_hostile_node_events():
    p = Proxier("n1", PROXY_CONFIG, {4: Recorder()})
    p.on_service(copy.deepcopy(GOOD_SVC))
    p.on_slice(copy.deepcopy(GOOD_SLICE))
    for _, _, m in mutations(proxy_node()):
        p.on_node(m)
        p.on_node(m, deleted=True)
    assert p.sync() is True


def test_diff_between_valid_and_hostile_states_is_typed():
    node = node_from_api(proxy_node())
    pl = Planner(4)
    old = pl.plan([service_from_api(GOOD_SVC)], [slice_from_api(GOOD_SLICE)], node, PROXY_CONFIG)
    svcs = [service_from_api(GOOD_SVC)]
    for _, _, m in mutations(rich_service(), _rename_service):
        s = _convert_or_skip(service_from_api, m, "")
        if s is not None:
            svcs.append(s)
    slices = [slice_from_api(GOOD_SLICE)]
    for _, _, m in mutations(rich_slice(), _rename_slice):
        s = _convert_or_skip(slice_from_api, m, "")
        if s is not None:
            slices.append(s)
    new = pl.plan(svcs, slices, node, PROXY_CONFIG)
    assert_typed_proxy_text(render_diff(old, new))


ZONED = "fd00:96::10%" + INJECTION  # what ipaddress.ip_address accepts, and prints back whole


@pytest.mark.parametrize("field", ["clusterIPs", "externalIPs", "ingress", "sourceRange", "endpoint"])
def test_ipv6_zone_index_never_reaches_nft_text(field):
    """ipaddress keeps any text after '%' as a zone index: read unchecked, the injection reached
    the nft text through any IPv6 field (nft then refused the whole transaction on the '%')."""
    svc, sl = rich_service(), rich_slice("IPv6")
    if field == "clusterIPs":
        svc["spec"]["clusterIPs"][1] = ZONED
    elif field == "externalIPs":
        svc["spec"]["externalIPs"][1] = ZONED
    elif field == "ingress":
        svc["status"]["loadBalancer"]["ingress"][1]["ip"] = ZONED
    elif field == "sourceRange":
        svc["spec"]["loadBalancerSourceRanges"][1] = "fd00:51::%" + INJECTION + "/64"
    else:
        sl["endpoints"][0]["addresses"][0] = ZONED
    services = [s for s in [_convert_or_skip(service_from_api, svc, field)] if s]
    slices = [s for s in [_convert_or_skip(slice_from_api, sl, field)] if s]
    text = nft.render_full(Planner(6).plan(services, slices, NodeInfo("n1"), PROXY_CONFIG).table())
    assert "pwned" not in text and "%" not in text


def test_node_address_zone_index_or_int_never_reaches_the_egress_text():
    """The API server does not check Node addresses: any node can publish these for itself."""
    nodes = [daemon_node_obj("n2", v6="fd00::2%" + INJECTION), daemon_node_obj("n3", v4=5),
             daemon_node_obj("n4", v4="0x7f.1"), daemon_node_obj("n5")]
    ips = []
    for n in nodes:
        try:
            ips += daemon_node(n).internal_ips
        except BadNode:
            pass
    text = egress.render(CLUSTER, ips)
    assert "pwned" not in text and "%" not in text and "0.0.0.5" not in text
    assert "192.168.1.2" in text  # n5 still counts


# ---- the renderer's own guard: must raise even if every parser upstream were wrong ----------

def _table(**kw):
    t = nft.Table("ip", kw.get("table", "podwire-proxy"))
    t.add_chain(nft.Chain(kw.get("chain", "c"), (kw.get("rule", "accept"),)))
    t.add_set(nft.Set(kw.get("set", "s"), "ipv4_addr", elements=frozenset([kw.get("element", "10.0.0.1")])))
    t.add_map(nft.Map("m", "ipv4_addr : verdict", {kw.get("key", "10.0.0.2"): kw.get("value", "goto c")}))
    return t


GUARD_CASES = [(f, bad) for f in ("element", "key", "value", "chain", "set", "table", "rule")
               for bad in (INJECTION, "10.0.0.1 }\nadd table ip pwned", "fd00::1%x", "10.0.0.1, 10.0.0.9",
                           "a;add table ip pwned", "a # b", 'a "b"', "a\rb", "a$b", "ünï", "x" * 300)
               if not (f == "rule" and bad == "10.0.0.1, 10.0.0.9")  # commas are rule syntax (set literals)
               and not (bad == "x" * 300 and f not in ("chain", "set", "table"))]  # only names have a length limit


@pytest.mark.parametrize("field, bad", GUARD_CASES)
def test_renderer_refuses_text_outside_its_alphabet(field, bad):
    with pytest.raises(nft.UnsafeText):
        nft.render_full(_table(**{field: bad}))


def test_renderer_guard_covers_diffs_and_deletes():
    with pytest.raises(nft.UnsafeText):
        nft.render_delete("ip", "x\nadd table ip pwned")
    with pytest.raises(nft.UnsafeText):
        list(nft.element_lines(_table(), "s", ["10.0.0.1 }\nadd table ip pwned"], verb="delete"))
    with pytest.raises(nft.UnsafeText):
        nft.chain_op("flush", _table(), "c }\nadd table ip pwned")
    assert nft.render_full(_table())  # and the valid table renders


# ---- the node daemon ---------------------------------------------------------------------------

ME = daemon_node_obj("n1", "192.168.1.1", "fd00::1", ("10.244.1.0/24", "fd10:244:1::/64"), "0a:00:00:00:00:01")
UNDERLAY = Underlay("eth0", (ipaddress.ip_interface("192.168.1.1/24"), ipaddress.ip_interface("fd00::1/64")), 1500)
CLUSTER = [ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd10:244::/48")]
MAC = re.compile(r"[0-9a-f][02468ace](:[0-9a-f]{2}){5}")
EGRESS_WORDS = {"add", "delete", "table", "ip", "ip6", "podwire-egress", "{", "}", "set", "cluster-cidrs", "type",
                "ipv4_addr", "ipv6_addr", "flags", "interval", "elements", "=", "node-ips", "chain", "postrouting",
                "nat", "hook", "priority", "srcnat;", "policy", "accept;", "saddr", "!=", "@cluster-cidrs",
                "return", "daddr", "@node-ips", "masquerade", "fully-random"}


def _typed_ip(x) -> bool:
    return isinstance(x, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and "%" not in str(x)


def _typed_net(x) -> bool:
    return isinstance(x, (ipaddress.IPv4Network, ipaddress.IPv6Network)) and "%" not in str(x)


def hostile_daemon_nodes():
    infos = [daemon_node(ME)]
    for i, (path, value, m) in enumerate(mutations(daemon_node_obj())):
        try:
            routing_view(m)
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"routing_view raised {type(e).__name__} for {path} = {value!r}"[:300])
        if isinstance(m, dict) and isinstance(m.get("metadata"), dict) and path[:2] != ("metadata", "name"):
            m["metadata"]["name"] = f"m{i}"
        try:
            infos.append(daemon_node(m))
        except BadNode:
            continue
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"node_from_api raised {type(e).__name__} ({e}) for {path} = {value!r}"[:300])
    return infos


def test_daemon_node_values_are_typed():
    for n in hostile_daemon_nodes():
        assert isinstance(n.name, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", n.name), n.name
        assert all(_typed_ip(ip) for ip in n.internal_ips), n
        assert all(_typed_net(c) for c in n.pod_cidrs), n
        assert n.vtep_mac is None or MAC.fullmatch(n.vtep_mac), n
        assert "0.0.0.5" not in map(str, n.internal_ips)


def test_daemon_egress_text_is_typed():
    infos = hostile_daemon_nodes()
    text = egress.render(CLUSTER, [ip for n in infos for ip in n.internal_ips])
    for bad in NEVER:
        assert bad not in text
    for line in text.splitlines():
        for tok in line.replace(",", " ").split():
            assert tok in EGRESS_WORDS or _is_addr(tok), f"untyped token {tok!r} in {line!r}"
    assert "192.168.1.1" in text and "192.168.1.2" in text  # valid nodes beside the hostile ones


def test_egress_renderer_refuses_untyped_text():
    for bad in (INJECTION, "fd00::1%x", "10.0.0.1, 10.0.0.9"):
        with pytest.raises(egress.EgressError):
            egress.render(CLUSTER, [bad])
        with pytest.raises(egress.EgressError):
            egress.render([bad], [])


def test_daemon_plan_and_cni_config_from_hostile_nodes_are_typed():
    infos = hostile_daemon_nodes()
    me, peers = infos[0], infos[1:]
    for mode in Mode:
        p = daemon_plan(me, peers, UNDERLAY, mode, VxlanSettings(), "0a:00:00:00:00:01", CLUSTER)
        dp = p.dataplane
        for r in dp.routes:
            assert _typed_net(r.dst) and _typed_ip(r.gateway) and r.dev in ("eth0", "podwire.vxlan"), r
        for f in dp.fdb:
            assert MAC.fullmatch(f.mac) and _typed_ip(f.dst), f
        for n in dp.neighbours:
            assert MAC.fullmatch(n.mac) and _typed_ip(n.ip), n
        assert all(_typed_ip(a.ip) for a in dp.addresses)
    text = cniconf.render(me.pod_cidrs, 1450, cniconf.CniSettings())
    assert "%" not in text and json.loads(text)


BASE_CONFIG = Config(node_name="n1")


@pytest.mark.parametrize("key, nested", [
    (k, n) for k, n in [("node_name", None), ("kubeconfig", None), ("mode", None), ("underlay_interface", None),
                        ("cluster_cidrs", None), ("route_protocol", None), ("metrics_address", None),
                        ("min_sync_interval", None), ("resync_interval", None), ("egress", None),
                        ("ensure_forwarding", None), ("proxy_enabled", None), ("proxy_healthz_address", None),
                        ("log_level", None), ("vxlan", "device"), ("vxlan", "vni"), ("vxlan", "port"),
                        ("cni", "conf_dir"), ("cni", "conf_name"), ("cni", "bridge"), ("cni", "log_file"),
                        ("cni", "data_dir"), ("vxlan", None), ("cni", None)]])
def test_daemon_config_refuses_hostile_values_with_a_config_error(key, nested):
    for value in HOSTILE + (["fd00::%eth0/64"], ["10.0.0.0/8 "], [5], ["10.0.0.0/8", INJECTION]):
        d = {key: {nested: value}} if nested else {key: value}
        try:
            c = from_dict(d, BASE_CONFIG)
        except ConfigError:
            continue
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"from_dict raised {type(e).__name__} ({e}) for {d!r}"[:300])
        # accepted: then it is typed
        assert all(_typed_net(n) for n in c.cluster_cidrs)
        assert isinstance(c.node_name, str) and "\n" not in c.node_name
        assert isinstance(c.vxlan.device, str) and re.fullmatch(r"[A-Za-z0-9_.\-]{1,15}", c.vxlan.device)
        assert isinstance(c.vxlan.vni, int) and isinstance(c.vxlan.port, int) and isinstance(c.route_protocol, int)
        for f in ("conf_dir", "conf_name", "bridge", "log_file", "data_dir"):
            v = getattr(c.cni, f)
            assert isinstance(v, str) and v and "\n" not in v and "\x00" not in v
        assert "/" not in c.cni.conf_name and re.fullmatch(r"[A-Za-z0-9_.\-]{1,15}", c.cni.bridge)
        assert c.underlay_interface is None or re.fullmatch(r"[A-Za-z0-9_.\-]{1,15}", c.underlay_interface)
        for addr in (c.metrics_address, c.proxy_healthz_address):
            host, _, port = addr.rpartition(":")
            assert 0 < int(port) < 65536 and ipaddress.ip_address(host.strip("[]"))
