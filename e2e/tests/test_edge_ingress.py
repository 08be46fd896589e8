"""Traefik v3.6.12 behind a podwire LoadBalancer on the harness (issue 14, item 3): host and path routing,
TLS termination and a Gateway API HTTPRoute, each checked from the outside host through the address podwire
wrote into the status of Traefik's Service (e2e/edge.py; `python3 -m e2e.edge` runs the same as a command).

Needs `make edge-images` first (cold: tens of minutes; the fixture would build what is missing). One routed
2-node cluster with full nodes, podwire installed from its image and manifests, no kube-proxy.
"""

from __future__ import annotations

import ipaddress
import os

import pytest

from e2e import edge


@pytest.fixture(scope="module")
def traefik(tmp_path_factory):
    from e2e.cluster import Cluster
    from e2e.podwire_install import build_image, install

    image = build_image()
    with Cluster(f"e{os.getpid() % 100000}", "routed", 2, full_nodes=True) as cluster:
        install(cluster, image)
        e = edge.Edge(cluster, tmp_path_factory.mktemp("edge"))
        try:
            e.install()
            e.deploy_apps()
        except Exception:
            print(e.traefik_logs()[-3000:])
            raise
        yield e
        print("\nedge timings (s):", e.timings, {label: took for label, _, _, took in e.results})


@pytest.mark.parametrize("check", ["check_hosts", "check_paths", "check_tls", "check_gateway", "check_rbac"])
@pytest.mark.root
@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.frozen
def test_from_the_outside_host_through_the_podwire_address(traefik, check):
    first, last = (ipaddress.ip_address(a) for a in edge.lb_range(traefik.c).split("-"))
    assert first <= ipaddress.ip_address(traefik.address) <= last, f"{traefik.address} is not in {first}-{last}"
    ok, detail = getattr(traefik, check)()
    assert ok, f"{detail}\n{traefik.traefik_logs()[-2000:]}"


def test_manifests_agree_with_traefiks_entrypoints():
    """Traefik binds a Gateway listener to the entrypoint whose address ends in the listener's port, and the
    Service's targetPorts name container ports: a mismatch leaves the Gateway unprogrammed or the address dead."""
    objs = {(o["kind"], o["metadata"]["name"]): o for o in edge.traefik_objects() + edge.route_objects()}
    args = objs["Deployment", edge.TRAEFIK]["spec"]["template"]["spec"]["containers"][0]["args"]
    ports = {p["name"]: p["containerPort"] for p in
             objs["Deployment", edge.TRAEFIK]["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for listener in objs["Gateway", "edge"]["spec"]["listeners"]:
        assert any(a.startswith("--entrypoints.") and a.endswith(f".address=:{listener['port']}") for a in args)
    for port in objs["Service", edge.TRAEFIK]["spec"]["ports"]:
        assert f"--entrypoints.{port['targetPort']}.address=:{ports[port['targetPort']]}" in args
    assert objs["Service", edge.TRAEFIK]["spec"]["type"] == "LoadBalancer"
    assert objs["GatewayClass", edge.TRAEFIK]["spec"]["controllerName"] == "traefik.io/gateway-controller"
    assert "--entrypoints.websecure.http.tls=true" in args
