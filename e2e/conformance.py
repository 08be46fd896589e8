"""Upstream Kubernetes e2e tests (sig-network) against podwire, in one command.

    python3 -m e2e.conformance [--suite conformance|services|netpol|dns|topology|dualstack|loadbalancer]
                               [--ip-family ipv4|ipv6|dual] [--focus REGEX]
                               [--skip REGEX] [--shards N] [--nodes N] [--keep] [--name cNAME]
                               [--cluster harness|kind]

Brings up a full cluster of the harness (3 nodes: containerd + kubelet each, CoreDNS, no
kube-proxy), installs podwire as a cluster would — its image imported into every node (`kind
load`), then `kubectl apply -f manifests/podwire.yaml` (DaemonSet: CNI plugin, routes, egress
masquerade and the Service proxy) — imports the images e2e.test runs (e2e/images.py), runs
upstream `e2e.test --provider=skeleton` with kubectl on PATH, and writes a summary to
e2e/results/<suite>-<UTC time>.md and .junit.xml: passed / failed / skipped with names, stamped
with the podwire commit and the Kubernetes and containerd versions.

Suites: `conformance` = `\\[sig-network\\].*\\[Conformance\\]`; `services` = the non-conformance
sig-network Services/Conntrack tests for what podwire's proxy claims (hairpin, rejects without
endpoints, UDP conntrack, service-proxy-name, headless); `netpol` = every `[Feature:NetworkPolicy]`
test of `[sig-network] Netpol` (TCP, UDP, and the two SCTP-named ones that probe TCP) and the
`[sig-network] Netpol API` tests, except those that serve SCTP: this kernel has no SCTP sockets;
the summary names them as "not run here" with that reason; `dns` = the sig-network DNS tests
outside Conformance (the "DNS configMap" ones rewrite kube-system/coredns, "configurable pod
resolv.conf" names a server pod in dnsConfig); `topology` = Topology Hints and Traffic Distribution
on 6 nodes in 3 zones; `loadbalancer` = every `[Feature:LoadBalancer]` test of sig-network against the
addresses podwire assigns itself: after the install a LoadBalancerPool on the outside host's subnet
(.200-.250, clear of the harness's hosts), and e2e.test runs in the outside host's network namespace
(a client on that LAN, reaching the addresses by ARP) with a kubeconfig naming the API server's
underlay address (its certificate covers it). --focus/--skip replace the suite's.

`--cluster kind` runs the same selection on the kind path instead (e2e/kind.py): a private dockerd in
its own network namespace, `kind create cluster --config manifests/kind-config.yaml` (1 control-plane,
2 workers), `packaging/kind-up.sh` unchanged, the test images put into every node with `kind load
image-archive`, and e2e.test run inside the engine's network namespace, where kind publishes the
API server on 127.0.0.1 and the nodes' addresses are on kind's bridge. Its summary is
e2e/results/<suite>-kind-<UTC time>.md; the cluster goes (engine, containers, namespace, data root)
also when a step fails. `topology` does not run there: it needs 6 nodes in zones; nor `loadbalancer`:
it needs the harness's outside host and a pool on its subnet.

Why it is built so:
* The tests to run are chosen here, from `e2e.test --list-tests` and the focus/skip regexes,
  so the summary lists exactly the selected tests (a ginkgo report also lists the thousands it
  filtered out), and they can be split into shards: separate e2e.test processes with disjoint
  exact-name focuses, run side by side (e2e.test alone runs serially; ginkgo's parallel mode
  needs the ginkgo CLI). Tests tagged [Serial] run afterwards, alone.
* The control-plane host is not a node here (kind's is), so it has no pod routes; the API
  server's proxy subresource (pods/proxy, services/proxy: the "Proxy" tests) and webhooks dial
  pod IPs. The control-plane host gets a static route to every node's podCIDR via that node,
  the route a control-plane node running podwire would have.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import yaml

from e2e import build, images
from e2e import netns as ns
from e2e.podwire_install import build_image, install

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(os.environ.get("PODWIRE_CONFORMANCE_WORK", "/tmp/podwire-conformance"))

# Tests a suite's focus matches that cannot run on this machine: (regex, reason). They go into the
# suite's skip regex, and the summary names each one with its reason instead of leaving it out silently.
NO_SCTP = ("they serve SCTP, and this kernel has no SCTP sockets "
           "(CONFIG_IP_SCTP is not set: /proc/net/sctp is absent)")
NOT_RUN_HERE: dict[str, tuple[tuple[str, str], ...]] = {
    # Only the [Feature:SCTPConnectivity] ones serve SCTP; the two SCTP-named tests of "NetworkPolicy
    # between server and client" probe TCP and stay in (a policy allowing SCTP must not let TCP through).
    "netpol": ((r"\[Feature:SCTPConnectivity\]", NO_SCTP),),
    "dns": (
        (r"\[Conformance\]", "in the conformance suite (python3 -m e2e.conformance)"),
        (r"\[Provider:GCE\]", "runs only with --provider=gce (it skips itself on any other provider)"),
        (r"\[Feature:OffByDefault\]", "needs the alpha feature gate RelaxedServiceNameValidation, off by "
                                        "default in v1.34 (the harness runs the default gates, as kind does)"),
        (r"\[Feature:Networking-DNS\]", "connects to google.com:80 on the internet; the harness reaches "
                                          "nothing outside its namespaces"),
        (r"\[Feature:PerformanceDNS\]", "a scale test: 10,000 Services in 2 namespaces, beyond what one "
                                          "2-core machine shared with other work holds for a run"),
    ),
    "dualstack": ((r"\[Feature:SCTPConnectivity\]", NO_SCTP),),
    "loadbalancer": (
        # loadbalancer.go getSubnetPrefix: "assumes a flat network assigned to the nodes, common on cloud
        # providers": a client address inside the first worker's InternalIP/16 counts as masqueraded.
        (r"ExternalTrafficPolicy: Local .*should work for type=LoadBalancer$",
         "its source-IP check fails any client inside the first worker's InternalIP /16 (172.30.0.0/16 here) "
         "as \"Source IP was NOT preserved\"; the client is e2e.test on the outside host 172.30.0.100, "
         "which every harness subnet puts inside that /16, so the check cannot tell a preserved source "
         "from a masqueraded one"),
    ),
}

SUITES = {
    "conformance": (r"\[sig-network\].*\[Conformance\]", ""),
    "services": (
        r"\[sig-network\] (Services should (allow pods to hairpin back to themselves through services"
        r"|implement service\.kubernetes\.io/(service-proxy-name|headless)"
        r"|be rejected (when no endpoints exist|for evicted pods))|Conntrack )",
        r"\[Conformance\]",
    ),
    "netpol": (
        r"\[sig-network\] Netpol (API |.*\[Feature:NetworkPolicy\])",
        "|".join(rx for rx, _ in NOT_RUN_HERE["netpol"]),
    ),
    # What needs the cluster DNS as kubeadm installs it (the `coredns` ConfigMap that the "DNS configMap"
    # tests rewrite, `forward` to an upstream) and custom pod DNS (dnsConfig naming a server pod).
    "dns": (
        r"\[sig-network\] (DNS |\[Feature:PerformanceDNS\]|Networking should provider Internet connection "
        r"for containers using DNS)",
        "|".join(rx for rx, _ in NOT_RUN_HERE["dns"]),
    ),
    # What needs nodes in zones (topology.kubernetes.io/zone): hints and trafficDistribution.
    "topology": (r"\[sig-network\] (Topology Hints|Traffic Distribution) ", ""),
    # Dual-stack Services, pods and endpoints: run on a dual-stack cluster (--ip-family dual)
    "dualstack": (r"\[sig-network\] .*\[Feature:IPv6DualStack\]",
                  "|".join(rx for rx, _ in NOT_RUN_HERE["dualstack"])),
    # What needs LoadBalancer addresses that answer (podwire's pools and ARP announcement).
    "loadbalancer": (
        r"\[sig-network\] .*\[Feature:LoadBalancer\]",
        "|".join(rx for rx, _ in NOT_RUN_HERE["loadbalancer"]),
    ),
}
# Images a suite's tests use, when not all of TEST_IMAGE_CONFIGS (each is ~240 MB per node to import).
SUITE_IMAGES = {"netpol": (images.AGNHOST,),  # the 9 pods of each Netpol test run agnhost
                "topology": (images.AGNHOST,),
                "loadbalancer": (images.AGNHOST,)}  # backends, exec pods and pause pods: all agnhost
# Nodes per suite (default 3): the multi-node Traffic Distribution tests want 3 zones with 2 nodes each.
SUITE_NODES = {"topology": 6}
# e2e.test processes side by side when --shards is not given. A Netpol test spends its ~50 s waiting on
# 81 pod execs (3 workers, 1 s connect timeouts), not on CPU: 3 shards of 9 pods each ran fine here.
# loadbalancer: the two rolling-update tests each take ~15 min of waiting (5 DaemonSet updates, pods that
# delay their shutdown 60 s); three shards keep them apart and the rest beside them.
SUITE_SHARDS = {"netpol": 3, "loadbalancer": 3}
# Suites whose e2e.test runs in the outside host's network namespace: it must reach LoadBalancer
# addresses as a client on the nodes' LAN does, by ARP (the root namespace gets no routes or addresses).
FROM_OUTSIDE = {"loadbalancer"}
# The pool on the outside host's subnet: hosts .200-.250. topology.py puts the gateway at .1, the
# control plane at .2, nodes from .11 (at most 80), the outside host at .100.
LB_POOL_HOSTS = (200, 250)


# -- choosing the tests (pure) ---------------------------------------------------------------


SUITE_DESCRIPTION = "Kubernetes e2e suite"  # ginkgo matches focus/skip against "<this> <test name>"


def select(names: list[str], focus: str, skip: str = "") -> list[str]:
    """The tests e2e.test would run for --ginkgo.focus/--ginkgo.skip."""
    f, s = re.compile(focus), re.compile(skip) if skip else None
    texts = {n: f"{SUITE_DESCRIPTION} {n}" for n in names}
    return [n for n in names if f.search(texts[n]) and not (s and s.search(texts[n]))]


def not_run_here(names: list[str], focus: str, skip: str, excluded=()) -> dict[str, str]:
    """name -> reason for the tests the focus matches, the skip removes, and one of the `excluded`
    (regex, reason) pairs names: what a summary lists as "not run here"."""
    matched = set(select(names, focus)) - set(select(names, focus, skip))
    out = {}
    for n in (n for n in names if n in matched):
        reason = next((why for rx, why in excluded if re.search(rx, f"{SUITE_DESCRIPTION} {n}")), None)
        if reason:
            out[n] = reason
    return out


def shard(names: list[str], n: int) -> list[list[str]]:
    """[Serial] tests go last, alone; the others round-robin into n shards."""
    parallel = [x for x in names if "[Serial]" not in x]
    serial = [x for x in names if "[Serial]" in x]
    shards = [parallel[i::n] for i in range(max(1, n))]
    return [s for s in shards if s] + ([serial] if serial else [])


def exact_focus(names: list[str]) -> str:
    """A focus regex (Go RE2) matching exactly these test names. Ginkgo matches it against the
    suite's description, a space and the name, hence no `^`; every name starts with "[sig-"."""
    return r"\s(" + "|".join(re.escape(n) for n in names) + ")$"


