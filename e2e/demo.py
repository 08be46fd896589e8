"""The podwire demo: a real 3-node cluster, podwire installed with kubectl, and what a user checks.

    python3 -m e2e.demo [--shape routed|l2] [--keep] [--podwire-image TAR]      (make demo)

Each step is a line "== [i/n] what; then: what is left", with a heartbeat every 30 s while it
runs; it builds only what the demo needs and is missing (no e2e.test, no test images: those are
the conformance command's).

1. brings up the harness cluster: control plane + 3 full nodes (containerd + kubelet), no CNI, no kube-proxy;
2. installs podwire like a user: image loaded into the nodes, `kubectl apply -f manifests/podwire.yaml`;
3. deploys a 3-replica web server (one per node) behind a LoadBalancer Service (an address from a
   LoadBalancerPool on the outside host's subnet), and a client pod;
4. shows the nodes and pods with kubectl, then checks and prints: pod→pod on every node, pod→Service by
   DNS name, NodePort from a host outside the cluster on every node, the Service's EXTERNAL-IP from
   that host, egress masquerade to that host;
5. NetworkPolicy, as a learner types it: namespace demo-policy with a backend, a frontend and another pod;
   other → backend connects, then a policy lets only `app: frontend` into backend's port: frontend → backend
   still connects, other → backend gets no answer within 2 s.
6. Ingress and Gateway API, as a learner types them: Gateway API's CRDs and Traefik (`make edge-images`'
   image, built here when missing) behind a LoadBalancer Service; a second app `shop`; one Ingress by host
   name (web.demo.example, shop.demo.example; another host 404) and by path (demo.example/web, /shop), and
   a Gateway + HTTPRoute (gw.demo.example -> shop), each reached with curl from the outside host through
   the address podwire gave Traefik's Service. `--no-ingress` leaves this part out.
The last lines name every check that failed.
Tears everything down unless --keep (then `python3 -m e2e.cluster down --name demo`).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from e2e import build, images
from e2e.podwire_install import build_image, diagnostics, install
from e2e.progress import Progress, Ticker, elapsed

# The web server (its hostname as the page) and an idle client pod, shared by both parts of the demo.
HTTPD_CONTAINER = """\
      containers:
      - name: httpd
        image: %(image)s
        imagePullPolicy: IfNotPresent
        command:   # its hostname at /, /web and /shop (the Ingress routes by path, rewriting nothing)
        - sh
        - -c
        - "mkdir -p /www && for f in index.html web shop; do hostname > /www/$f; done && exec httpd -f -p 8080 -h /www"
        ports: [{containerPort: 8080}]
"""
CLIENT_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: %(name)s, namespace: %(ns)s, labels: {app: %(name)s}}
spec:
  containers:
  - {name: client, image: %(image)s, imagePullPolicy: IfNotPresent, command: [sleep, "36000"]}
"""

SERVER = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
         labelSelector: {matchLabels: {app: web}}}
""" + HTTPD_CONTAINER + """\
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack   # an address of each family on a dual-stack cluster
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
""" + CLIENT_POD % {"name": "client", "ns": "default", "image": "%(image)s"}

POLICY_NS = "demo-policy"
POLICY_APP = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo-policy}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: demo-policy}
spec:
  replicas: 1
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec:
""" + HTTPD_CONTAINER + """\
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo-policy}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: 8080}]
---
""" + "---\n".join(CLIENT_POD % {"name": n, "ns": POLICY_NS, "image": "%(image)s"} for n in ("frontend", "other"))
# The example of shared/notes/network-policy.md: backend admits only the frontend, on its port.
POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend-allow-frontend, namespace: demo-policy}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{protocol: TCP, port: 8080}]
"""
CONNECT_TIMEOUT = 2  # seconds: a dropped connection reads as "no answer" after this

# The way in through an Ingress controller: a second app, one Ingress routing by host name and by path,
# and the same through Gateway API. Traefik (e2e/edge.py's objects) sits behind a LoadBalancer Service.
SHOP_APP = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
""" + HTTPD_CONTAINER + """\
---
apiVersion: v1
kind: Service
metadata: {name: shop}
spec:
  selector: {app: shop}
  ports: [{port: 80, targetPort: 8080}]
"""
INGRESS_HOSTS = {"web.demo.example": "web", "shop.demo.example": "shop"}
INGRESS_PATH_HOST = "demo.example"
GATEWAY_HOST = "gw.demo.example"
INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: demo}
spec:
  ingressClassName: traefik
  rules:
  - host: web.demo.example
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
  - host: shop.demo.example
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: shop, port: {number: 80}}}}]
  - host: demo.example
    http:
      paths:
      - {path: /web, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /shop, pathType: Prefix, backend: {service: {name: shop, port: {number: 80}}}}
