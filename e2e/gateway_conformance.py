"""Gateway API conformance (GATEWAY-HTTP profile, gateway-api v1.4.0) of Traefik behind a podwire LoadBalancer.

    python3 -m e2e.gateway_conformance [--keep] [--run REGEX] [--name gwc] [--timeout SECONDS]

Brings up a routed 2-node harness cluster with podwire installed (e2e/edge.py's way), a LoadBalancerPool on the
outside host's subnet, the Gateway API v1.4.0 *experimental* CRDs and Traefik v3.6.12 configured as Traefik's own
conformance run configures it (integration/fixtures/gateway-api-conformance/02-traefik.yml: entrypoints web :80,
websecure :443, web8080 :8080, traefik :9000, `--providers.kubernetesgateway.experimentalChannel`, statusaddress
from its `type: LoadBalancer` Service), then runs the suite's binary (`go test -c` of
sigs.k8s.io/gateway-api/conformance) in the outside host's network namespace with the features Traefik claims for
this profile. The suite sends its requests to the Gateway's status.addresses, which Traefik copies from its
Service, which podwire's LoadBalancer filled: outside host -> podwire LB address -> Traefik -> echo-basic pods.

Writes e2e/results/gateway-http-<UTC>.md (per test: passed / failed / skipped, core or extended, Traefik's
published result beside it) and the suite's report as gateway-http-<UTC>.report.yaml.

Why it is built so:
* Traefik's conformance test (integration/gateway_api_conformance_test.go) calls the suite as a library with
  profiles HTTP, GRPC and TLS and `gateway.SupportedFeatures()`; the suite runs every test whose features are
  all supported, whatever the profiles. Passing only the GATEWAY-HTTP share of Traefik's claims (core + the 12
  extended features its report names) runs that profile's tests and nothing of GRPC/TLS/BackendTLSPolicy.
* `--run` must not become go test's `-test.run`: the suite records a subtest that go filtered out as
  succeeded (suite.Run takes t.Run's `true`). It becomes `--skip-tests` with every other test instead, so the
  report counts them as skipped.
* Names of passed tests are only in the test log (`--- PASS: TestConformance/<name>`); whether a test is core
  or extended for the profile is read from its Features in the module's conformance/tests/*.go, by the rule
  the suite's report applies (reports.go isTestExtended).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from e2e import build, edge, edge_images
from e2e import netns as ns
from e2e.demo import lb_range

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(os.environ.get("PODWIRE_GATEWAY_WORK", "/tmp/podwire-gateway-conformance"))
PROFILE = "GATEWAY-HTTP"
TEST = "TestConformance"  # conformance/conformance_test.go

# Traefik's entrypoints in its conformance fixture: a Gateway listener binds the entrypoint whose port is the
# listener's (80 HTTP, 443 HTTPS, 8080 for the GatewayPort8080 tests); the Service publishes each on the same port.
ENTRYPOINTS = {"web": 80, "websecure": 443, "web8080": 8080, "traefik": 9000}

# The profile's core features (conformance/utils/suite/profiles.go GatewayHTTPConformanceProfile).
CORE = ("Gateway", "HTTPRoute", "ReferenceGrant")
# What Traefik v3.6.12 claims of the profile's extended features (pkg/provider/kubernetes/gateway/features.go:
# extendedGatewayFeatures, extendedHTTPRouteFeatures); the unit test re-reads that file when it is cached.
TRAEFIK_EXTENDED = (
    "GatewayPort8080",
    "HTTPRouteBackendProtocolH2C", "HTTPRouteBackendProtocolWebSocket", "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite", "HTTPRouteMethodMatching", "HTTPRoutePathRedirect", "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect", "HTTPRouteQueryParamMatching", "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
)
# Traefik's own report for v3.6 against gateway-api v1.4.0 (also in kubernetes-sigs/gateway-api
# conformance/reports/v1.4.0/traefik-traefik/), inside its module.
PUBLISHED_REPORT = "integration/gateway-api-conformance-reports/v1.4.0/experimental-v3.6-default-report.yaml"


# -- Traefik as its conformance fixture has it (pure) ---------------------------------------------

def traefik_args() -> list[str]:
    """02-traefik.yml's args; INFO instead of DEBUG (the log is read only when something fails), `--ping` for the
    readiness probe edge.py's Deployment has, no version check or usage report (no internet here)."""
    ns_, name = edge.TRAEFIK_NS, edge.TRAEFIK
    return [f"--entrypoints.{ep}.address=:{port}" for ep, port in ENTRYPOINTS.items()] + [
        "--log.level=INFO", "--api.insecure", "--ping=true",
        "--providers.kubernetesgateway=true",
        "--providers.kubernetesgateway.experimentalChannel=true",
        f"--providers.kubernetesgateway.statusaddress.service.namespace={ns_}",
        f"--providers.kubernetesgateway.statusaddress.service.name={name}",
        "--global.checknewversion=false", "--global.sendanonymoususage=false",
    ]