CLUSTERS = ("harness", "kind")


def result_basename(suite: str, cluster: str, when: time.struct_time) -> str:
    """e2e/results/ file name (no suffix): the harness's keep their old names; kind's say kind."""
    return f"{suite}{'' if cluster == 'harness' else '-' + cluster}-{time.strftime('%Y%m%dT%H%MZ', when)}"


def kind_refusal(suite: str, nodes: int | None) -> str | None:
    """Why this run cannot go on kind (None: it can). kind's nodes are manifests/kind-config.yaml's 3."""
    if suite == "topology":
        return ("the topology suite needs 6 nodes in 3 zones; manifests/kind-config.yaml makes 3 nodes "
                "without zone labels (use the harness: --cluster harness)")
    if suite in FROM_OUTSIDE:
        return (f"the {suite} suite runs e2e.test on the harness's outside host with a LoadBalancerPool on "
                "its subnet; the kind path has neither (use the harness: --cluster harness)")
    if nodes is not None:
        return ("--nodes is the harness's: a kind cluster has manifests/kind-config.yaml's nodes "
                "(1 control-plane, 2 workers)")
    return None


def kind_node_images(test_images) -> list[str]:
    """Images to load into kind's nodes: the suite's test images and busybox, which the harness's nodes
    get at start (e2e/images.py SPECS) and kind's node image lacks; pause comes with the node image."""
    out = [images.BUSYBOX]
    return out + [n for n in test_images if n not in out]


