"""MetalLB v0.15.2 beside podwire's LoadBalancer on one harness cluster (issue 14, item 4): the reference.

    python3 -m e2e.metallb [--name mlb] [--keep]     up, install both, one Service each, show who answers

Why it is built so: the comparison must differ only in allocation and announcement. So both run on ONE l2
cluster with podwire installed from its image (podwire's proxy serves every Service: no kube-proxy), each
restricted to its own `spec.loadBalancerClass` (podwire: unset or `podwire.io/loadbalancer`; MetalLB: its
`--lb-class` flag on controller and speaker, METALLB_CLASS here) and each with its own disjoint pool on the
outside host's subnet (a LoadBalancerPool; an IPAddressPool + L2Advertisement), so the outside host reaches
both by ARP as a LAN client does.

MetalLB is installed from upstream's `config/manifests/metallb-native.yaml` (module cache) with three
changes, all in `metallb_objects` (pure, unit-tested): `--lb-class` on both, `imagePullPolicy: Never`
(the images are loaded into the nodes, nothing can be pulled), and no admission webhook (the controller's
`--webhook-mode=disabled` and no ValidatingWebhookConfiguration): the API server here sits on a host
without a Service proxy, so it cannot call a webhook behind a ClusterIP, and the webhook only validates
MetalLB's own configuration objects, it plays no part in allocation or announcement. Memberlist is as
upstream ships it: the controller creates the `memberlist` Secret (METALLB_ML_SECRET_NAME), the speakers
bind to their node's address (hostNetwork) on port 7946 with memberlist's LAN defaults.

The backends are busybox httpd pods, one per node (labels app=who, node=<node>), answering
GET /cgi-bin/who with "<pod IP> <client address>", so a check sees which endpoint answered and whether the
client address was kept.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from e2e import edge_images, images
from e2e.netbed import eventually

METALLB_NS = "metallb-system"
METALLB_CLASS = "metallb.io/metallb"  # MetalLB's --lb-class: any name; podwire leaves it alone
PODWIRE_CLASS = "podwire.io/loadbalancer"  # loadbalancer.model.OUR_CLASS (e2e does not import the daemon's code)
IMPLEMENTATIONS = ("podwire", "metallb")
APPS_NS = "lbcmp"
POOL = "lbcmp"  # the pools' names, both implementations
WHO_PORT = 8080
PODWIRE_LEASE_NS = "podwire"
# Service annotations: requested address and sharing key (model.ANN_IPS / ANN_SHARING; MetalLB's
# controller/service.go AnnotationLoadBalancerIPs / AnnotationAllowSharedIP)
ANNOTATIONS = {
    "podwire": {"ips": "podwire.io/loadbalancer-ips", "share": "podwire.io/allow-shared-ip"},
    "metallb": {"ips": "metallb.io/loadBalancerIPs", "share": "metallb.io/allow-shared-ip"},
}


class MetalLBError(RuntimeError):
    pass


# -- pure: manifests ------------------------------------------------------------------------------

def _with_flag(args: list[str], flag: str, value: str) -> list[str]:
    """args with --flag=value, replacing any earlier --flag (as `--flag=x` or `--flag x`)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == f"--{flag}":
            skip = True
            continue
        if a.startswith(f"--{flag}="):
            continue
        out.append(a)
    return out + [f"--{flag}={value}"]


def metallb_objects(docs: list[dict], lb_class: str = METALLB_CLASS, *, webhook: bool = False) -> list[dict]:
    """Upstream's metallb-native.yaml documents, changed for this harness (see the module's docstring):
    `--lb-class` on the controller and the speaker, images never pulled, the admission webhook off unless
    `webhook`. Raises MetalLBError when the manifest lacks what is changed (another MetalLB layout)."""
    if not lb_class or any(c.isspace() for c in lb_class):
        raise MetalLBError(f"lb-class {lb_class!r}: a non-empty name without spaces")
    out: list[dict] = []
    seen = set()
    for doc in docs:
        if not doc:
            continue
        doc = json.loads(json.dumps(doc))  # a copy: the caller's documents stay as read
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        if kind == "ValidatingWebhookConfiguration" and not webhook:
            continue
        if (kind, name) in (("Deployment", "controller"), ("DaemonSet", "speaker")):
            seen.add(name)
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c.get("name") != name:
                    continue
                args = _with_flag(list(c.get("args", [])), "lb-class", lb_class)
                if name == "controller" and not webhook:
                    args = _with_flag(args, "webhook-mode", "disabled")
                c["args"] = args
                c["image"] = edge_images.METALLB_CONTROLLER if name == "controller" else edge_images.METALLB_SPEAKER
                c["imagePullPolicy"] = "Never"
        out.append(doc)
    missing = {"controller", "speaker"} - seen
    if missing:
        raise MetalLBError(f"the manifest has no {', '.join(sorted(missing))} workload to give --lb-class")
    return out


