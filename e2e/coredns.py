"""CoreDNS deployed in the cluster, as kubeadm does: a Deployment + the kube-dns Service.

Why it is built so: the cluster's DNS is an ordinary workload (pods on the nodes, behind
the Service 10.96.0.10 that kubelets put into every pod's resolv.conf), so it exercises the
network plugin like any other client: its pods reach the API server through the
`kubernetes` Service (10.96.0.1) and answer clients through kube-dns. That needs a Service
proxy on the nodes (podwire's, or kube-proxy) plus egress masquerade towards the control
plane; until then the pods run and answer on their pod IPs, but the `kubernetes` plugin is
not synced and readiness (/ready) stays false.

The Corefile has no `forward` and no `loop`: nothing outside the cluster is reachable, and
`loop` would probe an upstream. The image is built locally (e2e/images.py: COREDNS).
"""

from __future__ import annotations

import textwrap

import yaml

from e2e import images
from e2e.node_runtime import CLUSTER_DNS, CLUSTER_DOMAIN

NAMESPACE = "kube-system"

COREFILE = textwrap.dedent(f"""\
    .:53 {{
        errors
        health {{
            lameduck 5s
        }}
        ready
        kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }}
        prometheus :9153
        cache 30
        reload
        loadbalance
    }}
    """)


def manifests(replicas: int = 2, image: str = images.COREDNS) -> list[dict]:
    """ServiceAccount, RBAC, ConfigMap, Deployment and the kube-dns Service. Pure."""
    labels = {"k8s-app": "kube-dns"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
         "rules": [
             {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
              "verbs": ["list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": NAMESPACE},
         "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "coredns", "namespace": NAMESPACE, "labels": labels},
         "spec": {
             "replicas": replicas,
             "selector": {"matchLabels": labels},
             "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
             "template": {
                 "metadata": {"labels": labels},
                 "spec": {
                     "serviceAccountName": "coredns",
                     "priorityClassName": "system-cluster-critical",
                     "dnsPolicy": "Default",
                     "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                     # one replica per node where possible
                     "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                         "weight": 100, "podAffinityTerm": {
                             "labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}}]}},
                     "containers": [{
                         "name": "coredns",
                         "image": image,
                         "imagePullPolicy": "IfNotPresent",  # nothing can be pulled: the nodes have it
                         "args": ["-conf", "/etc/coredns/Corefile"],
                         "resources": {"limits": {"memory": "170Mi"}, "requests": {"cpu": "50m", "memory": "70Mi"}},
                         "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}],
                         "ports": [
                             {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                             {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                             {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                         ],
                         "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                             "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}},
                         "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "initialDelaySeconds": 60,
                                           "timeoutSeconds": 5, "failureThreshold": 5},
                         "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                     }],
                     "volumes": [{"name": "config-volume", "configMap": {
                         "name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]}}],
                 },
             },
         }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": NAMESPACE,
                      "labels": {**labels, "kubernetes.io/name": "CoreDNS"},
                      "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
         "spec": {"selector": labels, "clusterIP": str(CLUSTER_DNS), "ports": [
             {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
             {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
         ]}},
    ]


def manifest_yaml(replicas: int = 2) -> str:
    return yaml.safe_dump_all(manifests(replicas), sort_keys=False)


def deploy(cluster, replicas: int = 2) -> None:
    """kubectl apply the CoreDNS manifests (idempotent)."""
    cluster.kubectl("apply", "-f", "-", input=manifest_yaml(replicas))