def parse_list(text: str) -> list[str]:
    """Names from `e2e.test --list-tests` lines ("    <file>:<line>: <name>")."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*\S+\.go:\d+: (.*)$", line)
        if m:
            out.append(m.group(1))  # as is: a few names end in a space, and focus is anchored
    return out


@dataclasses.dataclass(frozen=True)
class Outcome:
    name: str
    state: str  # passed | failed | skipped (not run: skipped by the test itself, or never reached)
    seconds: float = 0.0
    message: str = ""  # failure or skip reason
    location: str = ""


def spec_name(spec: dict) -> str:
    return " ".join([*(spec.get("ContainerHierarchyTexts") or []), spec.get("LeafNodeText", "")])


def outcomes(reports: list, selected: list[str]) -> list[Outcome]:
    """One Outcome per selected test from ginkgo JSON reports (a list of suite reports each).
    A selected test missing from every report (a shard that crashed) counts as failed."""
    found: dict[str, Outcome] = {}
    for suite in reports:
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                continue
            name = spec_name(spec)
            state = spec.get("State", "")
            failure = spec.get("Failure") or {}
            if name not in selected or (state == "skipped" and not failure):
                continue  # filtered out by this shard's focus (a test's own Skip() has a message)
            loc = failure.get("Location") or {}
            msg = failure.get("Message", "")
            if state != "passed" and state != "skipped":
                state = "failed"  # failed, panicked, timedout, interrupted, aborted
            found[name] = Outcome(name, state, spec.get("RunTime", 0) / 1e9, msg.strip(),
                                  f"{loc.get('FileName', '')}:{loc.get('LineNumber', '')}" if loc else "")
    return [found.get(n) or Outcome(n, "failed", message="no result: its e2e.test process did not report it")
            for n in selected]


def counts(results: list[Outcome]) -> dict[str, int]:
    return {s: sum(r.state == s for r in results) for s in ("passed", "failed", "skipped")}


def render_markdown(title: str, stamp: dict, results: list[Outcome], notes: dict[str, str],
                    not_run: dict[str, str] | None = None) -> str:
    """`notes`: name -> reason shown instead of a failed/skipped test's message; `not_run`: name ->
    reason for tests of the suite left out of the selection on purpose (listed, not counted)."""
    c = counts(results)
    not_run = not_run or {}
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in stamp.items()]
    lines += ["", f"**{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped** "
              f"(of {len(results)} selected" + (f"; {len(not_run)} not run here" if not_run else "") + ")", ""]
    if not_run:
        lines += [f"## not run here ({len(not_run)})", ""]
        lines += [f"- not run here: `{n}`: {reason}" for n, reason in not_run.items()]
        lines.append("")
    for state in ("failed", "skipped", "passed"):
        rows = [r for r in results if r.state == state]
        if not rows:
            continue
        lines += [f"## {state} ({len(rows)})", ""]
        for r in rows:
            line = f"- `{r.name}` ({r.seconds:.0f} s)"
            reason = notes.get(r.name) or (r.message.splitlines() or [""])[0][:300]
            if state != "passed" and reason:
                line += f" — {reason}"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def render_junit(title: str, results: list[Outcome]) -> str:
    c = counts(results)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuite name={quoteattr(title)} tests="{len(results)}" failures="{c["failed"]}" '
           f'skipped="{c["skipped"]}" time="{sum(r.seconds for r in results):.1f}">']
    for r in results:
        out.append(f'  <testcase name={quoteattr(r.name)} classname="Kubernetes e2e suite" time="{r.seconds:.1f}">')
        if r.state == "failed":
            out.append(f'    <failure message={quoteattr(r.message.splitlines()[0] if r.message else "failed")}>'
                       f'{escape(r.location + chr(10) + r.message)}</failure>')
        elif r.state == "skipped":
            out.append(f'    <skipped message={quoteattr(r.message[:500])}/>')
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


# -- the cluster -----------------------------------------------------------------------------


def wait_coredns(cluster, timeout: int = 300) -> None:
    cluster.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", f"--timeout={timeout}s",
                    timeout=timeout + 20)


def lb_pool_range(plan) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """First and last address of the loadbalancer suite's pool: LB_POOL_HOSTS of the outside host's
    subnet (a TopologyPlan), refused when one of the plan's hosts or the gateway falls inside it."""
    outside = next(h for h in plan.hosts if h.role == "outside")
    net = plan.subnets[outside.subnet]
    first, last = net[LB_POOL_HOSTS[0]], net[LB_POOL_HOSTS[1]]
    taken = [h.address.ip for h in plan.hosts if h.subnet == outside.subnet] + [outside.gateway]
    clash = [str(ip) for ip in taken if first <= ip <= last]
    if clash:
        raise ValueError(f"the pool {first}-{last} holds harness addresses: {', '.join(clash)}")
    return first, last


