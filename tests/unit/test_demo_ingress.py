"""e2e/demo.py's Ingress and Gateway part routes to what the demo deploys, checked without a cluster: every
backend is a Service of the demo on the port it serves, each path the Ingress routes exists in the httpd's
document root (nothing is rewritten), and the Gateway's listener is an entrypoint Traefik listens on."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from e2e import demo, edge


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text % {"image": "busybox"} if "%(image)s" in text else text) if d]


SERVICES = {d["metadata"]["name"]: d for d in docs(demo.SERVER) + docs(demo.SHOP_APP) if d["kind"] == "Service"}
INGRESS = docs(demo.INGRESS)[0]
GATEWAY, ROUTE = docs(demo.GATEWAY)


def served_files() -> set[str]:
    """The files httpd's command writes under /www (what GET /<name> returns)."""
    [container] = docs(demo.SHOP_APP)[0]["spec"]["template"]["spec"]["containers"]
    script = container["command"][-1]
    words = shlex.split(script.split(" for f in ", 1)[1].split(";", 1)[0])
    return set(words)


def test_every_ingress_backend_is_a_demo_service_on_its_port():
    assert INGRESS["spec"]["ingressClassName"] == edge.TRAEFIK
    rules = {r["host"]: r["http"]["paths"] for r in INGRESS["spec"]["rules"]}
    assert set(rules) == set(demo.INGRESS_HOSTS) | {demo.INGRESS_PATH_HOST}
    for host, app in demo.INGRESS_HOSTS.items():
        [path] = rules[host]
        assert path["path"] == "/" and path["backend"]["service"]["name"] == app
    for paths in rules.values():
        for p in paths:
            svc = SERVICES[p["backend"]["service"]["name"]]
            assert p["backend"]["service"]["port"]["number"] in {port["port"] for port in svc["spec"]["ports"]}


def test_paths_routed_exist_in_the_document_root():
    files = served_files()
    assert "index.html" in files
    for rule in INGRESS["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            name = p["path"].strip("/")
            assert not name or name in files, f"{rule['host']}{p['path']} would be 404 from httpd"
            if name:  # the path names its app, so the check can tell a wrong route from a right one
                assert name == p["backend"]["service"]["name"]


def test_gateway_listener_is_traefiks_web_entrypoint_and_route_reaches_shop():
    assert GATEWAY["spec"]["gatewayClassName"] == edge.TRAEFIK
    [listener] = GATEWAY["spec"]["listeners"]
    assert listener["port"] == edge.ENTRYPOINTS["web"] and listener["protocol"] == "HTTP"
    assert ROUTE["spec"]["parentRefs"] == [{"name": GATEWAY["metadata"]["name"]}]
    assert ROUTE["spec"]["hostnames"] == [demo.GATEWAY_HOST]
    [rule] = ROUTE["spec"]["rules"]
    [ref] = rule["backendRefs"]
    assert ref["port"] in {p["port"] for p in SERVICES[ref["name"]]["spec"]["ports"]}


def test_plan_names_the_traefik_build_only_when_missing_and_no_ingress_leaves_the_part_out():
    image = Path("dist/podwire-image.tar")
    warm = demo.plan(image, [], "routed", True, False)
    assert warm[-1].startswith("Ingress and Gateway API") and not any(s.startswith("Traefik:") for s in warm)
    cold = demo.plan(image, [], "routed", True, True)
    assert cold[0].startswith("Traefik: built") and len(cold) == len(warm) + 1
    assert not any("Ingress" in s or "Traefik" in s for s in demo.plan(image, [], "routed", False, True))


def test_pool_has_a_range_per_family_on_the_outside_hosts_subnet():
    from types import SimpleNamespace

    from e2e.topology import plan

    def cluster(family):
        outside = next(h for h in plan("x", "routed", 3, family).hosts if h.name == "outside")
        return SimpleNamespace(topology=SimpleNamespace(outside=SimpleNamespace(plan=outside)))

    assert demo.lb_ranges(cluster("ipv4")) == ["172.30.2.240-172.30.2.250"]
    assert demo.lb_ranges(cluster("dual")) == ["172.30.2.240-172.30.2.250", "fd00:172:30:2::f0-fd00:172:30:2::fa"]
    assert demo.lb_range(cluster("ipv6")) == "fd00:172:30:2::f0-fd00:172:30:2::fa"
    pool = yaml.safe_load(demo.lb_pool(cluster("dual")))
    assert pool["spec"]["addresses"] == demo.lb_ranges(cluster("dual"))
    assert demo.url_host("fd00::1") == "[fd00::1]" and demo.url_host("10.0.0.1") == "10.0.0.1"
    assert demo.is_address("fd00::1") and not demo.is_address("web.default.svc.cluster.local")
