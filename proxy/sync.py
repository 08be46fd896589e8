"""Desired state -> one atomic `nft -f` transaction per sync.

The first sync (and any sync after a failure) rewrites the whole table in one
transaction, keeping the affinity sets the packet path filled (see nft.render_full).
Later syncs diff the previous desired state against the new one in memory, never by listing
the kernel's table (which is what made kube-proxy slow at scale), and send only what changed,
ordered so each step is valid inside the transaction:
  1. declare new chains, sets;            2. flush changed and removed chains;
  3. fill new and changed chains;          4. delete stale map/set elements, add new ones;
  5. delete the chains, then the sets, that an earlier transaction left stale.
Fragments the planner reused are skipped by identity, so cost follows the change size.

A removed chain is deleted one sync later, as kube-proxy's nftables mode does: kernels before
6.2 refuse to delete a chain in the transaction that removes its last map element or jump to it.
The transaction that stops using a chain or set flushes it and records it as stale; the next
one deletes it (a diff sync, or a full sync). A full sync also finds what an earlier run left
behind (a Service deleted while the daemon was down): it lists the names of our table's chains,
sets and maps (names only, never rules or elements) and treats the ones no longer desired alike.
"""
from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from typing import Iterable, Protocol

from netkit import nft as netkit_nft
from netkit.nft import NftError, nft_binary
from netkit.nft import apply as nft_apply
from proxy import nft
from proxy.plan import FAMILIES, NFT_FAMILY, DesiredState, Fragment

__all__ = ["NftError", "NftRunner", "Runner", "SyncResult", "TableSyncer", "Transaction", "cleanup", "diff",
           "element_changes", "render_diff", "render_full_sync"]

log = logging.getLogger(__name__)

# An object of our table: ("chain" | "set" | "map", name).
Object = tuple[str, str]
_KINDS = ("chain", "set", "map")


class Runner(Protocol):
    def apply(self, text: str) -> None: ...


class NftRunner(netkit_nft.NftRunner):
    """netkit's runner, plus the listing of a table's object names a full sync needs."""

    def objects(self, family: str, table: str) -> set[Object]:
        """The chains, sets and maps of one table, by name (empty when the table does not exist).
        Names only: `list chains` and terse `list sets|maps` carry no rules and no elements."""
        ref = nft.table_ref(family, table)  # checks both
        prefix = ["nsenter", f"--net={self.netns_path}"] if self.netns_path else []
        out: set[Object] = set()
        for kind in _KINDS:
            argv = [*prefix, nft_binary(), "-j", "-t", "list", f"{kind}s", family]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise NftError(f"listing the {kind}s of {ref}: {r.stderr}")
            for item in json.loads(r.stdout or "{}").get("nftables", ()):
                obj = item.get(kind) if isinstance(item, dict) else None
                if isinstance(obj, dict) and obj.get("table") == table and isinstance(obj.get("name"), str):
                    out.add((kind, obj["name"]))
        return out


@dataclass(frozen=True)
class Transaction:
    """One sync's text, and what it left stale: flushed, referenced by nothing once it is
    applied, and deleted by the next transaction."""
    text: str
    stale: frozenset[Object] = frozenset()


def _deletes(t: nft.Table, objs: Iterable[Object]) -> list[str]:
    """Delete lines, chains first (their rules may name the sets)."""
    order = {k: i for i, k in enumerate(_KINDS)}
    out = []
    for kind, n in sorted(objs, key=lambda o: (order[o[0]], o[1])):
        out.append(nft.chain_op("delete", t, n) if kind == "chain" else nft.set_op("delete", kind, t, n))
    return out


def diff(old: DesiredState, new: DesiredState, stale: Iterable[Object] = ()) -> Transaction | None:
    """The transaction that turns `old` into `new` and deletes `stale` (left by the previous
    transaction); None when only a full sync can."""
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
    # What an earlier transaction left stale is deleted now, unless this one declares it again
    # (a Service that came back): nothing has referenced it since that transaction.
    revived = {("chain", c.name) for c in new_chains} | {("set", s.name) for s in new_sets}
    out += _deletes(t, set(stale) - revived)
    left = {("chain", n) for n in removed} | {("set", n) for n in removed_sets}
    return Transaction("\n".join(out) + "\n" if out else "", frozenset(left))