LB_POOL_NAME = "e2e-loadbalancer"


def lb_pool_manifest(first, last) -> dict:
    return {"apiVersion": "podwire.io/v1alpha1", "kind": "LoadBalancerPool",
            "metadata": {"name": LB_POOL_NAME}, "spec": {"addresses": [f"{first}-{last}"]}}


def create_lb_pool(cluster) -> str:
    """The loadbalancer suite's pool, created as a user would (kubectl apply); returns its range."""
    first, last = lb_pool_range(cluster.topology.plan)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(lb_pool_manifest(first, last)))
    return f"{first}-{last}"


def kubeconfig_with_server(doc: dict, server: str) -> dict:
    """A kubeconfig (parsed) whose every cluster entry names `server` instead."""
    clusters = [{**c, "cluster": {**c["cluster"], "server": server}} for c in doc.get("clusters") or []]
    if not clusters:
        raise ValueError("the kubeconfig names no cluster")
    return {**doc, "clusters": clusters}


def outside_kubeconfig(cluster, path: Path) -> Path:
    """The admin kubeconfig for a process in the outside host: the API server at its underlay address
    (the forwarder on the root namespace's 127.0.0.1 is out of reach there; the serving certificate
    names the control-plane host's address, e2e/control_plane.py _make_pki)."""
    doc = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    path.write_text(yaml.safe_dump(kubeconfig_with_server(doc, cluster.control_plane.internal_server)))
    path.chmod(0o600)
    return path


