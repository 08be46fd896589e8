"""Node objects for pods the benchmarks bind to nodes that have no kubelet.

Without a Node object kube-controller-manager's pod garbage collector deletes such pods (orphaned,
after ~40 s), and with one its node lifecycle controller taints the silent node unreachable and
evicts them after their tolerationSeconds: a benchmark's peers would vanish under it. So the
benchmarks create the Node objects and give their pods these tolerations (no tolerationSeconds:
tolerated for good)."""
from __future__ import annotations

TOLERATE_SILENT_NODES = [{"key": f"node.kubernetes.io/{k}", "operator": "Exists", "effect": e}
                         for k in ("not-ready", "unreachable") for e in ("NoExecute", "NoSchedule")]


def create_nodes(api, names) -> None:
    """A Node object per name (none of them will ever report): existing ones are left as they are."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    for name in sorted(set(names)):
        try:
            core.create_node({"metadata": {"name": name, "labels": {"podwire.io/bench": "silent"}}})
        except client.ApiException as e:
            if e.status != 409:
                raise