def pool_ranges(outside_net: ipaddress.IPv4Network) -> dict[str, str]:
    """Two disjoint ranges on the outside host's subnet, 40 addresses each (a /24: .160-.199 podwire,
    .200-.239 MetalLB; the harness uses .1, .2, .11+ for nodes and .100 for the outside host)."""
    if outside_net.num_addresses < 256:
        raise MetalLBError(f"{outside_net}: the pools need a /24 or larger")
    return {"podwire": f"{outside_net[160]}-{outside_net[199]}", "metallb": f"{outside_net[200]}-{outside_net[239]}"}


def in_range(ip: str, rng: str) -> bool:
    first, last = (int(ipaddress.ip_address(a)) for a in rng.split("-"))
    return first <= int(ipaddress.ip_address(ip)) <= last


def pool_objects(ranges: dict[str, str]) -> list[dict]:
    return [
        {"apiVersion": "podwire.io/v1alpha1", "kind": "LoadBalancerPool", "metadata": {"name": POOL},
         "spec": {"addresses": [ranges["podwire"]]}},
        {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
         "metadata": {"name": POOL, "namespace": METALLB_NS}, "spec": {"addresses": [ranges["metallb"]]}},
        # announce on the node's LAN link only (podwire: links whose subnet holds the address)
        {"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
         "metadata": {"name": POOL, "namespace": METALLB_NS},
         "spec": {"ipAddressPools": [POOL], "interfaces": ["eth0"]}},
    ]


WHO_CGI = 'printf "Content-Type: text/plain\\r\\n\\r\\n%s %s\\n" "$POD_IP" "$REMOTE_ADDR"'


def who_objects(nodes: list[str], ns: str = APPS_NS, image: str = images.BUSYBOX) -> list[dict]:
    """The namespace and one busybox httpd Deployment per node answering "<pod IP> <client address>"."""
    script = (f"mkdir -p /www/cgi-bin && echo ok > /www/index.html && "
              f"printf '#!/bin/sh\\n%s\\n' '{WHO_CGI}' > /www/cgi-bin/who && chmod +x /www/cgi-bin/who && "
              f"exec httpd -f -p {WHO_PORT} -h /www")
    objs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}]
    for node in nodes:
        labels = {"app": "who", "node": node}
        container = {"name": "who", "image": image, "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", script],
                     "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                     "ports": [{"containerPort": WHO_PORT}],
                     "readinessProbe": {"httpGet": {"path": "/", "port": WHO_PORT}, "periodSeconds": 1}}
        pod = {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 1,
               "containers": [container]}
        meta = {"name": f"who-{node}", "namespace": ns}
        objs.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                     "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                              "template": {"metadata": {"labels": labels}, "spec": pod}}})
    return objs


def service_body(impl: str, name: str, *, selector: dict | None = None, port: int = 80, address: str = "",
                 share: str = "", local: bool = False) -> dict:
    """A `type: LoadBalancer` Service for `impl`: podwire's without a class (the cluster's default), MetalLB's
    with METALLB_CLASS; `address` requested and `share` as sharing key through each one's annotations."""
    if impl not in IMPLEMENTATIONS:
        raise MetalLBError(f"implementation {impl!r}: one of {', '.join(IMPLEMENTATIONS)}")
    ann = {}
    if address:
        ann[ANNOTATIONS[impl]["ips"]] = str(ipaddress.ip_address(address))
    if share:
        ann[ANNOTATIONS[impl]["share"]] = share
    spec: dict = {"type": "LoadBalancer", "selector": selector or {"app": "who"},
                  "ports": [{"name": "http", "port": port, "targetPort": WHO_PORT, "protocol": "TCP"}]}
    if impl == "metallb":
        spec["loadBalancerClass"] = METALLB_CLASS
    if local:
        spec["externalTrafficPolicy"] = "Local"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "annotations": ann}, "spec": spec}


