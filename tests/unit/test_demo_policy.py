"""e2e/demo.py's NetworkPolicy example says what the demo claims, checked without a cluster: its
manifests parse, the policy's port is the backend's port, and podwire's own verdict() (the API
semantics) allows frontend -> backend and denies other -> backend. The live check is `make demo`."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from e2e import demo
from policy.from_api import namespace_from_api, pod_from_api, policy_from_api
from policy.model import Cluster
from policy.verdict import verdict

APP = list(yaml.safe_load_all(demo.POLICY_APP % {"image": "busybox"}))
POLICY = yaml.safe_load(demo.POLICY)


def by_kind(kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in APP if o["kind"] == kind}


def running(name: str, labels: dict, ip: str, node: str) -> dict:
    return {"metadata": {"namespace": demo.POLICY_NS, "name": name, "uid": name, "labels": labels},
            "spec": {"nodeName": node}, "status": {"phase": "Running", "podIP": ip}}


def demo_cluster() -> tuple[Cluster, dict]:
    backend = by_kind("Deployment")["backend"]["spec"]["template"]
    pods = {"backend": running("backend-7d9-x", backend["metadata"]["labels"], "10.244.1.5", "node1")}
    for i, (name, pod) in enumerate(sorted(by_kind("Pod").items())):
        pods[name] = running(name, pod["metadata"]["labels"], f"10.244.2.{i + 5}", "node2")
    c = Cluster.build(pods=[pod_from_api(p) for p in pods.values()],
                      namespaces=[namespace_from_api(by_kind("Namespace")[demo.POLICY_NS])],
                      policies=[policy_from_api(POLICY)])
    return c, {str(p.name).split("-")[0]: p for p in c.pods}


def test_the_manifests_are_the_namespace_backend_service_and_two_clients():
    assert sorted((o["kind"], o["metadata"]["name"]) for o in APP) == [
        ("Deployment", "backend"), ("Namespace", demo.POLICY_NS), ("Pod", "frontend"), ("Pod", "other"),
        ("Service", "backend")]
    assert all(o["metadata"].get("namespace", demo.POLICY_NS) == demo.POLICY_NS for o in APP + [POLICY])


def test_the_policy_opens_the_port_the_backend_serves_and_the_service_targets():
    container = by_kind("Deployment")["backend"]["spec"]["template"]["spec"]["containers"][0]
    served = {p["containerPort"] for p in container["ports"]}
    target = {p["targetPort"] for p in by_kind("Service")["backend"]["spec"]["ports"]}
    opened = {p["port"] for rule in POLICY["spec"]["ingress"] for p in rule["ports"]}
    assert served == target == opened == {8080}
    assert "-p 8080" in container["command"][-1]


def test_verdict_allows_frontend_and_denies_other_to_backend():
    c, pods = demo_cluster()
    allowed = verdict(c, pods["frontend"], pods["backend"], 8080)
    assert allowed.allowed, allowed.because
    denied = verdict(c, pods["other"], pods["backend"], 8080)
    assert not denied.allowed and denied.policies == ((demo.POLICY_NS, "backend-allow-frontend"),), denied
    assert not verdict(c, pods["frontend"], pods["backend"], 80).allowed  # only the backend's port
    assert verdict(c, pods["backend"], pods["other"], 8080).allowed  # Ingress only: others stay open


@pytest.mark.parametrize("arg", [
    "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 10.96.0.7 80 | tail -1",  # the demo's probe
    "it's $HOME", 'say "hi"', "a\\\\'b", "plain", "jsonpath={.spec.clusterIP}", "back\\'", "",
])
def test_the_printed_commands_are_what_bash_reads_back(arg):
    line = " ".join(map(demo.shell_word, ["-n", "demo-policy", "exec", "other", "--", "sh", "-c", arg]))
    out = subprocess.run(["bash", "--norc", "-c", f"printf '%s\\0' {line}"], capture_output=True, text=True,
                         check=True).stdout
    assert out.split("\0")[:-1] == ["-n", "demo-policy", "exec", "other", "--", "sh", "-c", arg]
    if arg.startswith("printf"):
        assert line.endswith(f'"{arg}"')  # readable: no '"'"' splices
