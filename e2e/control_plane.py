"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler on the control-plane host.

Why it is built so: like kind's control-plane container, the components run inside their
own host (network namespace) on the underlay, because the API server must reach kubelets
on node IPs (exec, logs, port-forward) and pods reach it through the `kubernetes` Service,
whose endpoint is the advertise address (the cp host's underlay IP). Inside the cp host the
components talk over its loopback; the root namespace reaches the API server only through
`forwarder.py` on 127.0.0.1:<port>, which is what the admin kubeconfig points at.

Flags follow kubeadm where it matters (see shared/notes/real-kubernetes.md).
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import signal
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from e2e import netns as ns
from e2e.pki import Pki
from e2e.topology import Host, family_versions

APISERVER_PORT = 6443
FORWARDER = Path(__file__).with_name("forwarder.py")


@dataclasses.dataclass(frozen=True)
class ControlPlaneConfig:
    service_cidr: ipaddress.IPv4Network = ipaddress.ip_network("10.96.0.0/16")
    cluster_cidr: ipaddress.IPv4Network = ipaddress.ip_network("10.244.0.0/16")
    node_cidr_mask_size: int = 24
    dns_domain: str = "cluster.local"
    etcd: Path | None = None  # the etcd binary; None = the one the builder made
    family: str = "ipv4"  # ipv4 | ipv6 | dual (topology.FAMILIES): which of the ranges below are used
    # kind's IPv6 defaults: a /112 of Services (the API server allows at most 2^20 of them) and
    # a /56 of pods in /64s, one per node
    service_cidr6: ipaddress.IPv6Network = ipaddress.IPv6Network("fd00:10:96::/112")
    cluster_cidr6: ipaddress.IPv6Network = ipaddress.IPv6Network("fd00:10:244::/56")
    node_cidr_mask_size6: int = 64

    @property
    def versions(self) -> tuple[int, ...]:
        return family_versions(self.family)

    @property
    def service_cidrs(self) -> tuple:
        """The Service ranges, primary family first (the order --service-cluster-ip-range takes)."""
        return tuple(self.service_cidr if v == 4 else self.service_cidr6 for v in self.versions)

    @property
    def cluster_cidrs(self) -> tuple:
        return tuple(self.cluster_cidr if v == 4 else self.cluster_cidr6 for v in self.versions)

    @property
    def kubernetes_service_ip(self):
        """The `kubernetes` Service's ClusterIP: the first address of the primary range."""
        return self.service_cidrs[0][1]

    def node_cidr_mask_flags(self) -> list[str]:
        if len(self.versions) == 2:
            return [f"--node-cidr-mask-size-ipv4={self.node_cidr_mask_size}",
                    f"--node-cidr-mask-size-ipv6={self.node_cidr_mask_size6}"]
        size = self.node_cidr_mask_size if self.versions == (4,) else self.node_cidr_mask_size6
        return [f"--node-cidr-mask-size={size}"]


def host_port(ip, port: int) -> str:
    """host:port as URLs and dialers want it ([v6]:port)."""
    return f"[{ip}]:{port}" if ipaddress.ip_address(str(ip)).version == 6 else f"{ip}:{port}"


def kubeconfig(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str) -> dict:
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pwe", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": "pwe", "context": {"cluster": "pwe", "user": user}}],
        "current-context": "pwe",
    }


class ControlPlaneError(RuntimeError):
    pass