def parse_who(body: str) -> tuple[str, str]:
    """"<pod IP> <client address>" (busybox httpd writes REMOTE_ADDR as [::ffff:a.b.c.d]) -> two IPs."""
    parts = body.split()
    if len(parts) != 2:
        raise MetalLBError(f"not a who answer: {body[:200]!r}")
    peer = parts[1].strip("[]")
    peer = peer.removeprefix("::ffff:")
    return str(ipaddress.ip_address(parts[0])), str(ipaddress.ip_address(peer))


# -- the outside host: probes -------------------------------------------------------------------

# argv: JSON {dst, port, timeout}; prints JSON ["ok", body] or [error, detail]
PROBE = r"""
import json, socket, sys
a = json.loads(sys.argv[1])
try:
    s = socket.create_connection((a["dst"], a["port"]), timeout=a["timeout"])
    s.sendall(b"GET /cgi-bin/who HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    print(json.dumps(["ok", data.decode(errors="replace").partition("\r\n\r\n")[2]]))
except (socket.timeout, TimeoutError):
    print(json.dumps(["timeout", ""]))
except OSError as e:
    print(json.dumps([type(e).__name__, str(e)]))
"""

# A long-lived poller on the outside host. Reads lines of JSON {dst, port, deadline}; for each starts a new
# connection attempt every `every` seconds (each with its own `timeout`, so a SYN lost to a stale ARP entry
# does not hide a later success behind TCP's retransmit backoff) and prints JSON {"ok": wall time at which
# the first attempt got its answer, "started": when that attempt started, "tries": n} or {"ok": null}.
POLLER = r"""
import json, selectors, socket, sys, time
for line in sys.stdin:
    a = json.loads(line)
    sel = selectors.DefaultSelector()
    end = time.monotonic() + a["deadline"]
    nxt, tries, result = 0.0, 0, {"ok": None}
    while time.monotonic() < end and result["ok"] is None:
        now = time.monotonic()
        if now >= nxt:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.setblocking(False)
            s.connect_ex((a["dst"], a["port"]))
            sel.register(s, selectors.EVENT_WRITE, {"t": now, "wall": time.time(), "buf": b"", "sent": False})
            tries += 1; nxt = now + a.get("every", 0.1)
        for key, _ in sel.select(timeout=max(0.0, min(nxt - time.monotonic(), 0.02))):
            s, st = key.fileobj, key.data
            try:
                if not st["sent"]:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect")
                    s.send(b"GET /cgi-bin/who HTTP/1.0\r\n\r\n"); st["sent"] = True
                    sel.modify(s, selectors.EVENT_READ, st); continue
                chunk = s.recv(4096)
                if chunk:
                    st["buf"] += chunk; continue
                body = st["buf"].decode(errors="replace").partition("\r\n\r\n")[2].strip()
                result = {"ok": time.time(), "started": st["wall"], "tries": tries, "body": body} if body else result
            except OSError:
                pass
            sel.unregister(s); s.close()
        for key in list(sel.get_map().values()):  # attempts older than their timeout
            if time.monotonic() - key.data["t"] > a.get("timeout", 1.0):
                sel.unregister(key.fileobj); key.fileobj.close()
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj); key.fileobj.close()
    result["tries"] = tries
    print(json.dumps(result), flush=True)
"""


