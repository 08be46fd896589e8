"""CoreDNS deployed in the cluster as kubeadm installs it (v1.34's addon manifests).

Why it is built so: the cluster's DNS is an ordinary workload (pods on the nodes, behind
the Service 10.96.0.10 that kubelets put into every pod's resolv.conf), so it exercises the
network plugin like any other client: its pods reach the API server through the
`kubernetes` Service (10.96.0.1) and answer clients through kube-dns. That needs a Service
proxy on the nodes (podwire's, or kube-proxy) plus egress masquerade towards the control
plane; until then the pods run and answer on their pod IPs, but the `kubernetes` plugin is
not synced and readiness (/ready) stays false.

The objects are kubeadm's (cmd/kubeadm/app/phases/addons/dns/manifests.go, checked by
tests/unit/test_e2e_coredns.py against that file when the module cache has it): the Corefile
lives in the `coredns` ConfigMap of kube-system, mounted as a volume (items, not subPath), so
an edit reaches the pods' /etc/coredns/Corefile with the kubelet's next sync and `reload`
applies it (the upstream "DNS configMap" tests edit it). `forward . /etc/resolv.conf` leads,
through the node's resolv.conf (dnsPolicy Default), to the underlay gateway, where the
harness's upstream resolver answers (e2e/upstream_dns.py): never outside the harness.
The image is built locally (e2e/images.py: COREDNS).
"""

from __future__ import annotations

import ipaddress
import textwrap

import yaml

from e2e import images
from e2e.node_runtime import CLUSTER_DNS, CLUSTER_DOMAIN, cluster_dns

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
        forward . /etc/resolv.conf {{
           max_concurrent 1000
        }}
        cache 30 {{
           disable success {CLUSTER_DOMAIN}
           disable denial {CLUSTER_DOMAIN}
        }}
        loop
        reload
        loadbalance
    }}
    """)
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane"


def dns_service_ips(cluster_ips=None) -> dict:
    """kube-dns's address fields: one ClusterIP (IPv4 or IPv6-only clusters), or one per family
    (dual-stack: RequireDualStack, primary first, as kubeadm's dual-stack kube-dns). Pure."""
    ips = [str(ip) for ip in (cluster_ips or [CLUSTER_DNS])]
    if len(ips) == 1:
        return {"clusterIP": ips[0]}
    return {"clusterIP": ips[0], "clusterIPs": ips, "ipFamilyPolicy": "RequireDualStack",
            "ipFamilies": [f"IPv{ipaddress.ip_address(ip).version}" for ip in ips]}


def manifests(replicas: int = 2, image: str = images.COREDNS, cluster_ips=None) -> list[dict]:
    """kubeadm's ServiceAccount, RBAC, ConfigMap, Deployment and kube-dns Service (the only
    departure: the image name is the locally built one, and nothing can be pulled). Pure."""
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
             "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
             "selector": {"matchLabels": labels},
             "template": {
                 "metadata": {"labels": labels},
                 "spec": {
                     "priorityClassName": "system-cluster-critical",
                     "serviceAccountName": "coredns",
                     # one replica per node where possible
                     "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                         "weight": 100, "podAffinityTerm": {
                             "labelSelector": {"matchExpressions": [
                                 {"key": "k8s-app", "operator": "In", "values": ["kube-dns"]}]},
                             "topologyKey": "kubernetes.io/hostname"}}]}},
                     "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                     {"key": CONTROL_PLANE_TAINT, "effect": "NoSchedule"}],
                     "nodeSelector": {"kubernetes.io/os": "linux"},
                     "containers": [{
                         "name": "coredns",
                         "image": image,
                         "imagePullPolicy": "IfNotPresent",  # nothing can be pulled: the nodes have it
                         "resources": {"limits": {"memory": "170Mi"}, "requests": {"cpu": "100m", "memory": "70Mi"}},
                         "args": ["-conf", "/etc/coredns/Corefile"],
                         "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}],
                         "ports": [
                             {"containerPort": 53, "name": "dns", "protocol": "UDP"},
                             {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                             {"containerPort": 9153, "name": "metrics", "protocol": "TCP"},
                             {"containerPort": 8080, "name": "liveness-probe", "protocol": "TCP"},
                             {"containerPort": 8181, "name": "readiness-probe", "protocol": "TCP"},
                         ],
                         "livenessProbe": {"httpGet": {"path": "/health", "port": "liveness-probe", "scheme": "HTTP"},
                                           "initialDelaySeconds": 60, "timeoutSeconds": 5, "successThreshold": 1,
                                           "failureThreshold": 5},
                         "readinessProbe": {"httpGet": {"path": "/ready", "port": "readiness-probe",
                                                        "scheme": "HTTP"}},
                         "securityContext": {"allowPrivilegeEscalation": False,
                                             "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                             "readOnlyRootFilesystem": True},
                     }],
                     "dnsPolicy": "Default",
                     "volumes": [{"name": "config-volume", "configMap": {
                         "name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]}}],
                 },
             },
         }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"labels": {**labels, "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
                      "name": "kube-dns", "namespace": NAMESPACE,
                      "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
         "spec": {**dns_service_ips(cluster_ips), "ports": [
             {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
             {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
             {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
         ], "selector": labels}},
    ]


def manifest_yaml(replicas: int = 2, cluster_ips=None) -> str:
    return yaml.safe_dump_all(manifests(replicas, cluster_ips=cluster_ips), sort_keys=False)


def deploy(cluster, replicas: int = 2) -> None:
    """kubectl apply the CoreDNS manifests (idempotent), kube-dns in the cluster's families."""
    cluster.kubectl("apply", "-f", "-", input=manifest_yaml(replicas, cluster_dns(cluster.control_plane.config)))