def route_control_plane_to_pods(cluster) -> None:
    """Routes on the control-plane host to every node's podCIDRs (each family via the node's address of
    that family): the API server's proxy and webhooks reach pods, as on a kind node."""
    cp = cluster.topology.cp
    for node in cluster.nodes:
        for cidr in node.pod_cidrs or (node.pod_cidr,):
            via = next(ip for ip in node.ips if ip.version == cidr.version)
            cp.run(["ip", f"-{cidr.version}", "route", "replace", str(cidr), "via", str(via)])


def podwire_commit() -> str:
    def out(argv):
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else "?"

    commit = out(["git", "rev-parse", "--short=12", "HEAD"])
    dirty = out(["git", "status", "--porcelain", "--", "cni_plugin", "ipam", "netkit", "node_daemon", "policy", "proxy",
                 "loadbalancer", "packaging", "manifests"])
    if dirty:  # the image is built from the working tree, which other engineers share
        commit += " + uncommitted changes in " + ", ".join(line.split()[-1] for line in dirty.splitlines())
    return commit


def versions(cluster) -> dict:
    from e2e.node_runtime import CONTAINERD_BIN, topology_labels

    def out(argv, cwd=ROOT):
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else "?"

    commit = podwire_commit()
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout).get("serverVersion", {})
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "podwire": commit,
        "kubernetes": f"{server.get('gitVersion', '?')} (e2e.test {build.KUBERNETES_VERSION})",
        "containerd": out([str(CONTAINERD_BIN / "containerd"), "--version"]),
        "cluster": f"{len(cluster.nodes)} full nodes, podwire DaemonSet (CNI, Service proxy, NetworkPolicy), "
                   "no kube-proxy, CoreDNS as kubeadm installs it, nodes in zones "
                   + ", ".join(sorted({topology_labels(n.name)["topology.kubernetes.io/zone"] for n in cluster.nodes})),
    }


# -- running e2e.test ------------------------------------------------------------------------


def list_tests(bin_dir: Path) -> list[str]:
    r = subprocess.run([str(bin_dir / "e2e.test"), "--list-tests"], capture_output=True, text=True, check=True)
    return parse_list(r.stdout)


