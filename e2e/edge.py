"""Traefik as Ingress controller and Gateway API implementation behind a podwire LoadBalancer (issue 14, item 3).

    python3 -m e2e.edge [--shape routed|l2] [--nodes N] [--keep] [--podwire-image TAR]

Brings up a harness cluster with podwire installed (as e2e/demo.py does), a LoadBalancerPool on the outside
host's subnet, the Gateway API v1.4.0 CRDs (standard channel) and Traefik v3.6.12 from `make edge-images`,
two echo-basic backends `foo` and `bar`, then checks from the outside host, through the address podwire
wrote into the status of Traefik's `type: LoadBalancer` Service:

1. host routing: Host foo.example -> Service foo, bar.example -> bar, another host -> 404;
2. path routing on one host (kind's usage.yaml): /foo -> foo, /bar -> bar, /other -> 404;
3. TLS termination: a Secret with a certificate made now for secure.example; curl verifies the chain and
   the name; the server certificate is ours for that SNI and Traefik's default one for another name;
4. Gateway API: a Gateway (class traefik) whose status.addresses is the podwire address, an HTTPRoute to foo.

Why it is built so: nothing can be pulled here, so Traefik's manifests are built in Python from what its
v3.6 docs and providers' code say (not copied from its chart): the RBAC grants what the kubernetesingress
and kubernetesgateway providers list, watch and update, nothing more (no pods: that is for OTel). echo-basic
(the Gateway API conformance backend) answers with the Service, Host and path it saw, so every check reads
who answered from the body, not from a status code alone. Tears down unless --keep, also on failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from e2e import edge_images
from e2e.demo import LB_POOL, lb_range
from e2e.pki import CertificateAuthority
from e2e.podwire_install import build_image, diagnostics, install
from e2e.progress import Progress, Ticker, elapsed

TRAEFIK_NS = "traefik"
TRAEFIK = "traefik"
APPS_NS = "edge-apps"
# Traefik's entrypoints (container ports) and what the LoadBalancer Service exposes them as
ENTRYPOINTS = {"web": 8000, "websecure": 8443, "traefik": 8080}  # traefik: /ping for the readiness probe
SERVICE_PORTS = {"web": 80, "websecure": 443}
INGRESS_CONTROLLER = "traefik.io/ingress-controller"  # Traefik's own IngressClass controller name
GATEWAY_CONTROLLER = "traefik.io/gateway-controller"
ECHO_PORT = 3000  # echo-basic's HTTP_PORT default
APPS = ("foo", "bar")
TLS_HOST = "secure.example"
PATH_HOST = "app.example"
GATEWAY_HOST = "gw.example"
SETTLE = 40.0  # seconds: Traefik applies a change after its informers and a 2 s provider throttle


# -- Traefik's objects --------------------------------------------------------------------------------

def _rule(groups, resources, verbs) -> dict:
    return {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs)}


WATCH = ("list", "watch")  # both providers read everything through informers (listers), never GET


def rbac_rules() -> list[dict]:
    """What the two providers read and write (pkg/provider/kubernetes/{ingress,gateway}/client.go, v3.6.12)."""
    return [
        # both: backends and certificates
        _rule([""], ["services", "secrets"], WATCH),
        _rule(["discovery.k8s.io"], ["endpointslices"], WATCH),
        # kubernetesingress: Ingresses, IngressClasses and Nodes (cluster-scope informer, for NodePortLB)
        _rule(["networking.k8s.io"], ["ingresses", "ingressclasses"], WATCH),
        _rule(["networking.k8s.io"], ["ingresses/status"], ["update"]),
        _rule([""], ["nodes"], WATCH),
        # kubernetesgateway: namespaces (allowedRoutes selectors), ConfigMaps (BackendTLSPolicy CA refs) and
        # the standard channel's kinds; the experimental ones (TCPRoute, TLSRoute) only with experimentalChannel
        _rule([""], ["namespaces", "configmaps"], WATCH),
        _rule(["gateway.networking.k8s.io"], ["gatewayclasses", "gateways", "httproutes", "grpcroutes",
                                              "referencegrants", "backendtlspolicies"], WATCH),
        _rule(["gateway.networking.k8s.io"], ["gatewayclasses/status", "gateways/status", "httproutes/status",
                                              "grpcroutes/status", "backendtlspolicies/status"], ["update"]),
    ]


def traefik_args() -> list[str]:
    """Traefik v3.6's static configuration as CLI flags (docs: reference/install-configuration)."""
    published = f"{TRAEFIK_NS}/{TRAEFIK}"
    return [f"--entrypoints.{name}.address=:{port}" for name, port in ENTRYPOINTS.items()] + [
        # An Ingress's `tls` section only adds its certificate to Traefik's store; routers terminate TLS when
        # their entrypoint does (or by annotation). As Traefik's chart: websecure is TLS, web is plain HTTP.
        "--entrypoints.websecure.http.tls=true",
        "--ping=true",  # on the traefik entrypoint
        "--providers.kubernetesingress=true",
        # Ingress status.loadBalancer and Gateway status.addresses copied from our LoadBalancer Service
        f"--providers.kubernetesingress.ingressendpoint.publishedservice={published}",
        "--providers.kubernetesgateway=true",
        f"--providers.kubernetesgateway.statusaddress.service.name={TRAEFIK}",
        f"--providers.kubernetesgateway.statusaddress.service.namespace={TRAEFIK_NS}",
        "--global.checknewversion=false", "--global.sendanonymoususage=false",  # no internet here
        "--log.level=INFO",
    ]