"""
GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: demo}
spec:
  gatewayClassName: traefik
  listeners: [{name: http, protocol: HTTP, port: 8000}]   # Traefik's web entrypoint (its Service's port 80)
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: demo}]
  hostnames: [gw.demo.example]
  rules: [{backendRefs: [{name: shop, port: 80}]}]
"""
INGRESS_SETTLE = 40.0  # seconds: Traefik applies a change after its informers and a 2 s provider throttle

# Answers each TCP connection with the peer's address: what the outside host sees as our source.
ECHO_SOURCE = ("import socketserver\n"
               "class H(socketserver.StreamRequestHandler):\n"
               "    def handle(self):\n"
               "        self.rfile.readline()\n"
               "        peer = self.client_address[0].removeprefix('::ffff:')\n"
               "        self.wfile.write(b'HTTP/1.0 200 OK\\r\\n\\r\\n' + peer.encode())\n"
               "import socket\n"
               "class S(socketserver.TCPServer):\n"
               "    address_family, allow_reuse_address = socket.AF_INET6, True\n"
               "S(('::', 9000), H).serve_forever()\n")


def shell_word(arg: str) -> str:
    """An argument as a person types it in bash: "double quotes" around a command holding 'single
    quotes' (shlex.quote would splice in '"'"'), when nothing in it is special inside double quotes."""
    if "'" in arg and not any(c in arg for c in '"$`!') and "\\\\" not in arg and not arg.endswith("\\"):
        return f'"{arg}"'
    return shlex.quote(arg)