class ControlPlane:
    """The control plane of one cluster, on `host`, with files under `directory`."""

    def __init__(self, host: Host, directory: Path, bin_dir: Path, config: ControlPlaneConfig = ControlPlaneConfig()):
        self.host = host
        self.dir = Path(directory)
        self.bin = Path(bin_dir)
        self.config = config
        self.pki = Pki(self.dir / "pki")
        self.procs: dict[str, ns.Proc] = {}
        self.port: int | None = None  # forwarder port on 127.0.0.1 in the root namespace

    # -- paths -------------------------------------------------------------------------

    @property
    def admin_kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        """The API server URL as seen from the root namespace."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def internal_server(self) -> str:
        """The API server URL as seen from the underlay (nodes, later kubelets)."""
        return f"https://{host_port(self.host.ip, APISERVER_PORT)}"

    def kubeconfig_for(self, name: str, cn: str, orgs=(), server: str | None = None) -> Path:
        """Issue a client certificate and write <name>.kubeconfig (e.g. for a kubelet)."""
        crt, key = self.pki.issue(name, cn, orgs=orgs)
        path = self.dir / f"{name}.kubeconfig"
        ca = self.pki.path("ca.crt").read_bytes()
        doc = kubeconfig(server or self.internal_server, ca, crt.read_bytes(), key.read_bytes(), cn)
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 120) -> "ControlPlane":
        deadline = time.monotonic() + timeout
        self.dir.mkdir(parents=True, exist_ok=True)
        self._make_pki()
        self._start_etcd()
        self._start_apiserver()
        self._start_forwarder()
        self._write_admin_kubeconfig()
        self.wait_ready(deadline)
        self._start_controller_manager()
        self._start_scheduler()
        self.wait_controllers(deadline)
        return self

    def _make_pki(self) -> None:
        c = self.config
        self.pki.create()
        domain = c.dns_domain
        self.pki.issue(
            "apiserver", "kube-apiserver", client=False,
            server_names=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                          f"kubernetes.default.svc.{domain}", "localhost"),
            server_ips=("127.0.0.1", *map(str, self.host.ips), *(str(n[1]) for n in c.service_cidrs)),
        )
        self.pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", orgs=("system:masters",))
        self.pki.issue("admin", "kubernetes-admin", orgs=("system:masters",))
        local = f"https://127.0.0.1:{APISERVER_PORT}"  # components inside the cp host
        self.kubeconfig_for("controller-manager", "system:kube-controller-manager", server=local)
        self.kubeconfig_for("scheduler", "system:kube-scheduler", server=local)

    def _spawn(self, name: str, argv, **kw) -> ns.Proc:
        proc = self.host.spawn(name, argv, **kw)
        self.procs[name] = proc
        return proc

    def _etcd_binary(self) -> Path:
        return Path(self.config.etcd or os.environ.get("PODWIRE_ETCD") or self.bin / "etcd")

    def _start_etcd(self) -> None:
        etcd = self._etcd_binary()
        version = ns.run([etcd, "--version"]).stdout.split()[2]  # "etcd Version: 3.6.16"
        data = self.dir / "etcd"
        argv = [
            etcd, "--name=cp", f"--data-dir={data}",
            "--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=cp=http://127.0.0.1:2380", "--log-level=warn",
        ]
        if tuple(map(int, version.split(".")[:2])) >= (3, 5):
            argv.append("--unsafe-no-fsync")  # a throw-away test cluster: never wait for disks
        self.etcd_version = version
        self._spawn("etcd", argv)

    def _start_apiserver(self) -> None:
        c, p = self.config, self.pki.path
        self._spawn("kube-apiserver", [
            self.bin / "kube-apiserver",
            # "::" listens on both families (Go sockets are dual-stack); the advertised address is the
            # primary family's, as the `kubernetes` Service's endpoint must be of its family
            f"--advertise-address={self.host.ip}", f"--bind-address={'::' if 6 in c.versions else '0.0.0.0'}",
            f"--secure-port={APISERVER_PORT}",
            "--etcd-servers=http://127.0.0.1:2379",
            f"--tls-cert-file={p('apiserver.crt')}", f"--tls-private-key-file={p('apiserver.key')}",
            f"--client-ca-file={p('ca.crt')}",
            f"--kubelet-client-certificate={p('apiserver-kubelet-client.crt')}",
            f"--kubelet-client-key={p('apiserver-kubelet-client.key')}",
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
            f"--service-account-issuer=https://kubernetes.default.svc.{c.dns_domain}",
            f"--service-account-key-file={p('sa.pub')}", f"--service-account-signing-key-file={p('sa.key')}",
            f"--service-cluster-ip-range={','.join(map(str, c.service_cidrs))}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", "--enable-bootstrap-token-auth=true",
            "--profiling=false", "--v=1",
        ])

    def _start_forwarder(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int(os.environ.get("PODWIRE_E2E_API_PORT", 0))))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        try:
            self._spawn(
                "forwarder",
                [sys.executable, FORWARDER, "--fd", listener.fileno(), "--connect",
                 host_port(self.host.ip, APISERVER_PORT)],
                pass_fds=(listener.fileno(),),
            )
        finally:
            listener.close()  # the forwarder holds it now; the harness keeps no socket

    def _write_admin_kubeconfig(self) -> None:
        p = self.pki.path
        doc = kubeconfig(self.server, p("ca.crt").read_bytes(), p("admin.crt").read_bytes(),
                         p("admin.key").read_bytes(), "kubernetes-admin")
        self.admin_kubeconfig.write_text(yaml.safe_dump(doc))
        self.admin_kubeconfig.chmod(0o600)

    def _start_controller_manager(self) -> None:
        c, p = self.config, self.pki.path
        kcfg = self.dir / "controller-manager.kubeconfig"
        self._spawn("kube-controller-manager", [
            self.bin / "kube-controller-manager",
            f"--kubeconfig={kcfg}", f"--authentication-kubeconfig={kcfg}", f"--authorization-kubeconfig={kcfg}",
            "--bind-address=127.0.0.1", "--leader-elect=false",
            "--controllers=*,bootstrapsigner,tokencleaner",
            "--use-service-account-credentials=true",
            f"--root-ca-file={p('ca.crt')}", f"--service-account-private-key-file={p('sa.key')}",
            f"--cluster-signing-cert-file={p('ca.crt')}", f"--cluster-signing-key-file={p('ca.key')}",
            "--allocate-node-cidrs=true", f"--cluster-cidr={','.join(map(str, c.cluster_cidrs))}",
            *c.node_cidr_mask_flags(), f"--service-cluster-ip-range={','.join(map(str, c.service_cidrs))}",
            "--profiling=false", "--v=1",
        ])

    def _start_scheduler(self) -> None:
        kcfg = self.dir / "scheduler.kubeconfig"
        self._spawn("kube-scheduler", [
            self.bin / "kube-scheduler",
            f"--kubeconfig={kcfg}", f"--authentication-kubeconfig={kcfg}", f"--authorization-kubeconfig={kcfg}",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false", "--v=1",
        ])

    def stop_apiserver(self, kill: bool = True) -> None:
        """Stop kube-apiserver only (etcd and the controllers keep running): an API outage for
        clients' recovery tests. kill: SIGKILL, a crash (its connections are reset at once);
        else SIGTERM and the graceful shutdown (about 10 s while controllers hold watches).
        The ledger still lists the stopped process; undoing that entry is a no-op."""
        proc = self.procs["kube-apiserver"]
        if kill:
            proc._signal_group(signal.SIGKILL)
        proc.stop()  # returns once it is gone

    def start_apiserver(self, timeout: float = 120) -> None:
        """(Re)start kube-apiserver with the same flags and wait for /readyz."""
        if self.procs["kube-apiserver"].alive() or self.readyz():
            raise ControlPlaneError("kube-apiserver is already running")
        self._start_apiserver()
        self.wait_ready(time.monotonic() + timeout)

    # -- readiness ---------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.path("ca.crt")))
        ctx.load_cert_chain(self.pki.path("admin.crt"), self.pki.path("admin.key"))
        return ctx

    def get(self, path: str, timeout: float = 5) -> tuple[int, str]:
        """GET a path of the API server (through the forwarder, as admin)."""
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl_context(), timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def readyz(self) -> bool:
        try:
            return self.get("/readyz")[0] == 200
        except (OSError, urllib.error.URLError):
            return False

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if not proc.alive():
                raise ControlPlaneError(f"{name} exited; last log lines:\n{proc.log_tail()}")

    def wait_ready(self, deadline: float) -> None:
        while not self.readyz():
            self._check_alive()
            if time.monotonic() > deadline:
                raise ControlPlaneError("kube-apiserver not ready in time:\n" + self.procs["kube-apiserver"].log_tail())
            time.sleep(0.5)

    def wait_controllers(self, deadline: float) -> None:
        """The controller-manager works once it made the `default` ServiceAccount."""
        while self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] != 200:
            self._check_alive()
            if time.monotonic() > deadline:
                raise ControlPlaneError("controller-manager made no default ServiceAccount in time:\n"
                                        + self.procs["kube-controller-manager"].log_tail())
            time.sleep(0.5)

    def status(self) -> dict:
        return {
            "server": self.server,
            "kubeconfig": str(self.admin_kubeconfig),
            "readyz": self.readyz(),
            "processes": {name: proc.alive() for name, proc in self.procs.items()},
        }

    # -- clients -----------------------------------------------------------------------

    def kubectl(self, *args, check=True, input=None, timeout=60):
        return ns.run([self.bin / "kubectl", f"--kubeconfig={self.admin_kubeconfig}", *args],
                      check=check, input=input, timeout=timeout)

    def api_client(self):
        """A `kubernetes.client.ApiClient` for the admin (imported lazily: only e2e needs it)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.admin_kubeconfig))

    def to_json(self) -> dict:
        return {"dir": str(self.dir), "port": self.port, "procs": {k: v.to_json() for k, v in self.procs.items()}}

    def load_json(self, data: dict) -> None:
        self.port = data["port"]
        self.procs = {k: ns.Proc.from_json(v) for k, v in data["procs"].items()}