def traefik_objects(image: str = edge_images.TRAEFIK) -> list[dict]:
    """Namespace, ServiceAccount, ClusterRole/Binding, IngressClass, GatewayClass, Deployment, Service."""
    meta = {"name": TRAEFIK, "namespace": TRAEFIK_NS}
    labels = {"app.kubernetes.io/name": TRAEFIK}
    container = {
        "name": TRAEFIK, "image": image, "imagePullPolicy": "IfNotPresent", "args": traefik_args(),
        "ports": [{"name": name, "containerPort": port} for name, port in ENTRYPOINTS.items()],
        "readinessProbe": {"httpGet": {"path": "/ping", "port": "traefik"}, "periodSeconds": 2},
        "securityContext": {"runAsUser": edge_images.NONROOT, "runAsNonRoot": True, "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TRAEFIK_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": TRAEFIK},
         "rules": rbac_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": TRAEFIK},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": TRAEFIK},
         "subjects": [{"kind": "ServiceAccount", **meta}]},
        {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": TRAEFIK},
         "spec": {"controller": INGRESS_CONTROLLER}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": TRAEFIK},
         "spec": {"controllerName": GATEWAY_CONTROLLER}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"serviceAccountName": TRAEFIK, "containers": [container],
                                        "volumes": [{"name": "tmp", "emptyDir": {}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"type": "LoadBalancer", "selector": labels,
                  "ports": [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                            for name, port in SERVICE_PORTS.items()]}},
    ]


# -- what a user deploys behind it ----------------------------------------------------------------

def app_objects(ns: str = APPS_NS) -> list[dict]:
    """The namespace and two echo-basic Deployments + Services that answer with their Service's name."""
    objs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}]
    for app in APPS:
        env = [{"name": "SERVICE_NAME", "value": app}, {"name": "HTTP_PORT", "value": str(ECHO_PORT)},
               {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
               {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
        container = {"name": app, "image": edge_images.ECHO_BASIC, "imagePullPolicy": "IfNotPresent", "env": env,
                     "ports": [{"name": "http", "containerPort": ECHO_PORT}],
                     "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 2}}
        objs += [
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app, "namespace": ns},
             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                      "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [container]}}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": app, "namespace": ns},
             "spec": {"selector": {"app": app}, "ports": [{"port": 8080, "targetPort": "http"}]}},
        ]
    return objs


def _path(path: str, service: str) -> dict:
    return {"path": path, "pathType": "Prefix", "backend": {"service": {"name": service, "port": {"number": 8080}}}}


def _ingress(name: str, ns: str, rules: list[dict], *, cls: str | None = TRAEFIK, **extra) -> dict:
    spec: dict = {"rules": rules, **extra.pop("spec", {})}
    if cls:
        spec["ingressClassName"] = cls
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": ns, **extra}, "spec": spec}


def route_objects(ns: str = APPS_NS) -> list[dict]:
    """Host routing, path routing (kind's usage.yaml: class-less, /foo and /bar), the Gateway and HTTPRoute.
    The TLS Ingress and its Secret come from tls_objects (a certificate made at run time)."""
    hosts = _ingress("by-host", ns, [{"host": f"{app}.example", "http": {"paths": [_path("/", app)]}} for app in APPS])
    paths = _ingress("by-path", ns, [{"host": PATH_HOST, "http": {"paths": [_path(f"/{a}", a) for a in APPS]}}],
                     cls=None)
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "edge", "namespace": ns},
               # Traefik maps a listener to the entrypoint whose address ends in the listener's port
               "spec": {"gatewayClassName": TRAEFIK,
                        "listeners": [{"name": "http", "protocol": "HTTP", "port": ENTRYPOINTS["web"]}]}}
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "to-foo", "namespace": ns},
             "spec": {"parentRefs": [{"name": "edge"}], "hostnames": [GATEWAY_HOST],
                      "rules": [{"backendRefs": [{"name": "foo", "port": 8080}]}]}}
    return [hosts, paths, gateway, route]


