"""A whole test cluster: topology + control plane + registered Nodes, and its CLI.

    python3 -m e2e.cluster up     [--name dev] [--shape l2|routed] [--nodes 3]
                                  [--full [--cni podwire] [--kube-proxy] [--no-coredns]
                                   [--containerd NODE=1.6]...]
    python3 -m e2e.cluster load   [--name dev] IMAGE.tar...     (full nodes: like `kind load`)
    python3 -m e2e.cluster status [--name dev]
    python3 -m e2e.cluster down   [--name dev]

Why it is built so: one object serves both the pytest session fixture (context manager in
one process) and the CLI (`up` and `down` in different processes). Everything created is
recorded in the cluster's ledger (`<dir>/ledger.json`) before it is relied upon, so `down`
— or the next `up` of the same name after a crash — removes exactly what was made.
Files live under ${PODWIRE_E2E_DIR:-/run/pwe}/<name>/; namespaces are `pwe-<name>-*`.
With PODWIRE_E2E_KEEP_LOGS=<dir>, `down` first copies every host's logs to <dir>/<name>/.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import shutil
import sys
import time
from pathlib import Path

from e2e import build, cgroups
from e2e import netns as ns
from e2e.control_plane import ControlPlane, ControlPlaneConfig
from e2e.ledger import Ledger
from e2e.topology import FAMILIES, Node, Topology, plan


def base_dir() -> Path:
    return Path(os.environ.get("PODWIRE_E2E_DIR", "/run/pwe"))


class Cluster:
    def __init__(self, name: str = "dev", shape: str = "l2", nodes: int = 3, *, bin_dir: Path | None = None,
                 register_nodes: bool = True, config: ControlPlaneConfig = ControlPlaneConfig(),
                 owner: ns.Proc | None = None, full_nodes: bool = False, kube_proxy: bool = False,
                 coredns: bool = True, containerd: dict[str, str] | None = None, ip_family: str = "ipv4"):
        if len(f"pwe-{name}-") > 12 or not name.isalnum():
            raise ValueError("cluster name: a few alphanumerics (it prefixes namespace names)")
        self.name = name
        self.dir = base_dir() / name
        self.bin_dir = Path(bin_dir) if bin_dir else build.bin_dir()
        self.register_nodes = register_nodes
        # full_nodes: a containerd + kubelet per node (e2e/node_runtime.py) registers the Nodes
        self.full_nodes = full_nodes
        self.kube_proxy = kube_proxy  # full nodes only: kube-proxy per node (the anchor)
        self.coredns = coredns  # full nodes only: CoreDNS Deployment + kube-dns Service, as kind has
        # full nodes only: node name -> containerd (node_runtime.CONTAINERDS key) other than the default
        self.containerd = dict(containerd or {})
        self.runtimes: dict = {}  # node name -> NodeRuntime (full nodes, in the process that made them)
        self.owner = owner  # a process whose death means the cluster is abandoned (pytest)
        self.ledger = Ledger(self.dir / "ledger.json")
        # ipv4 | ipv6 | dual: the underlay, the Service and pod ranges, the Nodes' addresses
        self.ip_family = ip_family
        if config.family != ip_family:
            config = dataclasses.replace(config, family=ip_family)
        self.topology = Topology(plan(name, shape, nodes, ip_family), self.dir, self.ledger)
        unknown = sorted(set(self.containerd) - {n.name for n in self.nodes})
        if unknown:
            raise ValueError(f"containerd for nodes this cluster does not have: {unknown}")
        self.control_plane = ControlPlane(self.topology.cp, self.dir / "control-plane", self.bin_dir, config)

    # -- views -------------------------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        return self.topology.nodes

    def node(self, name: str) -> Node:
        return self.topology.node(name)

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.admin_kubeconfig

    def kubectl(self, *args, **kw):
        return self.control_plane.kubectl(*args, **kw)

    def api_client(self):
        return self.control_plane.api_client()

    def node_runtimes(self) -> dict:
        """node name -> NodeRuntime (full nodes); also in a process that did not start them."""
        if self.full_nodes and not self.runtimes:
            from e2e.node_runtime import NodeRuntime

            self.runtimes = {n.name: NodeRuntime(n, self.name, self.control_plane, self.bin_dir,
                                                 **self._containerd_of(n.name)) for n in self.nodes}
        return self.runtimes

    def _containerd_of(self, node: str) -> dict:
        return {"containerd": self.containerd[node]} if node in self.containerd else {}

    def _node_procs_view(self) -> dict:
        if self.runtimes:
            return {n: rt.procs for n, rt in self.runtimes.items()}
        return getattr(self, "_node_procs", {})

    def import_image(self, tarball: Path) -> None:
        """Load an OCI image tarball into every node's containerd (what `kind load` does)."""
        from e2e.node_runtime import import_image

        if not self.full_nodes:
            raise RuntimeError(f"cluster {self.name!r} has no full nodes (up --full)")
        import_image(self.node_runtimes(), tarball)

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    # -- lifecycle ---------------------------------------------------------------------

    def up(self, *, build_missing: bool = True) -> "Cluster":
        if self.state_file.exists() and self._load_state() and self.control_plane.readyz():
            raise RuntimeError(f"cluster {self.name!r} is already up (python3 -m e2e.cluster down --name {self.name})")
        self.cleanup_leftovers()
        if build_missing and self.bin_dir == build.bin_dir():  # not e2e.test and its images: conformance's
            build.ensure_built(build.targets_for(kube_proxy=self.kube_proxy))
        try:
            self.ledger.dir(self.dir)
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.owner:
                (self.dir / "owner.json").write_text(json.dumps(self.owner.to_json()))
            self.topology.up()
            self.control_plane.start()
            self._save_state()
            if self.full_nodes:
                from e2e import upstream_dns
                from e2e.node_runtime import start_nodes

                # what the nodes' resolv.conf names (the gateway): CoreDNS's `forward` goes there
                upstream_dns.start(self.topology, self.bin_dir / "coredns", self.dir / "upstream-dns")

                self.runtimes = start_nodes(self, kube_proxy=self.kube_proxy, containerd=self.containerd)
                if self.coredns:
                    from e2e import coredns

                    coredns.deploy(self)  # Pending until the nodes have a CNI config
            elif self.register_nodes:
                api = self.api_client()
                try:
                    for node in self.nodes:
                        register_node(api, node)
                    for node in self.nodes:
                        node.pod_cidrs = wait_pod_cidrs(api, node.name)
                        node.pod_cidr = node.pod_cidrs[0]
                finally:
                    api.close()
            self._save_state()
        except BaseException:
            self.down()
            raise
        return self

    def keep_or_down(self, keep: bool) -> None:
        """The end of a command's run: say how to reach and remove a kept cluster, or tear it down
        (errors printed: the run's own outcome matters more)."""
        if keep:
            print(f"cluster kept: export KUBECONFIG={self.kubeconfig}; python3 -m e2e.cluster down --name {self.name}")
            return
        errors = self.down()
        if errors:
            print("teardown: " + "; ".join(errors))

    def down(self) -> list[str]:
        keep = os.environ.get("PODWIRE_E2E_KEEP_LOGS")
        if keep:  # for CI artifacts: the logs would go with the cluster's directory
            for log_dir in self.dir.glob("hosts/*/logs"):
                shutil.copytree(log_dir, Path(keep) / self.name / log_dir.parent.name, dirs_exist_ok=True)
        errors = self.ledger.teardown()
        # A crash between creating a namespace and recording it cannot happen (recorded
        # first), but be thorough: nothing named pwe-<name>-* may outlive `down`.
        for name in cgroups.list_roots(f"pwe-{self.name}-"):  # kubelets' cgroupRoots
            cgroups.remove(name)
        for name in ns.list_netns(f"pwe-{self.name}-"):
            ns.delete_netns(name)
        shutil.rmtree(self.dir, ignore_errors=True)
        return errors

    def cleanup_leftovers(self) -> None:
        """Remove what a crashed earlier run of this cluster name left behind."""
        if self.ledger.entries or ns.list_netns(f"pwe-{self.name}-") or self.dir.exists():
            self.down()  # the ledger is empty afterwards and records the new run

    @classmethod
    def sweep_abandoned(cls) -> list[str]:
        """Tear down clusters whose owner process is gone (a killed pytest session)."""
        swept = []
        for owner_file in base_dir().glob("*/owner.json"):
            try:
                owner = ns.Proc.from_json(json.loads(owner_file.read_text()))
            except (OSError, ValueError, KeyError):
                continue
            if not owner.alive():
                cls(owner_file.parent.name).down()
                swept.append(owner_file.parent.name)
        return swept

    def __enter__(self) -> "Cluster":
        try:
            return self.up()
        except BaseException:
            self.down()  # a half-started cluster is torn down too (the ledger knows what exists)
            raise

    def __exit__(self, *exc) -> None:
        errors = self.down()
        if errors and exc[0] is None:
            raise RuntimeError("cluster teardown failed: " + "; ".join(errors))

    # -- state (for the CLI) ------------------------------------------------------------

    def _save_state(self) -> None:
        state = {
            "name": self.name,
            "shape": self.topology.plan.shape,
            "ip_family": self.ip_family,
            "full_nodes": self.full_nodes,
            "containerd": self.containerd,
            "nodes": {n.name: {"ip": str(n.ip), "pod_cidr": n.pod_cidr and str(n.pod_cidr),
                               "pod_cidrs": [str(c) for c in n.pod_cidrs]} for n in self.nodes},
            "control_plane": self.control_plane.to_json(),
            "bin_dir": str(self.bin_dir),
            "node_procs": {n: {k: p.to_json() for k, p in rt.procs.items()} for n, rt in self.runtimes.items()},
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_file)

    def _load_state(self) -> bool:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return False
        self.control_plane.load_json(state["control_plane"])
        self._node_procs = {n: {k: ns.Proc.from_json(p) for k, p in procs.items()}
                            for n, procs in state.get("node_procs", {}).items()}
        for node in self.nodes:
            cidr = state["nodes"].get(node.name, {}).get("pod_cidr")
            node.pod_cidr = ipaddress.ip_network(cidr) if cidr else None
            node.pod_cidrs = tuple(ipaddress.ip_network(c) for c in state["nodes"].get(node.name, {})
                                   .get("pod_cidrs", [cidr] if cidr else []))
        return True

    @classmethod
    def load(cls, name: str) -> "Cluster":
        """The cluster `name` as left by an `up` in another process."""
        state_file = base_dir() / name / "state.json"
        state = json.loads(state_file.read_text())
        cluster = cls(name, state["shape"], len(state["nodes"]), bin_dir=Path(state["bin_dir"]),
                      full_nodes=state.get("full_nodes", False), containerd=state.get("containerd"),
                      ip_family=state.get("ip_family", "ipv4"))
        cluster._load_state()
        return cluster

    def status(self) -> dict:
        return {
            "name": self.name,
            "shape": self.topology.plan.shape,
            "dir": str(self.dir),
            "netns": ns.list_netns(f"pwe-{self.name}-"),
            "nodes": {n.name: {"ip": str(n.ip), "pod_cidr": str(n.pod_cidr)} for n in self.nodes},
            **self.control_plane.status(),
            "node_processes": {n: {k: p.alive() for k, p in procs.items()}
                               for n, procs in self._node_procs_view().items()},
        }