def run_shards(cluster, shards: list[list[str]], out_dir: Path, extra: list[str], wrap=None,
               kubeconfig: Path | None = None) -> list:
    """e2e.test per shard, at once except the last [Serial] one; returns the JSON reports.
    `wrap(argv)`: where e2e.test runs (kind: in the engine's network namespace; loadbalancer: in the
    outside host's), with `kubeconfig` (default the cluster's) valid from there."""
    bin_dir = cluster.bin_dir
    kubeconfig = kubeconfig or cluster.kubeconfig
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "KUBECONFIG": str(kubeconfig)}
    waves = [[s for s in shards if "[Serial]" not in s[0]], [s for s in shards if "[Serial]" in s[0]]]
    reports, i = [], -1
    for wave in waves:
        procs = []
        for names in wave:
            i += 1
            argv = [str(bin_dir / "e2e.test"), f"--kubeconfig={kubeconfig}", "--provider=skeleton",
                    f"--ginkgo.focus={exact_focus(names)}", f"--ginkgo.json-report={out_dir}/shard-{i}.json",
                    "--ginkgo.timeout=4h", "--ginkgo.no-color", "--ginkgo.v", f"--report-dir={out_dir}/shard-{i}",
                    "--e2e-output-dir", str(out_dir / f"shard-{i}"), *extra]
            (out_dir / f"shard-{i}").mkdir(parents=True, exist_ok=True)
            log = open(out_dir / f"shard-{i}.log", "w")
            print(f"e2e.conformance: shard {i}: {len(names)} tests, log {log.name}", file=sys.stderr, flush=True)
            procs.append((i, subprocess.Popen(wrap(argv) if wrap else argv, stdout=log, stderr=subprocess.STDOUT,
                                              env=env), log))
        try:
            for _, p, _ in procs:
                p.wait()
        except BaseException:  # interrupted: no e2e.test outlives the run (or the cluster it tests)
            for _, p, _ in procs:
                p.kill()
                p.wait()
            raise
        for i, _, log in procs:
            log.close()
            try:
                reports += json.loads((out_dir / f"shard-{i}.json").read_text())
            except (OSError, ValueError):
                pass
    return reports


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m e2e.conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="conformance")
    parser.add_argument("--focus", help="ginkgo focus regex (replaces the suite's)")
    parser.add_argument("--skip", help="ginkgo skip regex (replaces the suite's)")
    parser.add_argument("--shards", type=int, help="e2e.test processes side by side (default 2; netpol 3)")
    parser.add_argument("--nodes", type=int, help="nodes (default 3; topology 6: 3 zones x 2)")
    parser.add_argument("--name", help="cluster name (default conf; with --cluster kind, the engine's: kconf)")
    parser.add_argument("--cluster", choices=CLUSTERS, default="harness",
                        help="harness (default): the netns cluster; kind: kind create cluster + packaging/kind-up.sh "
                             "on a private dockerd")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the summary goes (default e2e/results)")
    parser.add_argument("--e2e-arg", action="append", default=[], help="extra e2e.test argument (repeatable)")
    parser.add_argument("--ip-family", choices=("ipv4", "ipv6", "dual"), default="ipv4",
                        help="the harness cluster's families (the dualstack suite wants dual)")
    parser.add_argument("--podwire-image", type=Path,
                        help="a podwire image tarball made earlier (make image) instead of building one from the "
                             "working tree, which other engineers may be editing")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("e2e.conformance: needs root (network namespaces)", file=sys.stderr)
        return 2
    focus, skip = SUITES[args.suite]
    focus, skip = args.focus or focus, skip if args.skip is None else args.skip
    shards = args.shards or SUITE_SHARDS.get(args.suite, 2)
    if args.cluster == "kind":
        refusal = kind_refusal(args.suite, args.nodes)
        try:
            from e2e.dockerd import valid_name

            valid_name(args.name or "kconf")  # it names the engine's namespace, cgroup and directories
        except ValueError as err:
            refusal = refusal or str(err)
        if args.podwire_image and not args.podwire_image.is_file():
            refusal = refusal or f"--podwire-image {args.podwire_image} is not a file (make image)"
        if refusal:
            print(f"e2e.conformance: --cluster kind: {refusal}", file=sys.stderr)
            return 2
        # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so the engine and its containers go too
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        from e2e.dockerd import DockerdError
        from e2e.kind import KindError

        try:
            summary = run_kind(args.name or "kconf", focus, skip, args.suite, shards=shards, keep=args.keep,
                               results=args.results, extra=args.e2e_arg,
                               test_images=SUITE_IMAGES.get(args.suite, tuple(images.TEST_IMAGE_CONFIGS)),
                               excluded=NOT_RUN_HERE.get(args.suite, ()), podwire_image=args.podwire_image)
        except (KindError, DockerdError, ns.CommandError, build.BuildError, subprocess.CalledProcessError) as err:
            print(f"e2e.conformance: --cluster kind: {err}" + ("" if args.keep else " (the cluster is gone)"),
                  file=sys.stderr)
            return 1
        print(summary["markdown"])
        return 0 if summary["counts"]["failed"] == 0 else 1
    summary = run(args.name or "conf", focus, skip, args.suite, shards=shards, keep=args.keep, results=args.results,
                  extra=args.e2e_arg, test_images=SUITE_IMAGES.get(args.suite, tuple(images.TEST_IMAGE_CONFIGS)),
                  excluded=NOT_RUN_HERE.get(args.suite, ()), nodes=args.nodes or SUITE_NODES.get(args.suite, 3),
                  podwire_image=args.podwire_image, from_outside=args.suite in FROM_OUTSIDE,
                  ip_family=args.ip_family)
    print(summary["markdown"])
    return 0 if summary["counts"]["failed"] == 0 else 1


def choose(bin_dir: Path, focus: str, skip: str, excluded) -> tuple[list[str], dict[str, str]]:
    """The tests e2e.test will run, and those of the suite not run here with their reasons."""
    listed = list_tests(bin_dir)
    selected = select(listed, focus, skip)
    not_run = not_run_here(listed, focus, skip, excluded)
    if not selected:
        raise SystemExit(f"e2e.conformance: no test matches focus {focus!r} / skip {skip!r}")
    print(f"e2e.conformance: {len(selected)} tests selected" + (f", {len(not_run)} not run here" if not_run else ""),
          file=sys.stderr, flush=True)
    return selected, not_run


def run_tests(cluster, selected: list[str], shards: int, work: Path, extra, wrap=None,
              kubeconfig: Path | None = None) -> tuple[list[Outcome], int]:
    """The selected tests in shards; one outcome each, and how many shards ran."""
    groups = shard(selected, shards)
    return outcomes(run_shards(cluster, groups, work, list(extra), wrap=wrap, kubeconfig=kubeconfig),
                    selected), len(groups)