class Poller:
    """POLLER running in the outside host's namespace (one process: no start-up cost per measurement)."""

    def __init__(self, outside):
        self.proc = subprocess.Popen(outside.argv([sys.executable, "-c", POLLER]), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def until_answered(self, ip: str, port: int = 80, deadline: float = 60.0, every: float = 0.1,
                       timeout: float = 1.0) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"dst": str(ipaddress.ip_address(ip)), "port": int(port),
                                          "deadline": deadline, "every": every, "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise MetalLBError("the poller on the outside host died")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


# -- on a cluster -------------------------------------------------------------------------------

@dataclass
class Observed:
    address: str
    node: str  # holder / announcing node


class SideBySide:
    """podwire and MetalLB on a running l2 cluster with podwire installed."""

    def __init__(self, cluster):
        self.c = cluster
        self.ranges = pool_ranges(cluster.topology.outside.plan.address.network)
        self.timings: dict[str, float] = {}
        self._api = None

    # -- API ------------------------------------------------------------------------------------

    @property
    def api(self):
        if self._api is None:
            self._api = self.c.api_client()
        return self._api

    @property
    def core(self):
        from kubernetes import client
        return client.CoreV1Api(self.api)

    @property
    def custom(self):
        from kubernetes import client
        return client.CustomObjectsApi(self.api)

    def kubectl(self, *args, input: str | None = None, timeout: int = 120) -> str:
        r = self.c.kubectl(*args, check=False, input=input, timeout=timeout)
        if r.returncode != 0:
            raise MetalLBError(f"kubectl {' '.join(args)}: {(r.stderr or r.stdout).strip()[-2000:]}")
        return r.stdout

    def apply(self, objs: list[dict], *extra: str) -> None:
        self.kubectl("apply", *extra, "-f", "-", input=yaml.safe_dump_all(objs, sort_keys=False))

    # -- install --------------------------------------------------------------------------------

    def install(self) -> None:
        """MetalLB's images, manifest (with --lb-class), both pools, the who backends; returns once MetalLB's
        controller and speakers are ready and a backend runs on every node."""
        t0 = time.monotonic()
        tarballs = edge_images.edge_images()
        for name in (edge_images.METALLB_CONTROLLER, edge_images.METALLB_SPEAKER):
            self.c.import_image(tarballs[name])
        self.timings["import MetalLB images"] = round(time.monotonic() - t0, 1)
        docs = list(yaml.safe_load_all(edge_images.metallb_manifest().read_text()))
        self.apply(metallb_objects(docs), "--server-side")
        self.kubectl("wait", "--for=condition=established", "crd", "--all", "--timeout=60s", timeout=70)
        self.apply(who_objects([n.name for n in self.c.nodes]))
        self.kubectl("-n", METALLB_NS, "rollout", "status", "deployment/controller", "--timeout=180s", timeout=200)
        self.kubectl("-n", METALLB_NS, "rollout", "status", "daemonset/speaker", "--timeout=180s", timeout=200)
        self.apply(pool_objects(self.ranges))
        for n in self.c.nodes:
            self.kubectl("-n", APPS_NS, "rollout", "status", f"deployment/who-{n.name}", "--timeout=120s", timeout=140)
        self.timings["install MetalLB + backends"] = round(time.monotonic() - t0, 1)

    def who_pods(self) -> dict[str, str]:
        """node name -> the who pod's IP there."""
        pods = self.core.list_namespaced_pod(APPS_NS, label_selector="app=who").items
        return {p.spec.node_name: p.status.pod_ip for p in pods if p.status.pod_ip and p.metadata.deletion_timestamp
                is None}

    # -- Services -------------------------------------------------------------------------------

    def create(self, impl: str, name: str, **kw):
        return self.core.create_namespaced_service(APPS_NS, service_body(impl, name, **kw))

    def delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException
        try:
            self.core.delete_namespaced_service(name, APPS_NS)
        except ApiException as e:
            if e.status != 404:
                raise

    def address(self, name: str) -> str:
        s = self.core.read_namespaced_service(name, APPS_NS)
        ing = (s.status.load_balancer.ingress or []) if s.status and s.status.load_balancer else []
        return ing[0].ip if ing and ing[0].ip else ""

    def wait_address(self, name: str, timeout: float = 60.0, resource_version: str | None = None) -> tuple[str, float]:
        """The Service's first ingress IP and the wall time it was seen, by a watch from `resource_version`."""
        from kubernetes import watch
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            w = watch.Watch()
            kw = {"resource_version": resource_version} if resource_version else {}
            for ev in w.stream(self.core.list_namespaced_service, APPS_NS, field_selector=f"metadata.name={name}",
                               timeout_seconds=max(1, int(deadline - time.monotonic())), **kw):
                s = ev["object"]
                ing = (s.status.load_balancer.ingress or []) if s.status and s.status.load_balancer else []
                if ing and ing[0].ip:
                    w.stop()
                    return ing[0].ip, time.time()
            resource_version = None
        raise MetalLBError(f"{name} got no address in {timeout:.0f} s:\n"
                           + self.kubectl("-n", APPS_NS, "describe", "service", name))

    def holder(self, impl: str, name: str, ip: str) -> str:
        """The node that answers for the address, as the API tells: podwire's Lease holder, the node of
        MetalLB's latest `nodeAssigned` Event for the Service."""
        if impl == "podwire":
            from kubernetes import client
            from kubernetes.client.exceptions import ApiException
            try:
                lease = client.CoordinationV1Api(self.api).read_namespaced_lease(
                    "podwire-lb-" + str(ipaddress.ip_address(ip)).replace(".", "-").replace(":", "-"), PODWIRE_LEASE_NS)
            except ApiException as e:
                if e.status == 404:  # not announced yet
                    return ""
                raise
            return lease.spec.holder_identity or ""
        # MetalLB's ServiceL2Status cannot tell after a failover: its status.node is immutable (CEL rule) and the
        # new speaker's update of the old object is refused ("Reconciler error ... status.node: Invalid value").
        # Its speakers' Events say it: `nodeAssigned` "announcing from node "<node>" with protocol "layer2"".
        events = self.core.list_namespaced_event(
            APPS_NS, field_selector=f"involvedObject.name={name},reason=nodeAssigned").items
        latest = max(events, default=None, key=lambda e: (e.last_timestamp or e.first_timestamp or e.event_time,
                                                          int(e.metadata.resource_version or 0)))
        found = re.search(r'announcing from node "([^"]+)"', latest.message or "") if latest else None
        return found.group(1) if found else ""

    def wait_holder(self, impl: str, name: str, ip: str, *, not_: str = "", timeout: float = 30.0) -> str:
        """The one node answering for `ip` (other than `not_`), once the API says so."""
        return eventually(lambda: (lambda h: h if h and h != not_ else None)(self.holder(impl, name, ip)),
                          timeout=timeout, what=f"a holder{f' other than {not_}' if not_ else ''} for {ip} ({impl})")

    # -- failover ---------------------------------------------------------------------------------

    def failover_service(self, impl: str, name: str) -> tuple[str, str, str]:
        """A Service whose only endpoint lives on the node that does NOT answer for its address (a dead node's
        pods are another story): created with both backends (MetalLB announces no Service without endpoints),
        then narrowed to the other node's. Returns (address, holder, survivor) once the survivor's pod answers."""
        self.create(impl, name)
        ip, _ = self.wait_address(name)
        holder = self.wait_holder(impl, name, ip)
        survivor = next(n.name for n in self.c.nodes if n.name != holder)
        self.core.patch_namespaced_service(name, APPS_NS, {"spec": {"selector": {"app": "who", "node": survivor}}})
        pod = self.who_pods()[survivor]
        eventually(lambda: all((self.answer(ip) or ("",))[0] == pod for _ in range(3)), timeout=30,
                   what=f"{ip} answered by {survivor}'s pod only")
        if self.wait_holder(impl, name, ip) != holder:
            raise MetalLBError(f"{ip} ({impl}) moved off {holder} when its endpoint did")
        return ip, holder, survivor

    def failover(self, impl: str, name: str, ip: str, holder: str, survivor: str, poller: Poller) -> dict:
        """Pull the holder's cable; seconds until the outside host's connections are answered again (a new
        attempt every 100 ms), who took over, and whether the outside host's ARP entry moved to it."""
        pulled = time.time()
        with self.cable_pulled(holder):
            got = poller.until_answered(ip, deadline=60)
            new_holder = self.wait_holder(impl, name, ip, not_=holder, timeout=30) if got["ok"] else ""
            neigh = self.outside_neigh(ip)
        restored = time.time()
        return {"impl": impl, "address": ip, "seconds": round(got["ok"] - pulled, 2) if got["ok"] else None,
                "attempts": got["tries"], "answered_by": parse_who(got["body"])[0] if got["ok"] else "",
                "survivor_pod": self.who_pods().get(survivor, ""), "old_holder": holder, "new_holder": new_holder,
                "survivor": survivor, "outside_arp_is_survivor": neigh == self.mac_of(survivor),
                "pulled_at": pulled, "restored_at": restored}

    def settle_after_partition(self, pulled: float, restored: float, timeout: float = 90.0) -> float | None:
        """After a cable comes back: MetalLB's speakers see each other again only when memberlist rejoins
        (a Node change or its 1-minute ticker: speakerlist.joinMembers); until then both announce. Waits until
        every speaker that logged a NodeLeave since the pull (wall time) logged a NodeJoin after it (a side
        whose suspicion was refuted in time logs neither); returns the seconds since `restored`, None if
        that was not seen within `timeout`."""
        import datetime
        stamp = datetime.datetime.fromtimestamp(pulled - 1, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

        def whole() -> bool:
            pods = self.core.list_namespaced_pod(METALLB_NS, label_selector="component=speaker").items
            if len(pods) != len(self.c.nodes) or time.time() < restored + 2:
                return False
            for p in pods:
                r = self.c.kubectl("-n", METALLB_NS, "logs", p.metadata.name, f"--since-time={stamp}",
                                   check=False, timeout=30)
                if r.returncode != 0:
                    return False
                events = re.findall(r'"node event":"(NodeLeave|NodeJoin)"', r.stdout)
                if events and events[-1] == "NodeLeave":
                    return False
            return True
        try:
            eventually(whole, timeout=timeout, what="MetalLB's speakers rejoined memberlist")
        except AssertionError:
            return None
        return round(time.time() - restored, 1)

    # -- the outside host -----------------------------------------------------------------------

    def probe(self, ip: str, port: int = 80, timeout: float = 2.0) -> tuple[str, str]:
        """(status, body): "ok" and "<pod IP> <client address>", or the error."""
        r = self.c.topology.outside.run([sys.executable, "-c", PROBE, json.dumps(
            {"dst": str(ipaddress.ip_address(ip)), "port": int(port), "timeout": timeout})],
            check=False, timeout=timeout + 20)
        if r.returncode != 0:
            return "probe-failed", r.stderr[-300:]
        status, body = json.loads(r.stdout)
        return status, body

    def answer(self, ip: str, port: int = 80, timeout: float = 2.0) -> tuple[str, str] | None:
        """(pod IP, client address) of one request from the outside host, None if it got no answer."""
        status, body = self.probe(ip, port, timeout)
        return parse_who(body) if status == "ok" else None

    def outside_neigh(self, ip: str) -> str:
        r = self.c.topology.outside.run(["ip", "-j", "neigh", "show", str(ipaddress.ip_address(ip))], check=False)
        found = json.loads(r.stdout or "[]")
        return found[0].get("lladdr", "") if found else ""

    def mac_of(self, node: str) -> str:
        r = self.c.node(node).run(["ip", "-j", "link", "show", "eth0"])
        return json.loads(r.stdout)[0]["address"]

    @contextlib.contextmanager
    def cable_pulled(self, node: str):
        """The node's veth peer on the underlay bridge down (the node drops off the LAN), up again on exit."""
        cable = ["ip", "-n", self.c.topology.plan.underlay_netns, "link", "set", f"v-{self.c.node(node).name}"]
        subprocess.run([*cable, "down"], check=True)
        try:
            yield
        finally:
            subprocess.run([*cable, "up"], check=True)

    def diagnostics(self) -> str:
        out = []
        for args in (("get", "svc", "-n", APPS_NS, "-o", "wide"), ("-n", METALLB_NS, "get", "pods", "-o", "wide"),
                     ("-n", METALLB_NS, "get", "servicel2statuses"), ("-n", PODWIRE_LEASE_NS, "get", "leases"),
                     ("-n", METALLB_NS, "logs", "deployment/controller", "--tail=30")):
            r = self.c.kubectl(*args, check=False, timeout=30)
            out.append(f"$ kubectl {' '.join(args)}\n{(r.stdout or r.stderr).rstrip()}")
        return "\n".join(out)

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None


def up_with_podwire(name: str, image: Path | None = None):
    """An l2 2-node full cluster with podwire installed from its image, and MetalLB beside it. Returns
    (cluster, SideBySide); the caller tears the cluster down."""
    from e2e.cluster import Cluster
    from e2e.podwire_install import build_image, install

    built = None if image else build_image(Path("/tmp") / f"podwire-image-{name}.tar")
    cluster = Cluster(name, "l2", 2, full_nodes=True)
    try:
        cluster.up()  # tears itself down when it fails
        try:
            install(cluster, image or built)
            sbs = SideBySide(cluster)
            sbs.install()
        except BaseException:
            cluster.down()
            raise
    finally:
        if built:
            built.unlink(missing_ok=True)  # in the nodes now
    return cluster, sbs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="mlb")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--podwire-image", type=Path)
    args = ap.parse_args(argv)
    cluster, sbs = up_with_podwire(args.name, args.podwire_image)
    try:
        for impl in IMPLEMENTATIONS:
            sbs.create(impl, f"hello-{impl}")
            ip, _ = sbs.wait_address(f"hello-{impl}")
            time.sleep(2)
            print(impl, ip, sbs.holder(impl, f"hello-{impl}", ip), sbs.probe(ip), flush=True)
        print(sbs.diagnostics())
        return 0
    finally:
        sbs.close()
        if args.keep:
            print(f"cluster kept: export KUBECONFIG={cluster.kubeconfig}; "
                  f"python3 -m e2e.cluster down --name {args.name}")
        else:
            cluster.down()


if __name__ == "__main__":
    sys.exit(main())