def rbac_rules() -> list[dict]:
    """edge.py's rules and the experimental channel's TCPRoute and TLSRoute, which Traefik watches with
    experimentalChannel (pkg/provider/kubernetes/gateway/client.go) and its fixture's 01-rbac.yml grants."""
    experimental = edge._rule(["gateway.networking.k8s.io"], ["tcproutes", "tlsroutes"], edge.WATCH)
    status = edge._rule(["gateway.networking.k8s.io"], ["tcproutes/status", "tlsroutes/status"], ["update"])
    return [*edge.rbac_rules(), experimental, status]


def traefik_objects(image: str = edge_images.TRAEFIK) -> list[dict]:
    """edge.traefik_objects() changed to the fixture's configuration: its args, entrypoints and Service ports,
    no IngressClass (no Ingress provider), and uid 0 with only NET_BIND_SERVICE (ports 80 and 443; the fixture
    runs as root with every default capability)."""
    out = []
    for obj in copy.deepcopy(edge.traefik_objects(image)):
        kind = obj["kind"]
        if kind == "IngressClass":
            continue
        if kind == "ClusterRole":
            obj["rules"] = rbac_rules()
        elif kind == "Deployment":
            [container] = obj["spec"]["template"]["spec"]["containers"]
            container["args"] = traefik_args()
            container["ports"] = [{"name": ep, "containerPort": port} for ep, port in ENTRYPOINTS.items()]
            container["securityContext"] = {
                "runAsUser": 0, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}
        elif kind == "Service":
            obj["spec"]["ports"] = [{"name": ep, "port": port, "targetPort": ep, "protocol": "TCP"}
                                    for ep, port in ENTRYPOINTS.items()]
        out.append(obj)
    return out


# -- the suite's command line (pure) ----------------------------------------------------------------

def supported_features() -> list[str]:
    return sorted({*CORE, *TRAEFIK_EXTENDED})


def skip_for_run(names: list[str], regex: str | None) -> list[str]:
    """The tests --run REGEX leaves out (Python re, searched in the short name); none without a regex."""
    if not regex:
        return []
    rx = re.compile(regex)
    return sorted(n for n in names if not rx.search(n))


def suite_argv(binary: Path, report: Path, *, skip: list[str] | None = None, timeout_s: int = 3600) -> list[str]:
    """The conformance binary's arguments (flags: conformance/utils/flags/flags.go). -test.timeout: a test
    binary stops itself after 10 min by default, shorter than the suite."""
    argv = [str(binary), "-test.v", f"-test.run=^{TEST}$", f"-test.timeout={timeout_s}s",
            "--gateway-class=traefik", f"--conformance-profiles={PROFILE}",
            f"--supported-features={','.join(supported_features())}",
            f"--report-output={report}",
            "--organization=traefik", "--project=traefik", "--url=https://traefik.io/",
            f"--version={build.TRAEFIK_VERSION}", "--contact=@traefik/maintainers",
            "--cleanup-base-resources=true", "--allow-crds-mismatch=false"]
    if skip:
        argv.append(f"--skip-tests={','.join(skip)}")
    return argv


# -- the module's tests and their features (pure) ---------------------------------------------------

