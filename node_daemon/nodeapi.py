"""What the daemon writes to the API: its own Node's VTEP MAC annotation and NetworkUnavailable.

Each write is skipped when the cached Node already says the same, so a resync costs no API call.
"""

from __future__ import annotations

import datetime

from .model import VTEP_MAC_ANNOTATION

CONDITION = "NetworkUnavailable"
REASON = "PodwireRoutesCreated"


def annotation_patch(node: dict, mac: str) -> dict | None:
    if ((node.get("metadata") or {}).get("annotations") or {}).get(VTEP_MAC_ANNOTATION) == mac:
        return None
    return {"metadata": {"annotations": {VTEP_MAC_ANNOTATION: mac}}}


def condition_patch(node: dict, now: datetime.datetime | None = None) -> dict | None:
    """Strategic-merge patch setting NetworkUnavailable=False, or None if already so (by us)."""
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == CONDITION and c.get("status") == "False" and c.get("reason") == REASON:
            return None
    ts = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"status": {"conditions": [{
        "type": CONDITION, "status": "False", "reason": REASON,
        "message": "podwire programmed the routes to every reachable peer",
        "lastTransitionTime": ts, "lastHeartbeatTime": ts}]}}


class NodeWriter:
    """Thin edge over CoreV1Api; bodies go out as raw JSON with an explicit patch content type
    (the generated client would otherwise pick JSON-patch for a dict body)."""

    def __init__(self, core_v1):
        self.api = core_v1

    def patch(self, name: str, body: dict) -> None:
        self.api.patch_node(name, body, _content_type="application/merge-patch+json",
                            _preload_content=False).release_conn()

    def patch_status(self, name: str, body: dict) -> None:
        self.api.patch_node_status(name, body, _content_type="application/strategic-merge-patch+json",
                                   _preload_content=False).release_conn()

