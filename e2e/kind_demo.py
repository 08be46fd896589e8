"""The demo's checks on a kind cluster: the same e2e/demo.py Demo, pointed at kind's nodes.

Why it is built so: the kind path must pass what the harness cluster passes (pod to pod across nodes,
Service by DNS name, NodePort from outside the nodes, egress, NetworkPolicy), so the checks are the
demo's own; only the cluster they look at differs. `KindView` gives a KindCluster the few things Demo
uses: kubectl, the nodes with their addresses, and an "outside" host, which here is the Docker host:
the engine's network namespace, on kind's network beside the nodes but not one of them.

    python3 -m e2e.kind_demo [--keep] [--podwire-image TAR]      (make demo-kind)
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e2e import images
from e2e.demo import Demo
from e2e.kind import REPO, KindCluster


@dataclasses.dataclass(frozen=True)
class KindNode:
    name: str
    ip: ipaddress.IPv4Address

    @property
    def ips(self) -> tuple:
        """Every family's address (Demo checks each): kind-config.yaml's cluster is IPv4."""
        return (self.ip,)


@dataclasses.dataclass(frozen=True)
class DockerHost:
    """The engine's namespace as Demo's outside host: `argv` runs a command there."""

    kind: KindCluster
    ip: ipaddress.IPv4Address

    @property
    def ips(self) -> tuple:
        return (self.ip,)

    def argv(self, argv) -> list[str]:
        return self.kind.engine.in_netns(argv)


@dataclasses.dataclass(frozen=True)
class Topology:
    outside: DockerHost


class KindView:
    """What Demo reads of a cluster, for a KindCluster."""

    def __init__(self, kind: KindCluster):
        self.kind = kind
        self.kubeconfig = kind.kubeconfig
        network = json.loads(kind.engine.docker("network", "inspect", "kind"))[0]
        v4 = next(c for c in network["IPAM"]["Config"] if ":" not in c.get("Gateway", ":"))
        self.topology = Topology(DockerHost(kind, ipaddress.IPv4Address(v4["Gateway"])))
        self.subnet = ipaddress.IPv4Network(v4["Subnet"])
        self.nodes = sorted(
            (KindNode(c["Name"], ipaddress.IPv4Interface(c["IPv4Address"]).ip) for c in network["Containers"].values()),
            key=lambda n: n.name)

    def kubectl(self, *args, check=True, input=None, timeout=60) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.kind.engine.in_netns([self.kind.env()["KUBECTL"], *args]), env=self.kind.env(),
                              input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc


class KindDemo(Demo):
    def deploy(self) -> None:
        from e2e.demo import LB_POOL, SERVER

        # kind taints its control-plane node; the demo spreads one server per node over all three
        self.c.kubectl("taint", "nodes", "--all", "node-role.kubernetes.io/control-plane:NoSchedule-", check=False)
        self.kubectl("wait", "--for=condition=established", "crd/loadbalancerpools.podwire.io", "--timeout=60s",
                     timeout=70)
        self.c.kubectl("apply", "-f", "-", input=LB_POOL % {"range": kind_lb_range(self.c.subnet)} + "---\n"
                       + SERVER % {"image": images.BUSYBOX})
        self.kubectl("rollout", "status", "deployment/web", "--timeout=120s", timeout=140)
        self.kubectl("wait", "--for=condition=Ready", "pod/client", "--timeout=120s", timeout=140)


def kind_lb_range(subnet: ipaddress.IPv4Network) -> str:
    """The top of kind's Docker network (172.18.255.200-250 on the usual /16), as MetalLB's kind guide
    picks: Docker hands out addresses from the bottom, and the Docker host reaches these by ARP."""
    return f"{subnet[-56]}-{subnet[-6]}"


def load_busybox(kind: KindCluster) -> None:
    """The demo's pods run the busybox test image: into every node, as `kind load` does."""
    with tempfile.TemporaryDirectory() as tmp:
        tar = images.busybox_image(Path(tmp) / "busybox.tar", images.BUSYBOX)
        kind.kind("load", "image-archive", "--name", kind.cluster, str(tar), timeout=300)


def run(kind: KindCluster, podwire_image: Path) -> list[tuple[str, bool, str]]:
    """Cluster up, kind-up.sh, the demo's checks; the results (label, passed, detail)."""
    kind.up_with_podwire(podwire_image)
    load_busybox(kind)
    demo = KindDemo(KindView(kind))
    try:
        print(demo.kubectl("get", "nodes", "-o", "wide"), flush=True)
        demo.deploy()
        print(demo.kubectl("get", "pods", "-A", "-o", "wide"), flush=True)
        demo.run_checks()
        demo.run_policy_checks()
    except Exception as e:  # noqa: BLE001 - reported as a failed check, with the nodes' view
        demo.check("kind demo ran to the end", False, str(e)[:2000])
        print(kind.node_logs()[-6000:], flush=True)
    return demo.results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="leave the cluster running (python3 -m e2e.kind down)")
    ap.add_argument("--name", default="kind")
    ap.add_argument("--podwire-image", type=Path, default=REPO / "dist" / "podwire-image.tar")
    args = ap.parse_args(argv)
    if not args.podwire_image.is_file():
        print(f"kind demo: {args.podwire_image} is not a file (make image)", file=sys.stderr)
        return 2
    started = time.monotonic()
    kind = KindCluster(args.name)
    results: list[tuple[str, bool, str]] = []
    try:
        results = run(kind, args.podwire_image)
    except Exception as e:  # noqa: BLE001 - a failed step is a failed check; teardown still runs
        results.append(("kind cluster and podwire install", False, str(e)[:3000]))
    finally:
        failed = [r for r in results if not r[1]]
        print(f"== kind: {len(results) - len(failed)} passed, {len(failed)} failed in "
              f"{time.monotonic() - started:.0f}s; timings {kind.timings}", flush=True)
        for label, _, detail in failed:
            print(f"  FAILED: {label}: {detail.splitlines()[0] if detail else ''}", flush=True)
        if args.keep:
            print(f"kept: python3 -m e2e.kind kubectl --name {args.name} -- get pods -A; "
                  f"python3 -m e2e.kind down --name {args.name}")
        else:
            for err in kind.down():
                print(f"teardown: {err}")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