_FEATURE_CONST = re.compile(r'\b(Support\w+)\s+FeatureName\s*=\s*"(\w+)"')
_TEST_DECL = re.compile(r'ShortName:\s*"(\w+)"(.*?)\n\}', re.S)
_FEATURES = re.compile(r"Features:\s*\[\]features\.FeatureName\{(.*?)\}", re.S)


def feature_names(sources: dict[str, str]) -> dict[str, str]:
    """`SupportX` constant -> feature name, from pkg/features/*.go texts (file name -> text)."""
    return {const: name for text in sources.values() for const, name in _FEATURE_CONST.findall(text)}


def profile_features(sources: dict[str, str]) -> tuple[set[str], set[str]]:
    """GATEWAY-HTTP's (core, extended) feature names: core as profiles.go lists it, extended = every feature
    declared in pkg/features/gateway.go and httproute.go besides core (GatewayExtendedFeatures,
    HTTPRouteExtendedFeatures)."""
    extended = {name for file, text in sources.items() if Path(file).name in ("gateway.go", "httproute.go")
                for _, name in _FEATURE_CONST.findall(text)}
    return set(CORE), extended - set(CORE)


def test_features(sources: dict[str, str], consts: dict[str, str]) -> dict[str, set[str]]:
    """Test short name -> feature names, from conformance/tests/*.go texts."""
    out = {}
    for text in sources.values():
        for name, body in _TEST_DECL.findall(text):
            m = _FEATURES.search(body)
            used = re.findall(r"features\.(\w+)", m.group(1)) if m else []
            out[name] = {consts.get(c, c) for c in used}
    return out


def level(features: set[str], core: set[str], extended: set[str]) -> str | None:
    """"core" / "extended" for the profile, None when the test is not in it (suite: getConformanceProfilesFor
    Test, isTestExtended)."""
    if not features <= core | extended:
        return None
    return "core" if features <= core else "extended"


_RESULT = re.compile(rf"^\s*--- (PASS|FAIL|SKIP): {TEST}/(\w+) \(([\d.]+)s\)", re.M)


def parse_log(text: str) -> dict[str, tuple[str, float]]:
    """Top-level subtests of TestConformance from `-test.v` output: name -> (passed|failed|skipped, seconds).
    Nested subtests (`TestConformance/X/y`) are left out: \\w+ stops at the slash and the line must end there."""
    states = {"PASS": "passed", "FAIL": "failed", "SKIP": "skipped"}
    out = {}
    for m in _RESULT.finditer(text):
        out[m.group(2)] = (states[m.group(1)], float(m.group(3)))
    return out


# the suite's t.Skip line, logged under `=== RUN` (the `--- SKIP` lines come together at the end)
_SKIP_REASON = re.compile(r"^\s+\S+\.go:\d+: (Skipping (\w+): .+)$", re.M)


def skip_reasons(text: str) -> dict[str, str]:
    return {m.group(2): m.group(1).strip() for m in _SKIP_REASON.finditer(text)}


_RUN = re.compile(rf"^=== RUN\s+{TEST}/(\w+)(/\S*)?$", re.M)


def failure_reasons(text: str, failed: set[str]) -> dict[str, str]:
    """For each failed test, the last `Error:` line (testify) logged between its `=== RUN` and the next test's,
    else its last log line."""
    out = {}
    marks = [(m.start(), m.group(1)) for m in _RUN.finditer(text)]
    for i, (start, name) in enumerate(marks):
        if name not in failed:
            continue
        end = next((pos for pos, other in marks[i + 1:] if other != name), len(text))
        lines = [ln.strip() for ln in text[start:end].splitlines()[1:] if ln.strip() and not ln.startswith("===")]
        errors = [ln for ln in lines if "Error:" in ln]
        if errors or lines:
            out[name] = (errors or lines)[-1]
    return out


def profile_report(report: dict, profile: str = PROFILE) -> dict:
    for p in report.get("profiles") or []:
        if p.get("name") == profile:
            return p
    return {}


