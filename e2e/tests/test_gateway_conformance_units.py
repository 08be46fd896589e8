"""Pure parts of e2e/gateway_conformance.py: Traefik's objects, the suite's argv, log and report parsing, the summary
(no root, no cluster). Two tests read the cached Go modules and skip when they are absent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from e2e import build, edge
from e2e import gateway_conformance as gc

MODULES = build.cache_root() / "gomodcache"
GATEWAY_API = MODULES / f"sigs.k8s.io/gateway-api@{build.GATEWAY_API_VERSION}"
TRAEFIK = MODULES / f"github.com/traefik/traefik/v3@{build.TRAEFIK_VERSION}"

FEATURES_GO = {
    "pkg/features/gateway.go": 'const (\n\tSupportGateway FeatureName = "Gateway"\n)\n'
                               'const (\n\tSupportGatewayPort8080 FeatureName = "GatewayPort8080"\n)\n',
    "pkg/features/httproute.go": 'const (\n\tSupportHTTPRoute FeatureName = "HTTPRoute"\n\tSupport'
                                 'HTTPRouteQueryParamMatching FeatureName = "HTTPRouteQueryParamMatching"\n)\n',
    "pkg/features/referencegrant.go": 'const SupportReferenceGrant FeatureName = "ReferenceGrant"\n',
    "pkg/features/grpcroute.go": 'const SupportGRPCRoute FeatureName = "GRPCRoute"\n',
}
TESTS_GO = {
    "tests/a.go": """var HTTPRouteSimple = suite.ConformanceTest{
\tShortName:   "HTTPRouteSimple",
\tFeatures: []features.FeatureName{
\t\tfeatures.SupportGateway,
\t\tfeatures.SupportHTTPRoute,
\t},
\tTest: func(t *testing.T, s *suite.ConformanceTestSuite) {
\t\tfoo := []string{"x"}
\t},
}

var HTTPRouteQuery = suite.ConformanceTest{
\tShortName:   "HTTPRouteQuery",
\tFeatures: []features.FeatureName{features.SupportGateway, features.SupportHTTPRoute,
\t\tfeatures.SupportHTTPRouteQueryParamMatching},
\tTest: func(t *testing.T, s *suite.ConformanceTestSuite) {
\t},
}
""",
    "tests/b.go": """var GRPCExact = suite.ConformanceTest{
\tShortName: "GRPCExact",
\tFeatures: []features.FeatureName{features.SupportGateway, features.SupportGRPCRoute},
}
""",
}

LOG = """=== RUN   TestConformance
=== RUN   TestConformance/HTTPRouteSimple
=== RUN   TestConformance/HTTPRouteSimple/sub_one
=== RUN   TestConformance/HTTPRouteQuery
    http.go:276: Response expectation failed for request
        \tError:      timed out waiting for 200
    http.go:280: gave up
=== RUN   TestConformance/GRPCExact
    conformance.go:66: Skipping GRPCExact: suite does not support GRPCRoute
    --- PASS: TestConformance/HTTPRouteSimple/sub_one (1.50s)
    --- PASS: TestConformance/HTTPRouteSimple (12.25s)
    --- FAIL: TestConformance/HTTPRouteQuery (60.00s)
    --- SKIP: TestConformance/GRPCExact (0.00s)
