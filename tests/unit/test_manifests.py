"""manifests/ and the kind path, checked without a cluster.

- every object parses and matches the Kubernetes schema of the official client's models (types by
  pydantic, unknown fields by a strict walk: from_dict alone silently drops a misspelt key);
- RBAC grants exactly what node_daemon/ and proxy/ call, found by reading their sources, so a new
  API call without a rule (or a rule nobody uses) fails here;
- the DaemonSet mounts and probes what the daemon's config (the ConfigMap) says;
- the kind config, the Dockerfile's COPY sources and the scripts' syntax.
Server-side validation against a real API server: tests/integration/test_image_manifests.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import typing

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(ROOT, "manifests", "podwire.yaml")
KIND_CONFIG = os.path.join(ROOT, "manifests", "kind-config.yaml")
IMAGE = "docker.io/podwire/podwire:dev"


def load(path=MANIFEST) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


@pytest.fixture(scope="module")
def objs() -> dict[str, dict]:
    return {d["kind"]: d for d in load()}


def containers(ds: dict, init: bool = False) -> dict[str, dict]:
    spec = ds["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["initContainers" if init else "containers"]}


# ---- parse and schema -------------------------------------------------------------------------
EXPECTED = {
    "Namespace": "v1", "ServiceAccount": "v1", "ConfigMap": "v1", "DaemonSet": "apps/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1", "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1", "RoleBinding": "rbac.authorization.k8s.io/v1",
    "CustomResourceDefinition": "apiextensions.k8s.io/v1",
}


def test_every_object_has_the_expected_kind_and_api_version():
    docs = load()
    assert sorted(d["kind"] for d in docs) == sorted(EXPECTED)
    for d in docs:
        assert d["apiVersion"] == EXPECTED[d["kind"]], d["kind"]
        namespaced = d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition")
        assert (d["metadata"].get("namespace") == "podwire") == namespaced, d["kind"]


def strict_errors(model, data, path="") -> list[str]:
    """Keys the model does not know, recursively; then the model itself validates the types."""
    from pydantic import BaseModel

    errors: list[str] = []
    if model.__name__ == "V1JSONSchemaProps":  # a CRD's schema: free-form here, the API server checks it
        return errors
    fields = {wire: python for python, wire in model.attribute_map.items()}  # JSON name -> attribute
    for key, value in data.items():
        if key not in fields:
            errors.append(f"{path}{key}: unknown field of {model.__name__}")
            continue
        # the client names Python keywords and BaseModel attributes var_* ("schema": var_schema)
        field = model.model_fields.get(fields[key]) or model.model_fields["var_" + fields[key]]
        annotation = field.annotation
        inner = [a for a in _flatten(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, dict):
                where = f"{path}{key}[{i}]." if isinstance(value, list) else f"{path}{key}."
                errors += strict_errors(inner[0], item, where)
    return errors


def _flatten(annotation):
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    return [x for a in args for x in _flatten(a)]


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_objects_match_the_kubernetes_schema(objs, kind):
    from kubernetes import client

    model = getattr(client, "V1" + kind)
    assert strict_errors(model, objs[kind]) == []
    model.from_dict(objs[kind])  # pydantic: types, enums of nested models


def test_the_schema_check_can_fail(objs):
    ds = json.loads(json.dumps(objs["DaemonSet"]))
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] = {}
    from kubernetes import client

    errors = strict_errors(client.V1DaemonSet, ds)
    assert len(errors) == 2 and "hostNetwrk" in errors[0] + errors[1]


# ---- RBAC ---------------------------------------------------------------------------------------
# client method -> the (apiGroup, resource, verbs) it needs. A list method goes to an Informer, which
# lists and then watches.
API_CALLS = {
    "list_node": ("", "nodes", {"list", "watch"}),
    "patch_node": ("", "nodes", {"patch"}),
    "patch_node_status": ("", "nodes/status", {"patch"}),
    "list_service_for_all_namespaces": ("", "services", {"list", "watch"}),
    "list_endpoint_slice_for_all_namespaces": ("discovery.k8s.io", "endpointslices", {"list", "watch"}),
    "list_pod_for_all_namespaces": ("", "pods", {"list", "watch"}),
    "list_namespaced_pod": ("", "pods", {"list"}),
    "list_namespace": ("", "namespaces", {"list", "watch"}),
    "list_network_policy_for_all_namespaces": ("networking.k8s.io", "networkpolicies", {"list", "watch"}),
    "patch_namespaced_service": ("", "services", {"patch"}),
    "replace_namespaced_service_status": ("", "services/status", {"update"}),
    "create_namespaced_event": ("", "events", {"create"}),
    "list_cluster_custom_object": ("podwire.io", "loadbalancerpools", {"list", "watch"}),
    "replace_cluster_custom_object_status": ("podwire.io", "loadbalancerpools/status", {"update"}),
    "list_service_cidr": ("networking.k8s.io", "servicecidrs", {"list", "watch"}),
}
# ... and in the daemon's own namespace (the Role): the LoadBalancer's Leases
NAMESPACED_CALLS = {
    "list_namespaced_lease": ("coordination.k8s.io", "leases", {"list", "watch"}),
    "read_namespaced_lease": ("coordination.k8s.io", "leases", {"get"}),
    "create_namespaced_lease": ("coordination.k8s.io", "leases", {"create"}),
    "replace_namespaced_lease": ("coordination.k8s.io", "leases", {"update"}),
}
CALL = re.compile(r"\b(?:core|discovery|net|coord|custom|self\.(?:api|core|custom)|api|core_v1"
                  r"|client\.\w+Api\([^)]*\))\."
                  r"((?:list|watch|read|get|create|patch|replace|delete)_\w+)")


def api_calls_in_sources() -> set[str]:
    found = set()
    for package in ("node_daemon", "proxy", "policy", "loadbalancer"):
        for base, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(base, name)) as f:
                        found |= set(CALL.findall(f.read()))
    return found


def _grants(role: dict) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_rbac_grants_exactly_what_the_daemon_and_proxy_call(objs):
    calls = api_calls_in_sources()
    unknown = calls - set(API_CALLS) - set(NAMESPACED_CALLS)
    assert not unknown, f"new API calls {unknown}: add them to API_CALLS and the ClusterRole"
    for table, role in ((API_CALLS, objs["ClusterRole"]), (NAMESPACED_CALLS, objs["Role"])):
        needed: dict[tuple[str, str], set[str]] = {}
        for call in calls & set(table):
            group, resource, verbs = table[call]
            needed.setdefault((group, resource), set()).update(verbs)
        assert _grants(role) == needed, role["kind"]
        assert set(table) <= calls, "API_CALLS lists a call the sources no longer make"
    assert objs["RoleBinding"]["roleRef"]["name"] == objs["Role"]["metadata"]["name"]
    assert objs["RoleBinding"]["subjects"] == objs["ClusterRoleBinding"]["subjects"]


def test_the_binding_gives_the_role_to_the_daemonset_service_account(objs):
    binding, ds, sa = objs["ClusterRoleBinding"], objs["DaemonSet"], objs["ServiceAccount"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": objs["ClusterRole"]["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


# ---- the DaemonSet against the daemon's config ----------------------------------------------------
@pytest.fixture(scope="module")
def daemon_config(objs):
    from node_daemon.config import Config, from_dict

    raw = json.loads(objs["ConfigMap"]["data"]["config.json"])
    return from_dict(raw, Config(node_name="n1"))


def mounts_by_path(ds: dict, container: dict) -> dict[str, dict]:
    """mountPath -> the volume mounted there."""
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


def test_daemon_container_runs_the_config_it_is_given(objs):
    ds = objs["DaemonSet"]
    daemon = containers(ds)["podwire-daemon"]
    cmd = daemon["command"]
    config_path = cmd[cmd.index("--config") + 1]
    mounts = mounts_by_path(ds, daemon)
    volume = mounts[os.path.dirname(config_path)]
    assert volume["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    assert os.path.basename(config_path) in objs["ConfigMap"]["data"]
    assert config_path.endswith(".json")  # YAML would need PyYAML in the frozen daemon
    env = {e["name"]: e for e in daemon["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        assert env[name]["valueFrom"]["configMapKeyRef"]["optional"] is True


def test_daemonset_mounts_what_the_config_writes(objs, daemon_config):
    ds = objs["DaemonSet"]
    mounts = mounts_by_path(ds, containers(ds)["podwire-daemon"])
    conf_dir = daemon_config.cni.conf_dir
    assert mounts[conf_dir]["hostPath"]["path"] == conf_dir  # the runtime reads it on the host
    assert daemon_config.kubeconfig is None  # in-cluster: the service account token
    # the plugin runs on the host: its folder goes to the host's CNI bin dir
    install = containers(ds, init=True)["install-cni"]
    target = {e["name"]: e["value"] for e in install["env"]}["CNI_BIN_DIR"]
    assert mounts_by_path(ds, install)[target]["hostPath"]["path"] == "/opt/cni/bin"
    assert install["command"] == ["/opt/podwire/install-cni.sh"]
    with open(os.path.join(ROOT, "packaging", "install-cni.sh")) as f:
        assert "CNI_BIN_DIR:-/host/opt/cni/bin" in f.read()


def test_probes_reach_the_daemons_health_endpoint(objs, daemon_config):
    host, _, port = daemon_config.metrics_address.rpartition(":")
    daemon = containers(objs["DaemonSet"])["podwire-daemon"]
    for probe in ("livenessProbe", "readinessProbe"):
        get = daemon[probe]["httpGet"]
        assert (get["host"], get["port"], get["path"]) == (host, int(port), "/healthz"), probe
    # liveness must outlast the daemon's own unhealthy threshold (3 resync intervals) plus start-up
    live = daemon["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 2 * daemon_config.resync_interval


def test_privileges(objs, daemon_config):
    ds = objs["DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]  # NotReady, unreachable, control-plane taints
    daemon = containers(ds)["podwire-daemon"]
    sc = daemon["securityContext"]
    assert sc["privileged"] is False and set(sc["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert daemon["resources"]["requests"]["cpu"] and daemon["resources"]["requests"]["memory"]
    inits = containers(ds, init=True)
    assert inits["install-cni"]["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # /proc/sys is read-only in the unprivileged daemon, so forwarding is the init container's job
    assert daemon_config.ensure_forwarding is False
    fwd = inits["enable-forwarding"]
    assert fwd["securityContext"]["privileged"] is True and "net.ipv4.ip_forward=1" in fwd["command"]
    # kube-proxy's conntrack timeouts, set by an init container for the same reason
    ct = inits["conntrack-timeouts"]
    assert ct["securityContext"]["privileged"] is True
    assert "tcp_timeout_close_wait=3600" in ct["command"][-1] and "tcp_timeout_established=86400" in ct["command"][-1]
    assert daemon_config.conntrack_tcp_timeout_close_wait == 0 == daemon_config.conntrack_tcp_timeout_established
    assert objs["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_one_image_everywhere(objs):
    ds = objs["DaemonSet"]
    for c in [*containers(ds).values(), *containers(ds, init=True).values()]:
        assert c["image"] == IMAGE and c["imagePullPolicy"] == "IfNotPresent", c["name"]
    with open(os.path.join(ROOT, "packaging", "image.py")) as f:
        assert f'default="{IMAGE}"' in f.read()


def test_config_matches_the_kind_cluster(daemon_config):
    kind = load(KIND_CONFIG)[0]
    assert [str(c) for c in daemon_config.cluster_cidrs] == [kind["networking"]["podSubnet"]]
    assert daemon_config.proxy_enabled


# ---- kind path (cannot run here: no Docker engine) -------------------------------------------------
def test_kind_config():
    docs = load(KIND_CONFIG)
    assert len(docs) == 1
    kind = docs[0]
    assert (kind["kind"], kind["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert kind["networking"] == {"disableDefaultCNI": True, "kubeProxyMode": "none",
                                  "podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/16"}
    assert kind["nodes"][0]["role"] == "control-plane"


@pytest.mark.parametrize("variant, family, versions", [("dual", "dual", [4, 6]), ("ipv6", "ipv6", [6])])
def test_kind_config_variants_for_other_families(variant, family, versions):
    """kind-config-dual.yaml and -ipv6.yaml: what kind-config.yaml says, in those families; the Service and pod
    ranges kind uses by default for them, one per family, in the family order kind's ipFamily implies."""
    import ipaddress

    [kind] = load(os.path.join(ROOT, "manifests", f"kind-config-{variant}.yaml"))
    [base] = load(KIND_CONFIG)
    net = kind["networking"]
    assert net.pop("ipFamily") == family
    assert {k: v for k, v in net.items() if "Subnet" not in k} == {"disableDefaultCNI": True, "kubeProxyMode": "none"}
    for key in ("podSubnet", "serviceSubnet"):
        assert [ipaddress.ip_network(c).version for c in net[key].split(",")] == versions
    assert kind["nodes"] == base["nodes"]


def test_dockerfile_copy_sources_exist():
    with open(os.path.join(ROOT, "packaging", "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    copies = [line.split()[1:] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies
    checked = 0
    for args in copies:
        if any(a.startswith("--from=") for a in args):
            continue
        for src in args[:-1]:
            assert os.path.exists(os.path.join(ROOT, src)), src
            checked += 1
    assert checked >= 6
    with open(os.path.join(ROOT, "packaging", "Dockerfile.dockerignore")) as f:
        allowed = {line[1:].rstrip("/") for line in f.read().splitlines() if line.startswith("!")}
    for args in copies:
        if not any(a.startswith("--from=") for a in args):
            for src in args[:-1]:
                assert src.split("/")[0].rstrip("/") in allowed, f"{src} is excluded from the build context"


@pytest.mark.parametrize("script", ["kind-up.sh", "install-cni.sh"])
def test_scripts_parse(script):
    path = os.path.join(ROOT, "packaging", script)
    assert os.access(path, os.X_OK)
    r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if script == "install-cni.sh" and shutil.which("busybox"):  # the image's shell
        r = subprocess.run(["busybox", "sh", "-n", path], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