def statistics(status: dict | None) -> dict[str, int]:
    stats = (status or {}).get("statistics") or {}
    return {k: int(stats.get(k, 0)) for k in ("Passed", "Failed", "Skipped")}


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    level: str  # core | extended
    state: str  # passed | failed | skipped | no result
    seconds: float
    why: str = ""


def rows(log: dict[str, tuple[str, float]], features: dict[str, set[str]], core: set[str], extended: set[str],
         supported: set[str], reasons: dict[str, str] | None = None) -> list[Row]:
    """The profile's tests that the supported features select (the others never run: not supported)."""
    out = []
    for name in sorted(features):
        lvl = level(features[name], core, extended)
        if lvl is None or not features[name] <= supported:
            continue
        state, secs = log.get(name, ("no result", 0.0))
        out.append(Row(name, lvl, state, secs, (reasons or {}).get(name, "")))
    return out


def differences(ours: dict, published: dict) -> list[str]:
    """Where our profile report and the published one differ: statistics per level, supported features."""
    out = []
    for lvl in ("core", "extended"):
        a, b = statistics(ours.get(lvl)), statistics(published.get(lvl))
        if a != b:
            out.append(f"{lvl}: ours {a}, published {b}")
        fa, fb = (ours.get(lvl) or {}).get("failedTests") or [], (published.get(lvl) or {}).get("failedTests") or []
        if sorted(fa) != sorted(fb):
            out.append(f"{lvl} failed tests: ours {sorted(fa)}, published {sorted(fb)}")
    for key in ("supportedFeatures", "unsupportedFeatures"):
        sa = sorted((ours.get("extended") or {}).get(key) or [])
        sb = sorted((published.get("extended") or {}).get(key) or [])
        if sa != sb:
            out.append(f"extended {key}: ours {sa}, published {sb}")
    return out


def render_markdown(stamp: dict, table: list[Row], ours: dict, published: dict, published_from: str) -> str:
    lines = ["# podwire: Gateway API conformance, GATEWAY-HTTP, Traefik behind a podwire LoadBalancer", ""]
    lines += [f"- {k}: {v}" for k, v in stamp.items()]
    lines += ["", "## Tally (the suite's report)", "", "| level | passed | failed | skipped | published (Traefik) |",
              "|---|---|---|---|---|"]
    for lvl in ("core", "extended"):
        a, b = statistics(ours.get(lvl)), statistics(published.get(lvl))
        lines.append(f"| {lvl} | {a['Passed']} | {a['Failed']} | {a['Skipped']} | "
                     f"{b['Passed']} passed, {b['Failed']} failed, {b['Skipped']} skipped |")
    lines += ["", f"Suite summary: {ours.get('summary', '(no report)')}",
              f"Published summary: {published.get('summary', '?')} ({published_from})", ""]
    diffs = differences(ours, published)
    lines += ["## Differences with the published report", ""]
    lines += [f"- {d}" for d in diffs] if diffs else ["- none: same statistics and features as Traefik publishes"]
    lines.append("")
    for lvl in ("core", "extended"):
        part = [r for r in table if r.level == lvl]
        c = {s: sum(r.state == s for r in part) for s in ("passed", "failed", "skipped", "no result")}
        lines += [f"## {lvl} tests by name ({', '.join(f'{n} {s}' for s, n in c.items() if n)})", ""]
        for r in part:
            line = f"- {r.state.upper()} `{r.name}` ({r.seconds:.1f} s)"
            if r.why and r.state != "passed":
                line += f" — {r.why[:300]}"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


# -- on a cluster -----------------------------------------------------------------------------------

def module_sources(relative: str) -> dict[str, str]:
    d = build.module_dir(build.GATEWAY_API) / relative
    return {str(p): p.read_text() for p in sorted(d.glob("*.go")) if not p.name.endswith("_test.go")}


def published_report() -> tuple[dict, str]:
    path = build.module_dir(build.TRAEFIK) / PUBLISHED_REPORT
    return profile_report(yaml.safe_load(path.read_text())), f"traefik {build.TRAEFIK_VERSION} {PUBLISHED_REPORT}"