--- FAIL: TestConformance (73.75s)
"""


def _profile(core=(33, 0, 0), ext=(13, 0, 0), failed=(), features=gc.TRAEFIK_EXTENDED) -> dict:
    def status(p, f, s):
        return {"result": "success" if not f else "failure",
                "statistics": {"Passed": p, "Failed": f, "Skipped": s}}
    return {"name": gc.PROFILE, "summary": "x",
            "core": {**status(*core), **({"failedTests": list(failed)} if failed else {})},
            "extended": {**status(*ext), "supportedFeatures": list(features)}}


def test_traefik_objects_are_the_fixtures_configuration():
    objs = gc.traefik_objects()
    kinds = [o["kind"] for o in objs]
    assert "IngressClass" not in kinds and kinds.count("Deployment") == 1 and kinds.count("Service") == 1
    [dep] = [o for o in objs if o["kind"] == "Deployment"]
    [container] = dep["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    for ep, port in {"web": 80, "websecure": 443, "web8080": 8080, "traefik": 9000}.items():
        assert f"--entrypoints.{ep}.address=:{port}" in args
    assert "--providers.kubernetesgateway.experimentalChannel=true" in args
    assert "--providers.kubernetesgateway.statusaddress.service.name=traefik" in args
    assert not [a for a in args if "kubernetesingress" in a or "websecure.http.tls" in a]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    [svc] = [o for o in objs if o["kind"] == "Service"]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert {(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {(80, "web"), (443, "websecure"),
                                                                           (8080, "web8080"), (9000, "traefik")}
    [role] = [o for o in objs if o["kind"] == "ClusterRole"]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"tcproutes", "tlsroutes", "tcproutes/status", "httproutes", "gateways/status"} <= resources
    # edge.py's objects stay as they were (the edge test uses them)
    assert any(o["kind"] == "IngressClass" for o in edge.traefik_objects())
    assert "--entrypoints.web.address=:8000" in edge.traefik_args()


def test_suite_argv():
    argv = gc.suite_argv(Path("/bin/suite"), Path("/w/report.yaml"), timeout_s=1800)
    assert argv[0] == "/bin/suite" and "-test.timeout=1800s" in argv and "-test.run=^TestConformance$" in argv
    assert "--conformance-profiles=GATEWAY-HTTP" in argv and "--report-output=/w/report.yaml" in argv
    assert "--gateway-class=traefik" in argv
    [features] = [a.split("=", 1)[1] for a in argv if a.startswith("--supported-features=")]
    assert set(features.split(",")) == {"Gateway", "HTTPRoute", "ReferenceGrant", *gc.TRAEFIK_EXTENDED}
    assert not [a for a in argv if a.startswith("--skip-tests")]
    with_skip = gc.suite_argv(Path("/b"), Path("/r"), skip=["A", "B"])
    assert "--skip-tests=A,B" in with_skip


def test_skip_for_run():
    names = ["HTTPRouteSimple", "HTTPRouteQuery", "GatewayX"]
    assert gc.skip_for_run(names, None) == []
    assert gc.skip_for_run(names, "^HTTPRoute") == ["GatewayX"]
    assert gc.skip_for_run(names, "Query|Gateway") == ["HTTPRouteSimple"]


def test_features_and_levels_from_go_sources():
    consts = gc.feature_names(FEATURES_GO)
    assert consts["SupportHTTPRouteQueryParamMatching"] == "HTTPRouteQueryParamMatching"
    core, extended = gc.profile_features(FEATURES_GO)
    assert core == {"Gateway", "HTTPRoute", "ReferenceGrant"}
    assert extended == {"GatewayPort8080", "HTTPRouteQueryParamMatching"}  # not GRPCRoute: another profile
    tests = gc.test_features(TESTS_GO, consts)
    assert tests == {"HTTPRouteSimple": {"Gateway", "HTTPRoute"},
                     "HTTPRouteQuery": {"Gateway", "HTTPRoute", "HTTPRouteQueryParamMatching"},
                     "GRPCExact": {"Gateway", "GRPCRoute"}}
    assert gc.level(tests["HTTPRouteSimple"], core, extended) == "core"
    assert gc.level(tests["HTTPRouteQuery"], core, extended) == "extended"
    assert gc.level(tests["GRPCExact"], core, extended) is None


def test_parse_log_and_rows():
    log = gc.parse_log(LOG)
    assert log == {"HTTPRouteSimple": ("passed", 12.25), "HTTPRouteQuery": ("failed", 60.0),
                   "GRPCExact": ("skipped", 0.0)}
    assert gc.skip_reasons(LOG) == {"GRPCExact": "Skipping GRPCExact: suite does not support GRPCRoute"}
    assert gc.failure_reasons(LOG, {"HTTPRouteQuery"}) == {"HTTPRouteQuery": "Error:      timed out waiting for 200"}
    assert gc.failure_reasons(LOG, set()) == {}
    consts = gc.feature_names(FEATURES_GO)
    core, extended = gc.profile_features(FEATURES_GO)
    tests = gc.test_features(TESTS_GO, consts)
    tests["HTTPRouteNeverRan"] = {"Gateway"}
    rows = gc.rows(log, tests, core, extended, {"Gateway", "HTTPRoute", "ReferenceGrant",
                                                "HTTPRouteQueryParamMatching"})
    assert [(r.name, r.level, r.state) for r in rows] == [
        ("HTTPRouteNeverRan", "core", "no result"), ("HTTPRouteQuery", "extended", "failed"),
        ("HTTPRouteSimple", "core", "passed")]
    # a feature not claimed: the test is not counted (the suite does not run it)
    assert [r.name for r in gc.rows(log, tests, core, extended, {"Gateway", "HTTPRoute"})] == [
        "HTTPRouteNeverRan", "HTTPRouteSimple"]


def test_differences_and_markdown():
    published = _profile()
    assert gc.differences(_profile(), published) == []
    ours = _profile(core=(32, 1, 0), failed=["HTTPRouteQuery"])
    diffs = gc.differences(ours, published)
    assert any(d.startswith("core: ours") for d in diffs)
    assert any("core failed tests: ours ['HTTPRouteQuery'], published []" == d for d in diffs)
    assert gc.differences(_profile(features=gc.TRAEFIK_EXTENDED[1:]), published)[0].startswith("extended supported")
    fewer = _profile()
    fewer["extended"]["unsupportedFeatures"] = ["HTTPRouteCORS"]
    assert gc.differences(fewer, published) == ["extended unsupportedFeatures: ours ['HTTPRouteCORS'], published []"]
    report = {"profiles": [{"name": "GATEWAY-GRPC"}, ours]}
    assert gc.profile_report(report) is ours and gc.profile_report({}) == {}
    table = [gc.Row("HTTPRouteQuery", "core", "failed", 60.0, "timed out"),
             gc.Row("HTTPRouteSimple", "core", "passed", 12.3)]
    md = gc.render_markdown({"podwire": "abc123"}, table, ours, published, "traefik report")
    assert "- podwire: abc123" in md
    assert "| core | 32 | 1 | 0 | 33 passed, 0 failed, 0 skipped |" in md
    assert "- FAILED `HTTPRouteQuery` (60.0 s) — timed out" in md and "- PASSED `HTTPRouteSimple` (12.3 s)" in md
    assert "## core tests by name (1 passed, 1 failed)" in md
    assert "none: same statistics" in gc.render_markdown({}, [], published, published, "x")


@pytest.mark.skipif(not GATEWAY_API.is_dir(), reason="gateway-api module not in the cache (make edge-images)")
def test_real_module_gives_traefiks_published_counts():
    """The v1.4.0 suite's GATEWAY-HTTP tests with Traefik's claims: 33 core and 13 extended, as its report counts."""
    def sources(rel):
        return {str(p): p.read_text() for p in (GATEWAY_API / rel).glob("*.go") if not p.name.endswith("_test.go")}
    core, extended = gc.profile_features(sources("pkg/features"))
    tests = gc.test_features(sources("conformance/tests"), gc.feature_names(sources("pkg/features")))
    rows = gc.rows({}, tests, core, extended, set(gc.supported_features()))
    assert (sum(r.level == "core" for r in rows), sum(r.level == "extended" for r in rows)) == (33, 13)
    assert set(gc.TRAEFIK_EXTENDED) <= extended


@pytest.mark.skipif(not TRAEFIK.is_dir(), reason="traefik module not in the cache (make edge-images)")
def test_traefik_claims_match_its_source_and_report():
    text = (TRAEFIK / "pkg/provider/kubernetes/gateway/features.go").read_text()
    extended_funcs = text[text.index("func extendedGatewayFeatures"):]
    claimed = {m for m in re.findall(r"features\.(\w+)Feature\b", extended_funcs)}
    assert claimed == set(gc.TRAEFIK_EXTENDED)
    published = gc.profile_report(yaml.safe_load((TRAEFIK / gc.PUBLISHED_REPORT).read_text()))
    assert sorted(published["extended"]["supportedFeatures"]) == sorted(gc.TRAEFIK_EXTENDED)