def finish(cluster, keep: bool, kept: str) -> None:
    """The cluster down (errors printed, never raised: the run's own outcome matters more), or kept."""
    if keep:
        print(f"e2e.conformance: {kept}", file=sys.stderr)
        return
    errors = cluster.down()
    if errors:
        print("e2e.conformance: teardown: " + "; ".join(errors), file=sys.stderr)


def summarize(title: str, suite: str, cluster: str, stamp: dict, res: list[Outcome], not_run: dict[str, str],
              results: Path | None) -> dict:
    """The summary as markdown and JUnit, written to `results` (when given) as <suite>[-<cluster>]-<time>."""
    md, junit = render_markdown(title, stamp, res, {}, not_run), render_junit(title, res)
    paths = []
    if results:
        results.mkdir(parents=True, exist_ok=True)
        base = results / result_basename(suite, cluster, time.gmtime())
        paths = [base.with_suffix(".md"), base.with_suffix(".junit.xml")]
        paths[0].write_text(md)
        paths[1].write_text(junit)
        print(f"e2e.conformance: wrote {paths[0]} and {paths[1]}", file=sys.stderr)
    return {"counts": counts(res), "results": res, "markdown": md, "paths": paths}


def run(name: str, focus: str, skip: str, title: str, *, shards: int = 2, keep: bool = False,
        results: Path | None = RESULTS, extra=(), nodes: int = 3, work_dir: Path | None = None,
        test_images=tuple(images.TEST_IMAGE_CONFIGS), excluded=(), podwire_image: Path | None = None,
        from_outside: bool = False, ip_family: str = "ipv4") -> dict:
    """Cluster up, podwire installed, the selected tests run, summary written (when `results`).
    `from_outside`: a LoadBalancerPool on the outside host's subnet, and e2e.test in that host.
    `test_images`: which of the e2e images to import (all by default; each ~240 MB per node).
    `excluded`: (regex, reason) pairs; the tests the focus matches and the skip removes that one of
    them names are listed in the summary as not run here, with the reason."""
    from e2e.cluster import Cluster

    started = time.monotonic()
    bin_dir = build.ensure_built()
    selected, not_run = choose(bin_dir, focus, skip, excluded)
    tarballs = images.e2e_test_images(test_images)
    # The owner's death lets the next sweep (any pytest session, `up`) remove a cluster left by a
    # killed run; --keep has none, it stays until `python3 -m e2e.cluster down`.
    cluster = Cluster(name, "l2", nodes, full_nodes=True, owner=None if keep else ns.this_process("conformance"),
                      ip_family=ip_family)
    # e2e.test's logs and reports outlive the cluster (its directory goes at `down`)
    work = Path(work_dir or WORK / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    work.mkdir(parents=True, exist_ok=True)
    print(f"e2e.conformance: logs and reports in {work}", file=sys.stderr, flush=True)
    cluster.up()
    try:
        image = podwire_image or build_image(work / "podwire-image.tar")
        for tarball in tarballs.values():
            cluster.import_image(tarball)
        install(cluster, image)  # as a user: image into the nodes, kubectl apply, DaemonSet and nodes Ready
        wait_coredns(cluster)
        route_control_plane_to_pods(cluster)
        stamp = versions(cluster)
        if podwire_image:  # the working tree says nothing about an image made earlier
            stamp["podwire"] = f"image {podwire_image} (given; the checkout's HEAD was {stamp['podwire']})"
        wrap, kubeconfig = None, None
        if from_outside:
            outside = cluster.topology.outside
            stamp["load balancer"] = (f"LoadBalancerPool {LB_POOL_NAME} {create_lb_pool(cluster)}; e2e.test on "
                                      f"the outside host {outside.ip} (network namespace {outside.netns})")
            wrap, kubeconfig = outside.argv, outside_kubeconfig(cluster, work / "outside.kubeconfig")
        ready = time.monotonic()
        print(f"e2e.conformance: cluster ready in {ready - started:.0f}s; running e2e.test", file=sys.stderr,
              flush=True)
        res, groups = run_tests(cluster, selected, shards, work, extra, wrap=wrap, kubeconfig=kubeconfig)
        stamp["focus"] = f"`{focus}`" + (f", skip `{skip}`" if skip else "")
        stamp["run time"] = (f"{time.monotonic() - ready:.0f} s e2e.test ({groups} shards), "
                             f"{ready - started:.0f} s setup")
        if ip_family != "ipv4":
            cfg = cluster.control_plane.config
            stamp["ip family"] = (f"{ip_family}: Services {', '.join(map(str, cfg.service_cidrs))}, "
                                  f"pods {', '.join(map(str, cfg.cluster_cidrs))}")
            title = f"{title} {ip_family}"
        return summarize(f"podwire: upstream e2e, {title}", title.replace(" ", "-"), "harness", stamp, res,
                         not_run, results) | {"work": work}
    finally:
        finish(cluster, keep, f"cluster {name} kept (python3 -m e2e.cluster down --name {name}); "
                              f"export KUBECONFIG={cluster.kubeconfig}")


# -- the same on kind ----------------------------------------------------------------------------


def kind_stamp(kind) -> dict:
    """What the kind run's summary is stamped with: commit, versions, the cluster as kind made it."""
    from e2e.kind import CONFIG

    def out(proc) -> str:
        return proc.stdout.strip() if proc.returncode == 0 else "?"

    nodes = kind.nodes()
    server = json.loads(kind.kubectl("version", "-o", "json").stdout).get("serverVersion", {})
    containerd = out(kind.run(["docker", "exec", nodes[0], "containerd", "--version"], check=False)) if nodes else "?"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "podwire": podwire_commit(),
        "kubernetes": f"{server.get('gitVersion', '?')} (e2e.test {build.KUBERNETES_VERSION})",
        "containerd": containerd,
        "cluster": f"kind ({out(kind.kind('version', check=False))}): `kind create cluster --config "
                   f"{CONFIG.relative_to(ROOT)}` on a private dockerd (network namespace {kind.engine.netns}), "
                   f"nodes {', '.join(nodes)}; podwire by packaging/kind-up.sh (DaemonSet: CNI, Service proxy, "
                   "NetworkPolicy), no kube-proxy, CoreDNS as kubeadm installs it; e2e.test in the engine's "
                   "network namespace",
    }


