"""Desired state -> one atomic `nft -f` transaction per sync.

The first sync (and any sync after a failure) rewrites the whole table in one
transaction, keeping the affinity sets the packet path filled (see nft.render_full).
Later syncs diff the previous desired state against the new one in memory, never by listing
the kernel's table (which is what made kube-proxy slow at scale), and send only what changed,
ordered so each step is valid inside the transaction:
  1. declare new chains, sets;            2. flush changed and removed chains;
  3. fill new and changed chains;          4. delete stale map/set elements, add new ones;
  5. delete removed chains (nothing references them any more), then removed sets.
Fragments the planner reused are skipped by identity, so cost follows the change size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from netkit.nft import NftError
from netkit.nft import apply as nft_apply
from proxy import nft

__all__ = ["NftError", "NftRunner", "Runner", "SyncResult", "TableSyncer", "element_changes", "render_diff"]
from proxy.plan import DesiredState, Fragment


class Runner(Protocol):
    def apply(self, text: str) -> None: ...


class NftRunner:
    """Pipes a transaction to `nft -f -` (netkit's edge, shared with the CNI plugin and the
    daemon), optionally inside a netns for tests and benchmarks."""

    def __init__(self, netns_path: str | None = None):
        self.netns_path = netns_path

    def apply(self, text: str) -> None:
        nft_apply(text, self.netns_path)


def render_diff(old: DesiredState, new: DesiredState) -> str | None:
    """The transaction that turns `old` into `new`; None when only a full sync can."""
    ob, nb = old.base, new.base
    if (ob.family, ob.name) != (nb.family, nb.name) or ob.chains != nb.chains \
            or ob.sets != nb.sets or {k: m.type for k, m in ob.maps.items()} != {k: m.type for k, m in nb.maps.items()}:
        return None
    t = nb
    empty = Fragment()
    new_chains, changed, removed = [], [], []
    new_sets, removed_sets = [], []
    for key in new.changed_since(old):
        of, nf = old.fragments.get(key, empty), new.fragments.get(key, empty)
        if of is nf:
            continue
        for name, c in nf.chains.items():
            oc = of.chains.get(name)
            if oc is None:
                new_chains.append(c)
            elif oc.rules != c.rules:
                changed.append(c)
        removed += [n for n in of.chains if n not in nf.chains]
        for name, s in nf.sets.items():
            if name not in of.sets:
                new_sets.append(s)
            elif of.sets[name] != s:
                return None  # set names carry their definition; a mismatch is a planner bug
        removed_sets += [n for n in of.sets if n not in nf.sets]

    out = [nft.chain_decl(t, c) for c in sorted(new_chains, key=lambda c: c.name)]
    out += [nft.set_decl(t, s) for s in sorted(new_sets, key=lambda s: s.name)]
    out += [nft.chain_op("flush", t, n) for n in sorted([c.name for c in changed] + removed)]
    for c in sorted(new_chains + changed, key=lambda c: c.name):
        out.extend(nft.rule_lines(t, c))

    dels, adds = element_changes(old, new)
    for name in sorted(dels):
        out.extend(nft.element_lines(t, name, dels[name], verb="delete"))
    for name in sorted(adds):
        items = list(adds[name]) if name in nb.sets else [f"{k} : {v}" for k, v in adds[name].items()]
        out.extend(nft.element_lines(t, name, items))
    out += [nft.chain_op("delete", t, n) for n in sorted(removed)]
    out += [nft.set_op("delete", "set", t, n) for n in sorted(removed_sets)]
    return "\n".join(out) + "\n" if out else ""


def element_changes(old: DesiredState, new: DesiredState) -> tuple[dict[str, set], dict[str, dict]]:
    """(keys to delete, key -> value to add) per map/set; a changed value is both."""
    if new.prev is old and new.delta is not None:
        return new.delta  # the planner tracked it; no need to compare 30k-entry maps
    oe, ne = old.elements(), new.elements()
    dels, adds = {}, {}
    for name in ne:
        o, n = oe.get(name, {}), ne[name]
        if o == n:
            continue
        gone = {k for k, v in o.items() if n.get(k) != v}
        fresh = {k: v for k, v in n.items() if o.get(k) != v}
        if gone:
            dels[name] = gone
        if fresh:
            adds[name] = fresh
    return dels, adds


@dataclass(frozen=True)
class SyncResult:
    full: bool
    changed: bool  # False: nothing to send, nft was not run
    text_bytes: int


class TableSyncer:
    """Keeps what was last applied for one table; `sync` sends the smallest transaction."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.applied: DesiredState | None = None

    def sync(self, new: DesiredState) -> SyncResult:
        text = render_diff(self.applied, new) if self.applied is not None else None
        full = text is None
        if full:
            text = nft.render_full(new.table())
        if not text:
            self.applied = new
            return SyncResult(False, False, 0)
        try:
            try:
                self.runner.apply(text)
            except Exception:
                if not full:
                    raise
                # The table holds something our `add`s conflict with (an older layout): start
                # from an empty table instead. Affinity entries are lost only in this case.
                text = nft.render_full(new.table(), keep_dynamic=False)
                self.runner.apply(text)
        except Exception:
            self.applied = None  # the kernel state is unknown now: next sync is a full one
            raise
        self.applied = new
        return SyncResult(full, True, len(text))