@dataclass(frozen=True)
class TlsMaterial:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def make(cls, host: str = TLS_HOST) -> "TlsMaterial":
        ca = CertificateAuthority("podwire-edge-test-ca")
        cert, key = ca.issue(host, server_names=(host,), client=False)
        return cls(ca.cert_pem, cert, key)

    def cert_sha256(self) -> str:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        return hashlib.sha256(x509.load_pem_x509_certificate(self.cert_pem).public_bytes(Encoding.DER)).hexdigest()


def tls_objects(tls: TlsMaterial, ns: str = APPS_NS) -> list[dict]:
    import base64

    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": "secure-example", "namespace": ns},
              "data": {"tls.crt": base64.b64encode(tls.cert_pem).decode(),
                       "tls.key": base64.b64encode(tls.key_pem).decode()}}
    ingress = _ingress("tls", ns, [{"host": TLS_HOST, "http": {"paths": [_path("/", "foo")]}}],
                       annotations={"traefik.ingress.kubernetes.io/router.entrypoints": "websecure"},
                       spec={"tls": [{"hosts": [TLS_HOST], "secretName": "secure-example"}]})
    return [secret, ingress]


def to_yaml(objs: list[dict]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


# -- install and check on a cluster ---------------------------------------------------------------

class EdgeError(RuntimeError):
    pass


# Prints the sha256 of the certificate a TLS server sends for an SNI (no verification: we compare it).
PEER_CERT = ("import hashlib, socket, ssl, sys\n"
             "c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE\n"
             "with socket.create_connection((sys.argv[1], 443), timeout=5) as s:\n"
             "    with c.wrap_socket(s, server_hostname=sys.argv[2]) as t:\n"
             "        print(hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest())\n")


class Edge:
    """Traefik on a running cluster with podwire installed, and the checks from the outside host."""

    def __init__(self, cluster, workdir: Path):
        self.c = cluster
        self.dir = workdir
        self.results: list[tuple[str, bool, str, float]] = []
        self.timings: dict[str, float] = {}
        self.address = ""
        self.tls: TlsMaterial | None = None

    def kubectl(self, *args, input: str | None = None, timeout: int = 60) -> str:
        r = self.c.kubectl(*args, check=False, input=input, timeout=timeout)
        if r.returncode != 0:
            raise EdgeError(f"kubectl {' '.join(args)}: {(r.stderr or r.stdout).strip()[-2000:]}")
        return r.stdout

    def apply(self, objs: list[dict]) -> None:
        self.kubectl("apply", "-f", "-", input=to_yaml(objs))

    def timed(self, key: str, fn):
        started = time.monotonic()
        try:
            return fn()
        finally:
            self.timings[key] = round(time.monotonic() - started, 1)

    # -- install --------------------------------------------------------------------------------

    def install(self, *, channel: str = "standard", objects: list[dict] | None = None,
                images: tuple[str, ...] = (edge_images.TRAEFIK, edge_images.ECHO_BASIC)) -> None:
        """Images into the nodes, a pool, the Gateway API CRDs, Traefik; returns once Traefik is ready and its
        Service has an address (self.address). `channel`, `objects` (default traefik_objects()) and `images`:
        for e2e/gateway_conformance.py, which installs Traefik as its own conformance run does."""
        tarballs = edge_images.edge_images()  # warm after `make edge-images`: no build
        for name in images:
            self.timed(f"import {name.split('/')[-1]}", lambda n=name: self.c.import_image(tarballs[n]))
        self.kubectl("wait", "--for=condition=established", "crd/loadbalancerpools.podwire.io", "--timeout=60s",
                     timeout=70)
        self.kubectl("apply", "-f", "-", input=LB_POOL % {"range": lb_range(self.c)})
        crds = edge_images.gateway_api_crds(channel)
        # server-side: the HTTPRoute CRD is too large for client-side apply's last-applied annotation;
        # the experimental directory is a kustomization (-k)
        self.kubectl("apply", "--server-side", "-k" if channel == "experimental" else "-f", str(crds), timeout=180)
        self.kubectl("wait", "--for=condition=established", "crd", "--all", "--timeout=60s", timeout=70)
        created = time.monotonic()
        self.apply(traefik_objects() if objects is None else objects)
        self.address = self.wait_for_address()
        self.timings["Service created -> address in status"] = round(time.monotonic() - created, 1)
        self.kubectl("-n", TRAEFIK_NS, "rollout", "status", f"deployment/{TRAEFIK}", "--timeout=180s", timeout=200)
        self.timings["Service created -> Traefik ready"] = round(time.monotonic() - created, 1)

    def wait_for_address(self, seconds: float = 60) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ip = self.kubectl("-n", TRAEFIK_NS, "get", "service", TRAEFIK, "-o",
                              "jsonpath={.status.loadBalancer.ingress[0].ip}").strip()
            if ip:
                return ip
            time.sleep(0.5)
        svc = self.kubectl("-n", TRAEFIK_NS, "describe", "service", TRAEFIK)
        raise EdgeError(f"Traefik's Service got no address in {seconds:.0f} s:\n{svc}")

    def deploy_apps(self) -> None:
        self.tls = TlsMaterial.make()
        (self.dir / "ca.pem").write_bytes(self.tls.ca_pem)
        self.apply(app_objects())
        self.apply(route_objects() + tls_objects(self.tls))
        for app in APPS:
            self.kubectl("-n", APPS_NS, "rollout", "status", f"deployment/{app}", "--timeout=120s", timeout=140)

    # -- from the outside host --------------------------------------------------------------------

    def outside(self, *argv: str, timeout: int = 20) -> subprocess.CompletedProcess:
        return subprocess.run(self.c.topology.outside.argv(list(argv)), capture_output=True, text=True,
                              timeout=timeout)

    def get(self, host: str, path: str = "/", *, https: bool = False, address: str | None = None) -> tuple[int, dict]:
        """curl from the outside host, `host` resolved to the address: (HTTP status, echo-basic's JSON or {}).
        Status 0 when curl failed (connection, TLS verification: the error is in the dict)."""
        scheme, port = ("https", 443) if https else ("http", 80)
        argv = ["curl", "-sS", "-m", "5", "-o", "-", "-w", "\n%{http_code}",
                "--resolve", f"{host}:{port}:{address or self.address}", f"{scheme}://{host}{path}"]
        if https:
            argv[1:1] = ["--cacert", str(self.dir / "ca.pem")]
        r = self.outside(*argv)
        if r.returncode != 0:
            return 0, {"error": f"curl exit {r.returncode}: {r.stderr.strip()}"}
        body, _, code = r.stdout.rpartition("\n")
        try:
            answer = json.loads(body) if body.strip().startswith("{") else {"body": body.strip()[:200]}
        except json.JSONDecodeError:
            answer = {"body": body.strip()[:200]}
        return int(code or 0), answer

    def check(self, label: str, fn) -> tuple[bool, str]:
        """fn() -> (ok, detail), retried until ok or SETTLE seconds (Traefik applies changes asynchronously)."""
        started = time.monotonic()
        deadline = started + SETTLE
        while True:
            try:
                ok, detail = fn()
            except (subprocess.TimeoutExpired, EdgeError) as e:
                ok, detail = False, str(e)
            if ok or time.monotonic() > deadline:
                break
            time.sleep(1)
        took = time.monotonic() - started
        self.results.append((label, ok, detail, round(took, 1)))
        print(f"  {'PASS' if ok else 'FAIL'}  {label} ({took:.1f}s): {detail}", flush=True)
        return ok, detail

    def routed_to(self, host: str, path: str, service: str, **kw) -> tuple[bool, str]:
        code, answer = self.get(host, path, **kw)
        seen = f"{code} from {answer.get('service') or answer}" + (
            f" (pod {answer['pod']}, Host {answer['host']}, path {answer['path']})" if "pod" in answer else "")
        return code == 200 and answer.get("service") == service and answer.get("host") == host \
            and answer.get("path") == path, seen

    def not_found(self, host: str, path: str = "/") -> tuple[bool, str]:
        code, answer = self.get(host, path)
        return code == 404, f"{code} {answer.get('error') or answer.get('body', '')}".strip()

    def all_of(self, *probes) -> tuple[bool, str]:
        results = [p() for p in probes]
        return all(ok for ok, _ in results), "; ".join(d for _, d in results)

    def peer_cert(self, sni: str) -> str:
        r = self.outside(sys.executable, "-c", PEER_CERT, self.address, sni)
        if r.returncode != 0:
            raise EdgeError(f"TLS handshake for {sni}: {r.stderr.strip()[-300:]}")
        return r.stdout.strip()

    def gateway_status(self) -> tuple[bool, str]:
        gw = json.loads(self.kubectl("-n", APPS_NS, "get", "gateway", "edge", "-o", "json"))
        addresses = [a.get("value") for a in gw.get("status", {}).get("addresses", [])]
        conditions = {c["type"]: c["status"] for c in gw.get("status", {}).get("conditions", [])}
        route = json.loads(self.kubectl("-n", APPS_NS, "get", "httproute", "to-foo", "-o", "json"))
        accepted = [c["status"] for p in route.get("status", {}).get("parents", []) for c in p.get("conditions", [])
                    if c["type"] == "Accepted"]
        ok = addresses == [self.address] and conditions.get("Programmed") == "True" and accepted == ["True"]
        return ok, f"status.addresses {addresses}, Programmed={conditions.get('Programmed')}, route Accepted={accepted}"

    def check_hosts(self) -> tuple[bool, str]:
        return self.check(f"host routing via {self.address}: foo.example -> foo, bar.example -> bar, "
                          "other.example -> 404",
                          lambda: self.all_of(lambda: self.routed_to("foo.example", "/", "foo"),
                                              lambda: self.routed_to("bar.example", "/", "bar"),
                                              lambda: self.not_found("other.example")))

    def check_paths(self) -> tuple[bool, str]:
        return self.check(f"path routing via {self.address} on {PATH_HOST}: /foo -> foo, /bar -> bar, /other -> 404",
                          lambda: self.all_of(lambda: self.routed_to(PATH_HOST, "/foo", "foo"),
                                              lambda: self.routed_to(PATH_HOST, "/bar", "bar"),
                                              lambda: self.not_found(PATH_HOST, "/other")))

    def check_tls(self) -> tuple[bool, str]:
        if self.tls is None:
            raise EdgeError("deploy_apps() first: no certificate made")
        ours = self.tls.cert_sha256()

        def probe() -> tuple[bool, str]:
            ok, seen = self.routed_to(TLS_HOST, "/", "foo", https=True)  # curl verifies chain and name
            served, other = self.peer_cert(TLS_HOST), self.peer_cert("other.example")
            plain, plain_seen = self.not_found(TLS_HOST)  # the Ingress names websecure only
            return (ok and served == ours and other != ours and plain,
                    f"https {seen}{', chain and name verified with our CA' if ok else ''}; "
                    f"certificate for SNI {TLS_HOST} "
                    f"{'is ours' if served == ours else 'is NOT ours: ' + served[:16]}, for other.example "
                    f"{'Traefik default' if other != ours else 'ours too (not chosen by SNI)'}; "
                    f"plain http://{TLS_HOST}/ -> {plain_seen}")
        return self.check(f"TLS termination via {self.address}:443 for {TLS_HOST} (Secret, certificate made now)",
                          probe)

    def check_gateway(self) -> tuple[bool, str]:
        def probe() -> tuple[bool, str]:
            ok, status = self.gateway_status()
            if not ok:
                return False, status
            gw = json.loads(self.kubectl("-n", APPS_NS, "get", "gateway", "edge", "-o", "json"))
            routed, seen = self.routed_to(GATEWAY_HOST, "/", "foo", address=gw["status"]["addresses"][0]["value"])
            return routed, f"{status}; {GATEWAY_HOST} -> {seen}"
        return self.check("Gateway API: Gateway edge (class traefik) has the podwire address, HTTPRoute to foo",
                          probe)

    def check_rbac(self) -> tuple[bool, str]:
        """The ClusterRole grants what both providers use: a missing verb shows as client-go's `forbidden`
        errors in Traefik's log (its informers retry forever, so routing alone would not tell)."""
        def probe() -> tuple[bool, str]:
            log = self.kubectl("-n", TRAEFIK_NS, "logs", f"deployment/{TRAEFIK}", timeout=30)
            refused = [line for line in log.splitlines() if "forbidden" in line]
            return not refused, (f"{len(refused)} refusals, first: {refused[0][-300:]}" if refused
                                 else f"no RBAC refusal in {len(log.splitlines())} log lines")
        return self.check("Traefik's ClusterRole: nothing refused", probe)

    def run_checks(self) -> None:
        for check in (self.check_hosts, self.check_paths, self.check_tls, self.check_gateway, self.check_rbac):
            check()

    def show(self) -> None:
        for args in (("-n", TRAEFIK_NS, "get", "service", TRAEFIK), ("get", "ingress", "-A"),
                     ("get", "gatewayclass,gateway,httproute", "-A"), ("get", "lbpool")):
            r = self.c.kubectl(*args, check=False, timeout=30)
            print(f"$ kubectl {' '.join(args)}\n{(r.stdout or r.stderr).rstrip()}", flush=True)

    def traefik_logs(self) -> str:
        r = self.c.kubectl("-n", TRAEFIK_NS, "logs", f"deployment/{TRAEFIK}", "--tail=60", check=False, timeout=30)
        return r.stdout + r.stderr


# -- command line ---------------------------------------------------------------------------------

STEPS = ["podwire image (make image)", "cluster: control plane + full nodes, no kube-proxy",
         "install podwire: kubectl apply -f manifests/podwire.yaml",
         "Traefik: images, LoadBalancerPool, Gateway API CRDs, Traefik behind a LoadBalancer Service",
         "apps: echo-basic foo and bar, Ingresses (host, path, TLS), Gateway and HTTPRoute",
         "checks from the outside host"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("routed", "l2"), default="routed")
    ap.add_argument("--nodes", type=int, default=2, choices=range(1, 7), metavar="N")
    ap.add_argument("--name", default="edge")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--podwire-image", type=Path, help="podwire's image tarball made earlier (make image)")
    args = ap.parse_args(argv)

    from e2e.cluster import Cluster

    progress = Progress("==", STEPS)
    steps = iter(range(len(STEPS)))
    failed: list[str] = []
    edge = None
    cluster = Cluster(args.name, args.shape, args.nodes, full_nodes=True)

    def step(key: str, fn):
        print(progress.start(next(steps)), flush=True)
        with Ticker(progress, sys.stdout):
            return edge.timed(key, fn) if edge else fn()

    with tempfile.TemporaryDirectory(prefix="podwire-edge-") as tmp:
        try:
            edge = Edge(cluster, Path(tmp))
            image = args.podwire_image or step("podwire image", build_image)
            if args.podwire_image:
                next(steps)
            step("cluster up", cluster.up)
            step("podwire install", lambda: install(cluster, image))
            step("Traefik install", edge.install)
            step("apps", edge.deploy_apps)
            edge.show()
            print(progress.start(next(steps)), flush=True)
            edge.run_checks()
            edge.show()
            failed = [label for label, ok, _, _ in edge.results if not ok]
            if failed:
                print(edge.traefik_logs()[-3000:])
        except Exception as e:  # noqa: BLE001 - report what broke, then tear down
            failed.append(f"ran to the end: {str(e)[:2000]}")
            print(f"  FAIL  {failed[-1]}\n{diagnostics(cluster)[-3000:]}", flush=True)
            if edge:
                print(edge.traefik_logs()[-3000:])
        finally:
            if edge:
                print("timings (s): " + json.dumps({**edge.timings, **{r[0].split(':')[0]: r[3] for r in edge.results}},
                                                    indent=1))
                passed = sum(ok for _, ok, _, _ in edge.results)
                print(f"== {passed} passed, {len(failed)} failed in {elapsed(time.monotonic() - progress.started)}")
            for label in failed:
                print(f"  FAILED: {label.splitlines()[0]}")
            cluster.keep_or_down(args.keep)
    return 1 if failed or not edge or not edge.results else 0


if __name__ == "__main__":
    sys.exit(main())