def render_diff(old: DesiredState, new: DesiredState, stale: Iterable[Object] = ()) -> str | None:
    """The text of diff(old, new, stale); None when only a full sync can."""
    tx = diff(old, new, stale)
    return None if tx is None else tx.text


def desired_objects(t: nft.Table) -> set[Object]:
    return {("chain", n) for n in t.chains} | {("set", n) for n in t.sets} | {("map", n) for n in t.maps}


def render_full_sync(t: nft.Table, existing: set[Object] | None, stale: Iterable[Object] = ()) -> Transaction:
    """The whole table (nft.render_full), plus the cleanup of what is no longer desired.

    `existing`: the kernel's objects of this table (NftRunner.objects), None when unknown.
    `stale` (left by our previous transaction) is deleted now; anything else that exists but
    is not desired may still be referenced when this transaction starts (by a map element this
    transaction flushes), so it is flushed now (`flush table` empties its rules) and left stale
    for the next transaction to delete."""
    desired = desired_objects(t)
    gone = set(stale) - desired
    if existing is not None:
        gone &= existing  # deleting what is not there would fail the whole transaction
    left = (existing - desired - gone) if existing is not None else set()
    out = [nft.set_op("flush", kind, t, n) for kind, n in sorted(left) if kind != "chain"]
    out += _deletes(t, gone)
    text = nft.render_full(t)
    return Transaction(text + "\n".join(out) + "\n" if out else text, frozenset(left))


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
    """Keeps what was last applied for one table; `sync` sends the smallest transaction.

    `stale`: the objects the last applied transaction left to delete (see the module doc)."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.applied: DesiredState | None = None
        self.stale: frozenset[Object] = frozenset()

    def _existing(self, t: nft.Table) -> set[Object] | None:
        """The kernel's objects of our table; None when the runner cannot list them or the listing
        failed (the sync still programs the Services; only the cleanup waits for a later one)."""
        objects = getattr(self.runner, "objects", None)
        if objects is None:
            return None
        try:
            return objects(t.family, t.name)
        except (OSError, ValueError, NftError, subprocess.SubprocessError) as e:
            log.warning("listing %s for stale objects failed: %s", t.ref, e)
            return None

    def sync(self, new: DesiredState) -> SyncResult:
        tx = diff(self.applied, new, self.stale) if self.applied is not None else None
        full = tx is None
        try:
            if tx is None:
                table = new.table()
                tx = render_full_sync(table, self._existing(table), self.stale)
            if not tx.text:
                self.applied, self.stale = new, tx.stale
                return SyncResult(False, False, 0)
            try:
                self.runner.apply(tx.text)
            except Exception:
                if not full:
                    raise
                # The table holds something our `add`s conflict with (an older layout): start
                # from an empty table instead. Affinity entries are lost only in this case.
                tx = Transaction(nft.render_full(new.table(), keep_dynamic=False))
                self.runner.apply(tx.text)
        except Exception:
            self.applied = None  # the kernel state is unknown now: next sync is a full one
            raise
        self.applied, self.stale = new, tx.stale
        return SyncResult(full, True, len(tx.text))

    def forget(self) -> None:
        """The table was deleted: the next sync is a full one, with nothing stale."""
        self.applied, self.stale = None, frozenset()


def cleanup(cfg=None, netns_path: str | None = None, table: str | None = None) -> None:
    """Delete the proxy's tables of both families if present (the feature is switched off; the
    daemon calls this at start through node_daemon.features). They are all the proxy owns."""
    from proxy.model import ProxyConfig

    name = table or ProxyConfig().table_name
    nft_apply("".join(nft.render_delete(NFT_FAMILY[f], name) for f in FAMILIES), netns_path)