class Demo:
    def __init__(self, cluster):
        self.c = cluster
        self.results: list[tuple[str, bool, str]] = []

    def kubectl(self, *args, check=True, timeout=60) -> str:
        r = self.c.kubectl(*args, check=False, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def check(self, label: str, ok: bool, detail: str) -> None:
        self.results.append((label, ok, detail))
        print(f"  {'PASS' if ok else 'FAIL'}  {label}: {detail}", flush=True)

    def retry(self, fn, seconds: float = 20.0):
        """Service rules and DNS settle within a second or two; give real clusters some slack."""
        deadline = time.monotonic() + seconds
        while True:
            value = fn()
            if value[0] or time.monotonic() > deadline:
                return value
            time.sleep(0.5)

    def http_get(self, host: str, port: int) -> tuple[bool, str]:
        """GET / from the client pod; the body's last line. busybox's nc, not its wget: the static
        busybox's wget crashes in glibc's resolver without NSS libraries, even for literal IPs."""
        if not is_address(host):  # a DNS name: busybox's nslookup speaks DNS itself
            host = f"$(nslookup {host} | awk '/^Address/ {{a=$2}} END {{print a}}')"
        return self.exec_client("sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port} | tail -1")

    def exec_client(self, *cmd: str) -> tuple[bool, str]:
        r = self.c.kubectl("exec", "client", "--", *cmd, check=False, timeout=30)
        return r.returncode == 0, (r.stdout.strip() or r.stderr.strip())

    def outside(self, *cmd: str) -> tuple[bool, str]:
        r = subprocess.run(self.c.topology.outside.argv(list(cmd)), capture_output=True, text=True, timeout=30)
        return r.returncode == 0, (r.stdout.strip() or r.stderr.strip())

    def deploy(self) -> None:
        # manifests/podwire.yaml brought the CRD: its kind is served once the API server has it established
        self.kubectl("wait", "--for=condition=established", "crd/loadbalancerpools.podwire.io", "--timeout=60s",
                     timeout=70)
        manifest = lb_pool(self.c) + "---\n" + SERVER % {"image": images.BUSYBOX}
        kubectl = [str(self.c.bin_dir / "kubectl"), "--kubeconfig", str(self.c.kubeconfig)]
        r = subprocess.run([*kubectl, "apply", "-f", "-"],
                           input=manifest, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        self.kubectl("rollout", "status", "deployment/web", "--timeout=120s", timeout=140)
        self.kubectl("wait", "--for=condition=Ready", "pod/client", "--timeout=120s", timeout=140)

    def run_checks(self) -> None:
        pods = json.loads(self.kubectl("get", "pods", "-l", "app=web", "-o", "json"))["items"]
        servers = {p["metadata"]["name"]: (p["status"]["podIP"], p["spec"]["nodeName"]) for p in pods}
        self.check("server pods on different nodes", len({n for _, n in servers.values()}) == 3,
                   ", ".join(f"{name} on {node}" for name, (_, node) in sorted(servers.items())))
        for p in sorted(pods, key=lambda p: p["metadata"]["name"]):
            name, node = p["metadata"]["name"], p["spec"]["nodeName"]
            for ip in [a["ip"] for a in p["status"].get("podIPs") or [{"ip": p["status"]["podIP"]}]]:
                ok, out = self.retry(lambda ip=ip, name=name: (lambda r: (r[0] and r[1] == name, r[1]))(
                    self.http_get(ip, 8080)))
                self.check(f"pod -> pod {ip} on {node}", ok, out)

        svc = json.loads(self.kubectl("get", "service", "web", "-o", "json"))
        cluster_ip, node_port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]
        fqdn = "web.default.svc.cluster.local"
        ok, out = self.retry(lambda: self.exec_client("nslookup", fqdn))
        self.check(f"DNS {fqdn}", ok and cluster_ip in out, f"-> {cluster_ip}" if ok and cluster_ip in out else out)
        seen = set()
        for _ in range(6):
            ok, out = self.retry(lambda: (lambda r: (r[0] and r[1] in servers, r[1]))(self.http_get(fqdn, 80)))
            if ok:
                seen.add(out)
        self.check("pod -> Service by DNS name", bool(seen) and seen <= set(servers),
                   f"answered by {', '.join(sorted(seen)) or 'nobody'}")

        for node in self.c.nodes:
            for node_ip in node.ips:  # every family's address
                url = f"http://{url_host(node_ip)}:{node_port}"
                ok, out = self.retry(lambda url=url: (lambda r: (r[0] and r[1] in servers, r[1]))(
                    self.outside("curl", "-s", "-m", "3", url)))
                self.check(f"NodePort from outside the cluster via {node.name} {url}", ok, out)

        wanted = len(self.c.topology.outside.ips)  # one address per family of the outside host's subnet
        ips = self.retry(lambda: (lambda v: (len(v) >= wanted, v))(self.kubectl(
            "get", "service", "web", "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}").split()), 30)[1]
        print(self.kubectl("get", "service", "web"), flush=True)
        for ip in ips or [""]:
            ok, out = (False, "no EXTERNAL-IP") if not ip else self.retry(
                lambda ip=ip: (lambda r: (r[0] and r[1] in servers, r[1]))(
                    self.outside("curl", "-s", "-m", "3", f"http://{url_host(ip)}/")))
            self.check(f"LoadBalancer: EXTERNAL-IP {ip or '<pending>'} from the pool, from outside the cluster",
                       ok, out)

        server = subprocess.Popen(self.c.topology.outside.argv([sys.executable, "-c", ECHO_SOURCE]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client = json.loads(self.kubectl("get", "pod", "client", "-o", "json"))
            node = next(n for n in self.c.nodes if n.name == client["spec"]["nodeName"])
            for outside_ip in self.c.topology.outside.ips:
                node_ip = str(next(a for a in node.ips if a.version == outside_ip.version))
                ok, out = self.retry(lambda o=outside_ip, n=node_ip: (lambda r: (r[0] and r[1] == n, r[1]))(
                    self.http_get(str(o), 9000)))
                pod_ip = next((a["ip"] for a in client["status"].get("podIPs") or []
                               if ipaddress.ip_address(a["ip"]).version == outside_ip.version),
                              client["status"]["podIP"])
                self.check(f"egress: the outside host sees the pod ({pod_ip}) as its node",
                           ok and out == node_ip, f"source {out}, node {node_ip}")
        finally:
            server.kill()
            server.wait()


    # -- NetworkPolicy, shown as the kubectl commands a learner types ---------------------------

    def typed(self, *args: str, manifest: str = "", timeout: int = 60) -> tuple[bool, str]:
        """Runs and prints `kubectl ARGS` (a manifest as the heredoc one would type); its output."""
        heredoc = f" <<EOF\n{manifest}EOF" if manifest else ""
        print("$ kubectl " + " ".join(map(shell_word, args)) + heredoc, flush=True)
        r = self.c.kubectl(*args, check=False, input=manifest or None, timeout=timeout)
        out = (r.stdout.strip() or r.stderr.strip())
        if out:
            print(out, flush=True)
        return r.returncode == 0, out

    def policy_probe(self, pod: str, ip: str, quiet: bool = False) -> tuple[bool, str]:
        """pod -> backend Service: (answered by a backend, what came back)."""
        cmd = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {CONNECT_TIMEOUT} {ip} 80 | tail -1"
        args = ("-n", POLICY_NS, "exec", pod, "--", "sh", "-c", cmd)
        if quiet:
            r = self.c.kubectl(*args, check=False, timeout=30)
            out = r.stdout.strip()
        else:
            _, out = self.typed(*args, timeout=30)
        return out.startswith("backend-"), out or f"no answer within {CONNECT_TIMEOUT} s"

    def settle(self, pod: str, ip: str, want: bool, seconds: float = 20.0) -> tuple[bool, str]:
        """Probes until the outcome is `want` (the daemon applies a policy within its sync interval),
        then once more where the learner sees it. Returns (outcome == want, the shown output)."""
        self.retry(lambda: (self.policy_probe(pod, ip, quiet=True)[0] == want, ""), seconds)
        reached, out = self.policy_probe(pod, ip)
        return reached == want, out

    def run_policy_checks(self) -> None:
        ok, out = self.typed("apply", "-f", "-", manifest=POLICY_APP % {"image": images.BUSYBOX})
        if not ok:
            raise RuntimeError(f"kubectl apply (demo-policy): {out}")
        self.typed("-n", POLICY_NS, "rollout", "status", "deployment/backend", "--timeout=120s", timeout=140)
        self.typed("-n", POLICY_NS, "wait", "--for=condition=Ready", "pod/frontend", "pod/other", "--timeout=120s",
                   timeout=140)
        self.typed("-n", POLICY_NS, "get", "pods", "-o", "wide", "--show-labels")
        ok, ip = self.typed("-n", POLICY_NS, "get", "service", "backend", "-o", "jsonpath={.spec.clusterIP}")
        if not ok:
            raise RuntimeError(f"kubectl get service backend: {ip}")

        print("# no policy yet: every pod reaches backend", flush=True)
        ok, out = self.settle("other", ip, True)
        self.check("policy: before any NetworkPolicy, other -> backend connects", ok, out)
        print("# backend admits only app=frontend on 8080", flush=True)
        applied, out = self.typed("apply", "-f", "-", manifest=POLICY)
        if not applied:
            raise RuntimeError(f"kubectl apply (NetworkPolicy): {out}")
        self.typed("-n", POLICY_NS, "describe", "networkpolicy", "backend-allow-frontend")
        ok, out = self.settle("frontend", ip, True)
        self.check("policy: frontend -> backend allowed by backend-allow-frontend", ok, out)
        ok, out = self.settle("other", ip, False)
        self.check("policy: other -> backend denied by backend-allow-frontend", ok,
                   out if ok else f"connected ({out}): the policy is not enforced")

    # -- Ingress and Gateway API: Traefik behind a LoadBalancer, as a learner types it -------------

    def outside_typed(self, *cmd: str) -> tuple[bool, str]:
        """Runs and prints a command on the outside host (a machine on the nodes' LAN)."""
        print("outside$ " + " ".join(map(shell_word, cmd)), flush=True)
        ok, out = self.outside(*cmd)
        print(out, flush=True)
        return ok, out

    def curl_outside(self, address: str, host: str, path: str = "/") -> tuple[bool, str]:
        """GET http://host/path from the outside host, host resolved to `address`: (ok, body's last line or
        the status code)."""
        r = subprocess.run(self.c.topology.outside.argv(
            ["curl", "-s", "-m", "3", "-w", "\n%{http_code}", "--resolve", f"{host}:80:{url_host(address)}",
             f"http://{host}{path}"]), capture_output=True, text=True, timeout=30)
        body, _, code = r.stdout.strip().rpartition("\n")
        return r.returncode == 0, (body.strip().splitlines() or [code])[-1] if code == "200" else code

    def routes(self, address: str, want: dict[tuple[str, str], str], seconds: float = INGRESS_SETTLE
               ) -> tuple[bool, str]:
        """Every (host, path) answered by a pod of its app ("404" for the status), within `seconds`; then once
        more as the learner types it. (all right, "host/path -> who answered" for each)."""
        def probe(show: bool) -> tuple[bool, str]:
            seen = []
            for (host, path), app in want.items():
                if show:
                    self.outside_typed("curl", "-s", "--resolve", f"{host}:80:{url_host(address)}",
                                       f"http://{host}{path}")
                _, who = self.curl_outside(address, host, path)
                seen.append((who == app if app == "404" else who.startswith(f"{app}-"), f"{host}{path} -> {who}"))
            return all(ok for ok, _ in seen), ", ".join(text for _, text in seen)

        self.retry(lambda: probe(False), seconds)
        return probe(True)

    def run_ingress_checks(self, traefik_image: Path) -> None:
        from e2e import edge, edge_images  # edge imports this module

        self.c.import_image(traefik_image)  # what `kind load` does; nothing is pulled here
        print("# Gateway API's CRDs (standard channel), then Traefik: RBAC, IngressClass and GatewayClass "
              "traefik, a Deployment and a LoadBalancer Service", flush=True)
        ok, out = self.typed("apply", "--server-side", "-f", str(edge_images.gateway_api_crds("standard")),
                             timeout=120)
        if not ok:
            raise RuntimeError(f"kubectl apply (Gateway API CRDs): {out}")
        self.kubectl("wait", "--for=condition=established", "crd", "--all", "--timeout=60s", timeout=70)
        traefik_yaml = self.c.dir / "traefik.yaml"
        traefik_yaml.write_text(edge.to_yaml(edge.traefik_objects()))
        ok, out = self.typed("apply", "-f", str(traefik_yaml))
        if not ok:
            raise RuntimeError(f"kubectl apply (Traefik): {out}")
        self.typed("-n", edge.TRAEFIK_NS, "rollout", "status", f"deployment/{edge.TRAEFIK}", "--timeout=180s",
                   timeout=200)
        address = self.retry(lambda: (lambda v: (bool(v), v))(self.kubectl(
            "-n", edge.TRAEFIK_NS, "get", "service", edge.TRAEFIK, "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}").strip()), 30)[1]
        self.typed("-n", edge.TRAEFIK_NS, "get", "service", edge.TRAEFIK)
        family = ipaddress.ip_address(address).version if address else 4
        first, last = next(r for r in lb_ranges(self.c)
                           if ipaddress.ip_address(r.split("-")[0]).version == family).split("-")
        in_pool = bool(address) and int(ipaddress.ip_address(first)) <= int(ipaddress.ip_address(address)) <= \
            int(ipaddress.ip_address(last))
        self.check(f"Ingress controller: Traefik's Service has EXTERNAL-IP {address or '<pending>'} from the pool",
                   in_pool, f"pool {first}-{last}")
        if not in_pool:
            return

        print("# a second app, shop; one Ingress: by host name (web.demo.example, shop.demo.example) and by path "
              "(demo.example/web, /shop)", flush=True)
        for what, manifest in (("shop", SHOP_APP % {"image": images.BUSYBOX}), ("Ingress", INGRESS)):
            ok, out = self.typed("apply", "-f", "-", manifest=manifest)
            if not ok:
                raise RuntimeError(f"kubectl apply ({what}): {out}")
        self.typed("rollout", "status", "deployment/shop", "--timeout=120s", timeout=140)
        ok, out = self.routes(address, {**{(h, "/"): app for h, app in INGRESS_HOSTS.items()},
                                        ("other.demo.example", "/"): "404"})
        self.check("Ingress by host name, from outside through the Traefik address", ok, out)
        ok, out = self.routes(address, {(INGRESS_PATH_HOST, "/web"): "web", (INGRESS_PATH_HOST, "/shop"): "shop"})
        self.check("Ingress by path, from outside through the Traefik address", ok, out)
        self.typed("get", "ingress", "demo")

        print("# the same way in with Gateway API: a Gateway of class traefik and an HTTPRoute to shop", flush=True)
        ok, out = self.typed("apply", "-f", "-", manifest=GATEWAY)
        if not ok:
            raise RuntimeError(f"kubectl apply (Gateway): {out}")
        gw = self.retry(lambda: (lambda v: (v == address, v))(self.kubectl(
            "get", "gateway", "demo", "-o", "jsonpath={.status.addresses[0].value}").strip()), INGRESS_SETTLE)[1]
        self.typed("get", "gateway", "demo")
        ok, out = self.routes(address, {(GATEWAY_HOST, "/"): "shop"})
        self.check(f"Gateway API: Gateway demo at {gw or '<no address>'}, HTTPRoute {GATEWAY_HOST} -> shop",
                   ok and gw == address, out)


LB_POOL = """\
apiVersion: podwire.io/v1alpha1
kind: LoadBalancerPool
metadata: {name: demo}
spec:
  addresses: ["%(range)s"]
"""


def lb_range(cluster) -> str:
    """Addresses on the outside host's own subnet, so it reaches them by ARP as on a LAN (its primary
    family's; lb_ranges() has one per family)."""
    return lb_ranges(cluster)[0]


def lb_ranges(cluster) -> list[str]:
    """One range per family of the outside host's subnet: .240-.250, or ::f0-::fa (NDP instead of ARP)."""
    return [f"{a.network[240]}-{a.network[250]}" for a in cluster.topology.outside.plan.addresses]


def lb_pool(cluster) -> str:
    """The demo's LoadBalancerPool, with a range per family."""
    return LB_POOL.replace('["%(range)s"]', json.dumps(lb_ranges(cluster)))


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def url_host(ip) -> str:
    """An address as the host part of a URL or of curl's --resolve: [v6]."""
    return f"[{ip}]" if ipaddress.ip_address(str(ip)).version == 6 else str(ip)


def demo_targets():
    """What the demo builds of Kubernetes: a cluster's binaries (no kube-proxy: podwire is the
    proxy). e2e.test and the test images' binaries belong to the conformance command."""
    return build.targets_for(kube_proxy=False, conformance=False)


def plan(image: Path | None, missing: list[str], shape: str, ingress: bool = True,
         traefik_missing: bool = False) -> list[str]:
    """The demo's steps, as the first lines show them: building only what is missing."""
    steps = [] if image else ["podwire image: frozen plugin + daemon, OCI tarball (minutes the first time)"]
    if missing:
        steps.append(f"Kubernetes binaries: {len(missing)} to build, {', '.join(missing)} "
                     "(many minutes the first time)")
    if ingress and traefik_missing:
        steps.append("Traefik: built from its Go module, its image made (about 30 min on 2 cores, once; "
                     "--no-ingress skips the Ingress part)")
    steps += [f"cluster: control plane + 3 full nodes, shape {shape}, no CNI, no kube-proxy",
              "install: kubectl apply -f manifests/podwire.yaml",
              "web server: 3 replicas behind a LoadBalancer Service, and a client pod",
              "checks: pod to pod, Service by DNS name, NodePort and EXTERNAL-IP from outside, egress",
              f"NetworkPolicy: namespace {POLICY_NS}, backend, frontend and other"]
    if ingress:
        steps.append("Ingress and Gateway API: Traefik behind a LoadBalancer, routes by host name and path")
    return steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("routed", "l2"), default="routed",
                    help="routed: two underlay subnets, so node pairs use direct routes and VXLAN (default)")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--name", default="demo")
    ap.add_argument("--podwire-image", type=Path, help="podwire's image tarball made earlier (make demo: make image's)")
    ap.add_argument("--ip-family", choices=("ipv4", "ipv6", "dual"), default="ipv4",
                    help="the cluster's families (underlay, Services, pods): make demo IPFAMILY=dual")
    ap.add_argument("--no-ingress", dest="ingress", action="store_false",
                    help="leave out the Ingress part (no Traefik: a cold first run saves its ~30 min build)")
    args = ap.parse_args(argv)

    from e2e import edge_images
    from e2e.cluster import Cluster

    todo = build.missing(demo_targets())
    traefik_todo = build.missing(edge_images.targets_for({edge_images.TRAEFIK})) if args.ingress else []
    progress = Progress("==", plan(args.podwire_image, [t.binary for t in todo], args.shape, args.ingress,
                                   bool(traefik_todo)))
    step = iter(range(len(progress.steps)))

    def begin() -> None:
        print(progress.start(next(step)), flush=True)

    image = args.podwire_image
    if image is None:
        begin()
        with Ticker(progress, sys.stdout):
            image = build_image()
    elif not image.is_file():
        print(f"demo: {image} is not a file (make image)", file=sys.stderr)
        return 2
    if todo:
        begin()
        build.ensure_built(demo_targets())  # prints its own progress
    if traefik_todo:
        begin()
    traefik = edge_images.edge_images({edge_images.TRAEFIK})[edge_images.TRAEFIK] if args.ingress else None
    cluster = Cluster(args.name, args.shape, 3, full_nodes=True, ip_family=args.ip_family)
    demo = Demo(cluster)
    try:
        begin()
        with Ticker(progress, sys.stdout):
            cluster.up()
        begin()
        with Ticker(progress, sys.stdout):
            install(cluster, image)
        print(demo.kubectl("get", "nodes", "-o", "wide"), flush=True)
        begin()
        with Ticker(progress, sys.stdout):
            demo.deploy()
        print(demo.kubectl("get", "pods", "-o", "wide"), flush=True)
        print(demo.kubectl("get", "service", "web"), flush=True)
        begin()
        demo.run_checks()
        begin()
        demo.run_policy_checks()
        if traefik:
            begin()
            with Ticker(progress, sys.stdout):
                demo.run_ingress_checks(traefik)
    except Exception as e:  # report, keep the cluster for a look when asked, tear down otherwise
        demo.check("demo ran to the end", False, str(e)[:2000])
        print(diagnostics(cluster)[-4000:])
    finally:
        failed = [r for r in demo.results if not r[1]]
        print(f"== {len(demo.results) - len(failed)} passed, {len(failed)} failed "
              f"in {elapsed(time.monotonic() - progress.started)}", flush=True)
        for label, _, detail in failed:
            print(f"  FAILED: {label}: {detail.splitlines()[0] if detail else ''}", flush=True)
        cluster.keep_or_down(args.keep)
    return 1 if failed or not demo.results else 0


if __name__ == "__main__":
    sys.exit(main())