@dataclasses.dataclass(frozen=True)
class KindTarget:
    """What run_shards needs of a cluster, for kind: our binaries, kind's kubeconfig."""
    bin_dir: Path
    kubeconfig: Path


def run_kind(engine: str, focus: str, skip: str, suite: str, *, shards: int = 2, keep: bool = False,
             results: Path | None = RESULTS, extra=(), test_images=tuple(images.TEST_IMAGE_CONFIGS), excluded=(),
             podwire_image: Path | None = None) -> dict:
    """run() on kind: engine + `kind create cluster`, packaging/kind-up.sh, the test images loaded with
    `kind load image-archive`, e2e.test in the engine's network namespace; everything goes afterwards,
    also when a step fails (unless `keep`)."""
    from e2e.kind import KindCluster

    started = time.monotonic()
    bin_dir = build.ensure_built(build.targets_for(conformance=True, kind=True))
    selected, not_run = choose(bin_dir, focus, skip, excluded)
    tarballs = images.e2e_test_images(test_images)
    busybox = next(spec for spec in images.SPECS if spec.name == images.BUSYBOX)
    tarballs[images.BUSYBOX] = images.ensure_image(busybox)
    work = WORK / f"kind-{engine}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"e2e.conformance: logs and reports in {work}", file=sys.stderr, flush=True)
    kind = KindCluster(engine, owner=None if keep else ns.this_process("conformance"))
    try:
        image = podwire_image or build_image(work / "podwire-image.tar")
        kind.up_with_podwire(image)
        kind.load_images([tarballs[n] for n in kind_node_images(test_images)], work)
        wait_coredns(kind)
        stamp = kind_stamp(kind)
        if podwire_image:
            stamp["podwire"] = f"image {podwire_image} (given; the checkout's HEAD was {stamp['podwire']})"
        ready = time.monotonic()
        print(f"e2e.conformance: kind cluster ready in {ready - started:.0f}s ({kind.timings}); running e2e.test",
              file=sys.stderr, flush=True)
        res, groups = run_tests(KindTarget(bin_dir, kind.kubeconfig), selected, shards, work, extra,
                           wrap=kind.engine.in_netns)
        stamp["focus"] = f"`{focus}`" + (f", skip `{skip}`" if skip else "")
        stamp["run time"] = (f"{time.monotonic() - ready:.0f} s e2e.test ({groups} shards), "
                             f"{ready - started:.0f} s setup")
        return summarize(f"podwire: upstream e2e, {suite} on kind", suite, "kind", stamp, res, not_run,
                         results) | {"work": work}
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the teardown short
        finish(kind, keep, f"kind cluster kept (python3 -m e2e.kind down --name {engine}); "
                           f"kubectl: python3 -m e2e.kind kubectl --name {engine} -- get nodes")


if __name__ == "__main__":
    sys.exit(main())