# -- Nodes ----------------------------------------------------------------------------------


def register_node(api, node: Node) -> None:
    """Create the Node object a kubelet would (InternalIP = the node's underlay address)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    core.create_node({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux"}},
    })
    core.patch_node_status(node.name, {"status": {"addresses": [
        *({"type": "InternalIP", "address": str(ip)} for ip in node.ips),  # a kubelet's --node-ip=v4,v6
        {"type": "Hostname", "address": node.name},
    ]}})


def wait_pod_cidrs(api, name: str, timeout: float = 60) -> tuple:
    """Wait until the controller-manager assigned spec.podCIDRs (one per family) to Node `name`."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        cidrs = core.read_node(name).spec.pod_cidrs
        if cidrs:
            return tuple(ipaddress.ip_network(c) for c in cidrs)
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {name} got no podCIDR in {timeout}s")
        time.sleep(0.2)


def wait_pod_cidr(api, name: str, timeout: float = 60):
    """The primary family's podCIDR of Node `name`, once assigned."""
    return wait_pod_cidrs(api, name, timeout)[0]


# -- CLI ------------------------------------------------------------------------------------


def _node_containerd(text: str) -> tuple[str, str]:
    from e2e.node_runtime import CONTAINERDS

    node, _, version = text.partition("=")
    if not node.startswith("node") or not node[4:].isdigit() or version not in CONTAINERDS:
        raise argparse.ArgumentTypeError(f"NODE=VERSION with VERSION one of {sorted(CONTAINERDS)}, not {text!r}")
    return node, version


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m e2e.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in ("up", "down", "status", "load"):
        p = sub.add_parser(cmd)
        p.add_argument("--name", default="dev")
        if cmd == "load":
            p.add_argument("tarballs", nargs="+", type=Path, help="OCI image tarballs")
        if cmd == "up":
            p.add_argument("--shape", choices=("l2", "routed"), default="l2")
            p.add_argument("--ip-family", choices=FAMILIES, default="ipv4",
                           help="the families of the underlay, the Service and pod ranges, the nodes")
            p.add_argument("--nodes", type=int, default=3)
            p.add_argument("--full", action="store_true",
                           help="full nodes: containerd + kubelet per node (e2e/node_runtime.py)")
            p.add_argument("--kube-proxy", action="store_true", help="with --full: kube-proxy per node (the anchor)")
            p.add_argument("--cni", choices=("podwire",), help="with --full: install dist/podwire on every node "
                           "directly (without podwire's DaemonSet); nodes turn Ready")
            p.add_argument("--no-coredns", action="store_true", help="with --full: do not deploy CoreDNS")
            p.add_argument("--containerd", action="append", default=[], metavar="NODE=VERSION",
                           type=_node_containerd, help="with --full: run another containerd on NODE "
                           "(1.6: Debian's; default 2.2)")
            p.add_argument("--owner-pid", type=int, help="tear down (at the next sweep) once this process is gone")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("e2e.cluster: needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.command == "up":
        started = time.monotonic()
        owner = ns.Proc.of(args.owner_pid, "owner") if args.owner_pid else None
        cluster = Cluster(args.name, args.shape, args.nodes, owner=owner, full_nodes=args.full,
                          kube_proxy=args.kube_proxy, coredns=not args.no_coredns,
                          containerd=dict(args.containerd), ip_family=args.ip_family).up()
        if args.cni == "podwire":
            from e2e.node_runtime import install_podwire_cni

            dist = Path(__file__).resolve().parents[1] / "dist" / "podwire"
            if not (dist / "podwire").exists():
                print(f"e2e.cluster: {dist}/podwire missing (make dist); nodes stay NotReady", file=sys.stderr)
                return 1
            install_podwire_cni(cluster, dist)
        print(f"cluster {args.name} up in {time.monotonic() - started:.1f}s", file=sys.stderr)
        print(json.dumps(cluster.status(), indent=1))
        print(f"export KUBECONFIG={cluster.kubeconfig}", file=sys.stderr)
        return 0
    if not (base_dir() / args.name / "state.json").exists():
        if args.command == "down":
            errors = Cluster(args.name).down()  # still sweep leftovers by name
            return 1 if errors else 0
        print(f"cluster {args.name} is not up", file=sys.stderr)
        return 1
    cluster = Cluster.load(args.name)
    if args.command == "load":
        for tarball in args.tarballs:
            cluster.import_image(tarball)
        return 0
    if args.command == "status":
        status = cluster.status()
        print(json.dumps(status, indent=1))
        return 0 if status["readyz"] else 1
    errors = cluster.down()
    for e in errors:
        print("e2e.cluster down:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