class Conformance(edge.Edge):
    """Traefik (conformance configuration) on a cluster with podwire, and the suite from the outside host."""

    def install_as_traefiks_fixture(self) -> None:
        # experimental CRDs: Traefik's fixture installs them (00-experimental-v1.4.0.yml) and runs experimentalChannel;
        # the suite's base manifests also start a CoreDNS Deployment (their UDP backend)
        self.install(channel="experimental", objects=traefik_objects(),
                     images=(edge_images.TRAEFIK, edge_images.ECHO_BASIC, edge_images.CONFORMANCE_COREDNS))

    def api_entrypoints(self) -> str:
        """Traefik's entrypoints through the LB address (its conformance test waits for this before the suite)."""
        r = self.outside("curl", "-sS", "-m", "5", f"http://{self.address}:{ENTRYPOINTS['traefik']}/api/entrypoints")
        return r.stdout if r.returncode == 0 else ""

    def path_evidence(self) -> str:
        """Which node answered the outside host's ARP for the address, and where Traefik runs: the packet path
        the suite's requests took (outside host -> that node -> Traefik's pod)."""
        def mac(host) -> str:
            r = host.run(["ip", "-j", "neigh", "show", self.address] if host is self.c.topology.outside
                         else ["ip", "-j", "link", "show", "eth0"], check=False)
            entries = json.loads(r.stdout or "[]") if r.returncode == 0 else []
            return next((e.get("lladdr") or e.get("address") or "" for e in entries), "")
        seen = mac(self.c.topology.outside)
        answering = [n.name for n in self.c.nodes if seen and mac(n) == seen]
        pod = self.kubectl("-n", edge.TRAEFIK_NS, "get", "pods", "-l", "app.kubernetes.io/name=traefik", "-o",
                           "jsonpath={.items[*].spec.nodeName}").strip()
        return (f"the outside host's neighbour entry for {self.address}: {seen or 'none'}"
                f" ({', '.join(answering) or 'no node'}'s eth0); Traefik's pod on {pod or '?'}")

    def run_suite(self, work: Path, skip: list[str], timeout_s: int) -> tuple[subprocess.CompletedProcess, Path]:
        from e2e.conformance import outside_kubeconfig

        kubeconfig = outside_kubeconfig(self.c, work / "outside.kubeconfig")
        report = work / "report.yaml"
        argv = self.c.topology.outside.argv(suite_argv(edge_images.conformance_binary(), report, skip=skip,
                                                       timeout_s=timeout_s))
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        (work / "command.txt").write_text(" ".join(argv) + "\n")
        with open(work / "suite.log", "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
            try:
                rc = proc.wait(timeout=timeout_s + 120)
            except BaseException:  # interrupted or over time: nothing of ours outlives the run
                proc.kill()
                proc.wait()
                raise
        return subprocess.CompletedProcess(argv, rc), report


def stamp_for(cluster, conf: Conformance, started: float) -> dict:
    from e2e.conformance import versions

    v = versions(cluster)
    return {
        "date": v["date"], "podwire": v["podwire"], "kubernetes": v["kubernetes"], "containerd": v["containerd"],
        "cluster": f"harness, routed, {len(cluster.nodes)} full nodes, podwire DaemonSet (CNI, Service proxy, "
                   "NetworkPolicy, LoadBalancer), no kube-proxy",
        "Traefik": f"{build.TRAEFIK_VERSION} (built from its module), args as integration/fixtures/"
                   "gateway-api-conformance/02-traefik.yml (see e2e/gateway_conformance.py traefik_args)",
        "Gateway API": f"{build.GATEWAY_API_VERSION}, experimental CRDs; suite = `go test -c` of "
                       "sigs.k8s.io/gateway-api/conformance",
        "address": f"{conf.address} (podwire LoadBalancer, pool {lb_range(cluster)} on the outside host's "
                   f"subnet); suite run in the outside host {cluster.topology.outside.ip}",
        "supported features": ", ".join(supported_features()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m e2e.gateway_conformance", description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="gwc", help="cluster name (default gwc)")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--run", metavar="REGEX", help="only the tests whose short name matches (the rest: skipped)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds the suite may take (default 3600)")
    ap.add_argument("--podwire-image", type=Path, help="podwire's image tarball made earlier (make image)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("e2e.gateway_conformance: needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        re.compile(args.run or "")
    except re.error as e:
        print(f"e2e.gateway_conformance: --run: {e}", file=sys.stderr)
        return 2
    from e2e.cluster import Cluster
    from e2e.podwire_install import build_image, diagnostics, install

    started = time.monotonic()
    consts = feature_names(module_sources("pkg/features"))
    core, extended = profile_features(module_sources("pkg/features"))
    features = test_features(module_sources("conformance/tests"), consts)
    skip = skip_for_run(sorted(features), args.run)
    work = WORK / f"{args.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"e2e.gateway_conformance: logs and report in {work}", flush=True)
    cluster = Cluster(args.name, "routed", 2, full_nodes=True,
                      owner=None if args.keep else ns.this_process("gateway-conformance"))
    rc = 1
    with tempfile.TemporaryDirectory(prefix="podwire-gwc-") as tmp:
        conf = Conformance(cluster, Path(tmp))
        try:
            image = args.podwire_image or conf.timed("podwire image", lambda: build_image(work / "podwire-image.tar"))
            conf.timed("cluster up", cluster.up)
            conf.timed("podwire install", lambda: install(cluster, image))
            conf.timed("Traefik install", conf.install_as_traefiks_fixture)
            print(f"e2e.gateway_conformance: Traefik ready at {conf.address}; entrypoints from outside: "
                  f"{conf.api_entrypoints()[:300]}", flush=True)
            stamp = stamp_for(cluster, conf, started)
            if args.podwire_image:
                stamp["podwire"] = f"image {args.podwire_image} (given; the checkout's HEAD was {stamp['podwire']})"
            ready = time.monotonic()
            print("e2e.gateway_conformance: running the suite, log " + str(work / "suite.log"), flush=True)
            proc, report_path = conf.timed("suite", lambda: conf.run_suite(work, skip, args.timeout))
            stamp["packet path"] = conf.path_evidence()
            log_text = (work / "suite.log").read_text(errors="replace")
            report = yaml.safe_load(report_path.read_text()) if report_path.exists() else {}
            ours = profile_report(report)
            published, published_from = published_report()
            outcome = parse_log(log_text)
            failed = {n for n, (state, _) in outcome.items() if state == "failed"}
            table = rows(outcome, features, core, extended, set(supported_features()),
                         {**skip_reasons(log_text), **failure_reasons(log_text, failed)})
            stamp["command"] = f"`python3 -m e2e.gateway_conformance{' --run ' + args.run if args.run else ''}`"
            stamp["suite exit"] = str(proc.returncode)
            stamp["wall time"] = (f"{time.monotonic() - started:.0f} s ({ready - started:.0f} s setup, "
                                  f"{time.monotonic() - ready:.0f} s suite); timings {json.dumps(conf.timings)}")
            md = render_markdown(stamp, table, ours, published, published_from)
            args.results.mkdir(parents=True, exist_ok=True)
            base = args.results / f"gateway-http-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}"
            base.with_suffix(".md").write_text(md)
            if report_path.exists():
                Path(f"{base}.report.yaml").write_text(report_path.read_text())
            print(md)
            print(f"e2e.gateway_conformance: wrote {base}.md" + (" and .report.yaml" if report_path.exists() else ""))
            rc = 0 if proc.returncode == 0 and not statistics(ours.get("core"))["Failed"] else 1
            if rc:
                (work / "traefik.log").write_text(conf.traefik_logs())
        except Exception as e:  # noqa: BLE001 - report what broke, then tear down
            print(f"e2e.gateway_conformance: FAILED: {str(e)[:3000]}\n{diagnostics(cluster)[-3000:]}", flush=True)
            print(conf.traefik_logs()[-3000:])
        finally:
            cluster.keep_or_down(args.keep)
    return rc


if __name__ == "__main__":
    sys.exit(main())
