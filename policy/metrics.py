"""The policy feature's Prometheus metrics, on the daemon's registry."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.sync = Histogram("podwire_policy_sync_seconds", "Policy sync: snapshot, compile, nft, conntrack",
                              ["kind"], buckets=_FAST, registry=r)
        self.compile = Histogram("podwire_policy_compile_seconds", "Snapshot and compile of this node's ruleset",
                                 buckets=_FAST, registry=r)
        self.phase = Histogram("podwire_policy_sync_phase_seconds", "Policy sync, per phase: snapshot, "
                               "compile, render, nft, conntrack, publish", ["phase"], buckets=_FAST, registry=r)
        self.isolated = Gauge("podwire_policy_isolated_pods", "Local pod addresses isolated, per direction",
                              ["direction"], registry=r)
        self.allows = Gauge("podwire_policy_allows", "Allows in this node's ruleset, per direction",
                            ["direction"], registry=r)
        self.conntrack_deleted = Counter("podwire_policy_conntrack_deleted_total",
                                         "Conntrack entries deleted because a change denies their flow", registry=r)
        self.invalid = Gauge("podwire_policy_invalid_objects", "API objects the policy feature cannot read",
                             ["kind"], registry=r)
        self.admit = Histogram("podwire_policy_admit_seconds",
                               "CNI ADD wait until the new pod's policy was in force", buckets=_FAST, registry=r)

    def observe_sync(self, rs, full: bool, compile_seconds: float, seconds: float, deleted: int,
                     phases: dict[str, float] | None = None) -> None:
        self.sync.labels("full" if full else "diff").observe(seconds)
        self.compile.observe(compile_seconds)
        for phase, took in (phases or {}).items():
            self.phase.labels(phase).observe(took)
        for d in ("ingress", "egress"):
            self.isolated.labels(d).set(len(rs.isolated(d)))
            self.allows.labels(d).set(rs.allow_count(d))
        if deleted:
            self.conntrack_deleted.inc(deleted)
