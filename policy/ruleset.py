"""NetworkPolicy's compiled desired state on one node, as plain data, and its nft text.

Built so because of what this kernel showed (policy/DESIGN.md has the experiments): conntrack is
refused in the bridge and netdev families (no nf_conntrack_bridge), so policy lives in one `inet`
table on the forward hook (after the proxy's DNAT: policy sees the endpoint) plus the input hook
(a pod's egress to the node). Same-node pod->pod traffic is bridged on podwire0; it reaches the inet
hooks only with the bridge's own `nf_call_iptables`/`nf_call_ip6tables` link option set (a per-bridge
switch, no host-global sysctl) — the daemon owns that, this module only renders the table.

A packet meets a fixed number of lookups whatever the number of pods and policies: `ct state` first,
then per direction two hash sets for allows towards one peer address (isolated pod . peer . proto .
port, and isolated pod . peer for allows without ports), the same two as concatenated interval sets
for peer CIDRs/ranges and port ranges, and the set of isolated pods. Everything else is elements, so
a change is element adds and deletes in one transaction (render_changes; render_diff is the same
over whole element sets, the simple reference the tests hold it to).

The kernel refuses an element whose start or end point falls inside an existing element of a
concatenated interval set (EEXIST), so allows are normalised into disjoint boxes before rendering.
"""
from __future__ import annotations

import ipaddress
import weakref
from dataclasses import dataclass, field
from itertools import chain
from typing import Iterable, Union

from proxy import nft

Addr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Net = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

TABLE = "podwire-policy"
PROTOCOLS = ("tcp", "udp", "sctp")
DIRECTIONS = ("ingress", "egress")
# Neighbour discovery (ICMPv6 133-137) is not tracked by conntrack and, bridged through podwire0, crosses
# forward with a pod's own address as source or destination: always accepted, as kube-network-policies does.
_ND = ("meta l4proto ipv6-icmp icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
       "nd-neighbor-advert, nd-redirect } accept")


def _addr(value, what: str) -> Addr:
    if type(value) not in (ipaddress.IPv4Address, ipaddress.IPv6Address) or getattr(value, "scope_id", None):
        raise ValueError(f"{what}: not an address without scope id: {value!r:.80}")
    return value


@dataclass(frozen=True, order=True, slots=True)
class Allow:
    """Traffic `pod` may exchange with `peer` in one direction: ingress = from peer to pod,
    egress = from pod to peer. proto None = every protocol and port (a rule without `ports`).
    Slots: a node holds one per (local pod, peer, port), ~300k with 1,000 busy local pods; without
    a __dict__ each is a third of the size and the cyclic collector walks less."""
    pod: Addr
    peer: Net
    proto: str | None = None
    first_port: int = 1
    last_port: int = 65535
    _hash: int | None = field(default=None, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        # cached: a sync unions and diffs tens of thousands of these, and ipaddress hashes via hex()
        h = self._hash
        if h is None:  # from the integers (ipaddress objects hash through hex() of theirs)
            h = hash((int(self.pod), int(self.peer.network_address), self.peer.prefixlen, self.proto,
                      self.first_port, self.last_port))
            object.__setattr__(self, "_hash", h)
        return h

    def __post_init__(self) -> None:
        _addr(self.pod, "allow pod")
        # the scope id read from the address, not searched in str(): formatting cost ~25% of a compile
        if type(self.peer) not in (ipaddress.IPv4Network, ipaddress.IPv6Network) \
                or getattr(self.peer.network_address, "scope_id", None) is not None:
            raise ValueError(f"allow peer: not a network: {self.peer!r:.80}")
        if self.peer.version != self.pod.version:
            raise ValueError(f"allow {self.pod} <-> {self.peer}: mixed IP families")
        if self.proto is not None and self.proto not in PROTOCOLS:
            raise ValueError(f"allow protocol {self.proto!r:.20} is not one of {PROTOCOLS}")
        for p in (self.first_port, self.last_port):
            if type(p) is not int or not 1 <= p <= 65535:
                raise ValueError(f"allow port {p!r:.20} is not an integer 1-65535")
        if self.first_port > self.last_port:
            raise ValueError(f"allow port range {self.first_port}-{self.last_port} is empty")
        if self.proto is None and (self.first_port, self.last_port) != (1, 65535):
            raise ValueError("an allow with ports needs a protocol")


def trusted_allow(pod: Addr, peer: Net, proto: str | None, first_port: int, last_port: int) -> Allow:
    """An Allow built without __post_init__'s checks, for policy.compile only: its inputs are
    records policy.from_api parsed and checked (ipaddress objects, protocols of the fixed set,
    ports in range), and a compile makes ~150k of these for a node of 1k pods, where the checks
    cost more than the rest of the compile. Rendering checks the text again (proxy.nft's alphabet
    guards); tests/unit/test_policy_incremental.py re-checks what the compiler made."""
    a = object.__new__(Allow)
    _SET_POD(a, pod)
    _SET_PEER(a, peer)
    _SET_PROTO(a, proto)
    _SET_FIRST(a, first_port)
    _SET_LAST(a, last_port)
    _SET_HASH(a, None)
    return a


def trusted_allows(pod: Addr, peer: Net, ports) -> tuple[Allow, ...]:
    """trusted_allow for each (proto, first, last) of `ports`, hashes precomputed (Allow.__hash__'s
    formula, the address integers taken once)."""
    head = (int(pod), int(peer.network_address), peer.prefixlen)
    out = []
    for proto, lo, hi in ports:
        a = object.__new__(Allow)
        _SET_POD(a, pod)
        _SET_PEER(a, peer)
        _SET_PROTO(a, proto)
        _SET_FIRST(a, lo)
        _SET_LAST(a, hi)
        _SET_HASH(a, hash((*head, proto, lo, hi)))
        out.append(a)
    return tuple(out)


# the slots' own setters: a frozen dataclass refuses setattr, and object.__setattr__ costs more per call
_SET_POD, _SET_PEER, _SET_PROTO, _SET_FIRST, _SET_LAST, _SET_HASH = (
    Allow.__dict__[n].__set__ for n in ("pod", "peer", "proto", "first_port", "last_port", "_hash"))


@dataclass(frozen=True)
class LogConfig:
    """Denied packets go to nflog `group`, at most `rate` per second per direction (+ `burst`)."""
    group: int = 1
    rate: int = 10
    burst: int = 20

    def __post_init__(self) -> None:
        for what, v, hi in (("group", self.group, 65535), ("rate", self.rate, 100000), ("burst", self.burst, 100000)):
            if type(v) is not int or not 0 <= v <= hi:
                raise ValueError(f"log {what} {v!r:.20} is not an integer 0-{hi}")


# Allow groups (frozensets, immutable) already checked by Ruleset: a sync rebuilds the Ruleset of the
# whole node, and most pods' groups are the very objects of the sync before. Weak: gone with them.
_CHECKED: "weakref.WeakValueDictionary[tuple[int, Addr], frozenset]" = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class Ruleset:
    """This node's policy: which local pods are isolated per direction, and what is allowed.
    An Allow whose pod is not isolated in that direction is refused (it would be dead text)."""
    isolated_ingress: frozenset[Addr] = frozenset()
    isolated_egress: frozenset[Addr] = frozenset()
    # None with `groups`: the union of the groups, made when first read (a daemon's sync never
    # needs it: it diffs per pod, and a union of the node's allows is O(node) per change)
    ingress: frozenset[Allow] = field(default_factory=frozenset)  # a factory: no class attribute to
    egress: frozenset[Allow] = field(default_factory=frozenset)  # hide a lazy one behind
    log: LogConfig = field(default_factory=LogConfig)
    # This node's pod CIDRs and the addresses in them the daemon has classified (every local pod it
    # knows, policed or not). A forwarded packet to or from an address of `local` not in `known` is
    # dropped: a pod the daemon has not seen yet cannot have its policy in force. The CNI plugin
    # reports every new pod before its interface exists (policy/gate.py), so no pod ever meets this;
    # it stops packets a node accepted before a pod existed (e.g. queued for ARP) from reaching it.
    local: tuple[Net, ...] = ()
    known: frozenset[Addr] = frozenset()
    # Optional, from the compiler: per direction, each pod address's allows (a partition of
    # ingress/egress). Unchanged pods keep the very same frozenset from sync to sync, which is what
    # lets elements() reuse their rendered elements (ElementCache) instead of rendering the node again.
    groups: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        lazy = False
        for direction in DIRECTIONS:
            if self.__dict__[direction] is None:
                if self.groups is None:
                    raise ValueError(f"{direction} allows missing and no groups to make them from")
                del self.__dict__[direction]  # made by __getattr__ when read
                lazy = True
        for net in self.local:
            if type(net) not in (ipaddress.IPv4Network, ipaddress.IPv6Network):
                raise ValueError(f"local pod CIDR {net!r:.80} is not a network")
        for a in self.known:
            _addr(a, "known pod")
        for direction in DIRECTIONS:
            isolated = self.isolated(direction)
            for a in isolated:
                _addr(a, f"isolated {direction} pod")
            if self.groups is not None:  # per group, not per allow: a sync builds this for the whole node
                groups = self.groups[direction]
                # (lazy: the allows are the groups' union, and groups of different pods are disjoint)
                if not lazy and sum(len(g) for g in groups.values()) != len(self.allows(direction)):
                    raise ValueError(f"{direction} groups do not partition the allows")
                for pod, group in groups.items():
                    if pod not in isolated:
                        raise ValueError(f"{direction} allows for {pod}, which is not isolated for {direction}")
                    if _CHECKED.get((id(group), pod)) is group:  # the same frozenset, same pod, as a sync ago
                        continue
                    for allow in group:
                        if type(allow) is not Allow or allow.pod is not pod and allow.pod != pod:
                            raise ValueError(f"{direction} allow {allow!r:.80} is not an Allow of {pod}")
                    _CHECKED[(id(group), pod)] = group
                continue
            for allow in self.allows(direction):
                if type(allow) is not Allow:
                    raise ValueError(f"{direction} allow {allow!r:.80} is not an Allow")
                if allow.pod not in isolated:
                    raise ValueError(f"{direction} allow for {allow.pod}, which is not isolated for {direction}")

    def __getattr__(self, name: str):
        # only for what is missing from __dict__: the lazy allows (see `ingress`)
        groups = self.__dict__.get("groups")
        if name in DIRECTIONS and groups is not None:
            found = self.__dict__[name] = frozenset().union(*groups[name].values())
            return found
        raise AttributeError(name)

    def allow_count(self, direction: str) -> int:
        if self.groups is not None:
            return sum(len(g) for g in self.groups[direction].values())
        return len(self.allows(direction))

    def isolated(self, direction: str) -> frozenset[Addr]:
        return self.isolated_ingress if direction == "ingress" else self.isolated_egress

    def allows(self, direction: str) -> frozenset[Allow]:
        return self.ingress if direction == "ingress" else self.egress

    def by_pod(self, direction: str) -> dict[Addr, frozenset[Allow]]:
        """Each isolated pod address's allows in one direction (from `groups`, else grouped here once)."""
        if self.groups is not None:
            return self.groups[direction]
        memo = self.__dict__.setdefault("_by_pod", {})
        found = memo.get(direction)
        if found is None:
            lists: dict[Addr, list[Allow]] = {}
            for al in self.allows(direction):
                lists.setdefault(al.pod, []).append(al)
            found = memo[direction] = {pod: frozenset(v) for pod, v in lists.items()}
        return found


# ---- elements ------------------------------------------------------------------------------

def _merge(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint, adjacent ranges joined."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def _boxes(items: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """(peer lo, peer hi, port lo, port hi) rectangles -> disjoint rectangles covering the same
    points: the peer axis cut where the union of port ranges changes, each cut's ports merged.

    A sweep over the sorted peer boundaries: a rectangle opens at its peer lo and closes after its
    peer hi; `active` counts the open port ranges, and the union is re-merged only when a distinct
    range appears or disappears. Runs of equal unions are joined, so each maximal peer segment with
    one union is emitted once (the same boxes as cutting at every boundary and joining equal
    neighbours). O(n log n) plus the merges, which cost the number of distinct open ranges — small
    unless many different port ranges overlap on the peer axis at once."""
    events = sorted([(lo, 1, pl, ph) for lo, _, pl, ph in items] + [(hi + 1, -1, pl, ph) for _, hi, pl, ph in items])
    active: dict[tuple[int, int], int] = {}
    ports: tuple[tuple[int, int], ...] = ()
    dirty = False
    segments: list[list] = []  # [peer lo, peer hi, ports]
    i, n = 0, len(events)
    while i < n:
        x = events[i][0]
        while i < n and events[i][0] == x:  # closes (-1) sort before opens (+1): counts never go negative
            _, delta, pl, ph = events[i]
            key = (pl, ph)
            count = active.get(key, 0) + delta
            if count:
                active[key] = count
                dirty = dirty or (count == 1 and delta == 1)
            else:
                del active[key]
                dirty = True
            i += 1
        if i == n:
            break  # past the last close: nothing is open
        if dirty:  # the usual one or no open range needs no merge
            ports = _merge(active) if len(active) > 1 else tuple(active)
            dirty = False
        if not ports:
            continue
        nxt = events[i][0]
        last = segments[-1] if segments else None
        if last is not None and last[1] + 1 == x and (last[2] is ports or last[2] == ports):
            last[1] = nxt - 1
        else:
            segments.append([x, nxt - 1, ports])
    return [(lo, hi, pl, ph) for lo, hi, ps in segments for pl, ph in ps]


def _peer_text(version: int, lo: int, hi: int, text: dict[int, str] | None = None) -> str:
    """An address, a CIDR when [lo, hi] is exactly one prefix, else a range `a-b`; `text` caches
    address texts across calls (the same peers recur for many pods)."""
    if text is None:
        text = {}
    a = text.get(lo)
    if a is None:
        a = text[lo] = str(ipaddress.IPv4Address(lo) if version == 4 else ipaddress.IPv6Address(lo))
    if lo == hi:
        return a
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo & (size - 1) == 0:  # aligned power of two: one prefix
        return f"{a}/{(32 if version == 4 else 128) - size.bit_length() + 1}"
    b = text.get(hi)
    if b is None:
        b = text[hi] = str(ipaddress.IPv4Address(hi) if version == 4 else ipaddress.IPv6Address(hi))
    return f"{a}-{b}"


def _port_text(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def set_name(direction: str, kind: str, version: int) -> str:
    """e.g. ingress-ports4: kind is one of KINDS."""
    return f"{direction}-{kind}{version}"


# isolated: the pod addresses; exact: pod . peer address . proto . one port; pair: pod . peer address
# (every protocol and port) -- both plain hash sets; ports and any: the same with peer ranges/CIDRs
# and port ranges -- concatenated interval sets (pipapo).
KINDS = ("isolated", "exact", "pair", "ports", "any")


def _hash_element(al: Allow, lo: int, pod_text: str, text: dict[int, str], exact: set[str], pair: set[str]) -> None:
    """An allow towards one peer address with one port (or none): its one hash-set element."""
    peer = text.get(lo)
    if peer is None:
        peer = text[lo] = str(al.peer.network_address)
    if al.proto is None:
        pair.add(f"{pod_text} . {peer}")
    else:
        exact.add(f"{pod_text} . {peer} . {al.proto} . {al.first_port}")


def _pod_elements(direction: str, pod: Addr, allows: Iterable[Allow],
                  text: dict[int, str]) -> dict[str, frozenset[str]]:
    """One pod address's allow elements, by set name.

    Allows towards one peer address with one port (or no port) -- what pod selectors give, nearly
    all of a real ruleset -- go to the hash sets. The kernel inserts and removes those in constant
    time, while each removal from a pipapo set costs time in the set's size (200 deletes among 30k
    elements: 3.2 s; 2,000: 32 s, a commit that holds the nft lock for everything else). The rest
    (CIDRs, ranges) is normalised into disjoint boxes for the interval sets, as the kernel demands."""
    v = pod.version
    bits = 32 if v == 4 else 128
    pod_text = str(pod)
    exact: set[str] = set()
    pair: set[str] = set()
    boxes: dict[str | None, list[tuple[int, int, int, int]]] = {}
    for al in allows:
        lo = int(al.peer.network_address)  # hi by arithmetic: broadcast_address is slow to compute
        if al.peer.prefixlen == bits and (al.proto is None or al.first_port == al.last_port):
            _hash_element(al, lo, pod_text, text, exact, pair)
            continue
        boxes.setdefault(al.proto, []).append(
            (lo, lo + (1 << (bits - al.peer.prefixlen)) - 1, al.first_port, al.last_port))
    ports: set[str] = set()
    anys: set[str] = set()
    for proto, items in boxes.items():
        for lo, hi, pl, ph in _boxes(items):
            peer = _peer_text(v, lo, hi, text)
            if proto is None:
                anys.add(f"{pod_text} . {peer}")
            else:
                ports.add(f"{pod_text} . {peer} . {proto} . {_port_text(pl, ph)}")
    return {set_name(direction, "exact", v): frozenset(exact), set_name(direction, "pair", v): frozenset(pair),
            set_name(direction, "ports", v): frozenset(ports), set_name(direction, "any", v): frozenset(anys)}


def _changed_elements(direction: str, pod: Addr, was: frozenset[Allow], had: dict[str, frozenset[str]],
                      allows: frozenset[Allow], text: dict[int, str]) -> dict[str, frozenset[str]] | None:
    """A pod's elements after its allows went from `was` (rendered as `had`) to `allows`, from the
    allows that came and went alone, when all of them are hash-set elements (one peer address, one
    port or none: one element each, its own); None when an interval one is among them (its boxes
    are normalised with the pod's others: render the pod again). A peer pod coming or going
    changes a few allows of a pod that has hundreds."""
    gone, came = was - allows, allows - was
    if len(gone) + len(came) > len(allows) // 2:
        return None
    bits = 32 if pod.version == 4 else 128
    for al in chain(gone, came):
        if al.peer.prefixlen != bits or al.proto is not None and al.first_port != al.last_port:
            return None
    out = dict(had)
    pod_text = str(pod)
    for allows_, verb in ((gone, "delete"), (came, "add")):
        if not allows_:
            continue
        exact: set[str] = set()
        pair: set[str] = set()
        for al in allows_:
            _hash_element(al, int(al.peer.network_address), pod_text, text, exact, pair)
        for kind, texts in (("exact", exact), ("pair", pair)):
            if texts:
                name = set_name(direction, kind, pod.version)
                out[name] = out[name] - texts if verb == "delete" else out[name] | texts
    return out


class ElementCache:
    """Rendered elements per (direction, pod address), reused while the pod's allows are the same
    frozenset (the compiler keeps it for pods a change does not touch): a sync renders only the
    pods that changed. Entries of pods gone from the ruleset are dropped at each use."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, Addr], tuple[frozenset[Allow], dict[str, frozenset[str]]]] = {}
        self.text: dict[int, dict[int, str]] = {4: {}, 6: {}}  # peer address texts per family (peers recur)

    def pod(self, direction: str, pod: Addr, allows: frozenset[Allow]) -> dict[str, frozenset[str]]:
        key = (direction, pod)
        hit = self.entries.get(key)
        if hit is not None and (hit[0] is allows or hit[0] == allows):
            return hit[1]
        text = self.text[pod.version]
        if len(text) > 1_000_000:  # peers come and go: bound the text memo
            text.clear()
        found = _changed_elements(direction, pod, hit[0], hit[1], allows, text) if hit is not None else None
        if found is None:
            found = _pod_elements(direction, pod, allows, text)
        self.entries[key] = (allows, found)
        return found

    def retain(self, keys: set[tuple[str, Addr]]) -> None:
        for key in [k for k in self.entries if k not in keys]:
            del self.entries[key]


def elements(rs: Ruleset, cache: ElementCache | None = None) -> dict[str, frozenset[str]]:
    """Every set of the table -> its element texts (disjoint, canonical). Memoised on `rs` (the
    sync and the conntrack check of one ruleset share it)."""
    memo = rs.__dict__.get("_elements")
    if memo is not None:
        return memo
    if cache is None:
        cache = ElementCache()
    acc: dict[str, set[str]] = {set_name(d, k, v): set() for d in DIRECTIONS for k in KINDS for v in (4, 6)}
    used: set[tuple[str, Addr]] = set()
    for direction in DIRECTIONS:
        for a in rs.isolated(direction):
            acc[set_name(direction, "isolated", a.version)].add(str(a))
        for pod, allows in rs.by_pod(direction).items():
            used.add((direction, pod))
            for name, texts in cache.pod(direction, pod, allows).items():
                acc[name].update(texts)
    cache.retain(used)
    out: dict[str, frozenset[str]] = {name: frozenset(texts) for name, texts in acc.items()}
    for v in (4, 6):
        bits = 32 if v == 4 else 128
        spans = _merge((int(n.network_address), int(n.network_address) + (1 << (bits - n.prefixlen)) - 1)
                       for n in rs.local if n.version == v)
        out[f"local{v}"] = frozenset(_peer_text(v, lo, hi) for lo, hi in spans)
        out[f"known{v}"] = frozenset(str(a) for a in rs.known if a.version == v)
    object.__setattr__(rs, "_elements", out)
    return out


def render_changes(old: Ruleset, new: Ruleset, cache: ElementCache) -> str | None:
    """render_diff(old, new) computed from the pods whose allows changed, not from the whole node:
    what a daemon's sync sends. Both rulesets carry groups, and `cache` holds the elements of `old`
    (elements(old, cache) or a render_changes to `old` used it): an unchanged pod keeps its very
    frozenset, so it costs one identity check. Elements of different pods never coincide (each
    starts with the pod's address), so the set diff is the union of per-pod diffs. None when the
    fixed part or the local CIDRs changed (then render_full)."""
    if old.log != new.log or old.local != new.local or old.groups is None or new.groups is None:
        return None
    dels: dict[str, set[str]] = {}
    adds: dict[str, set[str]] = {}

    def diff(name: str, before: Iterable[str], after: Iterable[str]) -> None:
        b, a = set(before), set(after)
        if b - a:
            dels.setdefault(name, set()).update(b - a)
        if a - b:
            adds.setdefault(name, set()).update(a - b)

    for direction in DIRECTIONS:
        was, now = old.isolated(direction), new.isolated(direction)
        if was is not now:
            for v in (4, 6):
                name = set_name(direction, "isolated", v)
                diff(name, (str(a) for a in was - now if a.version == v), ())
                diff(name, (), (str(a) for a in now - was if a.version == v))
        before, after = old.groups[direction], new.groups[direction]
        for pod, allows in after.items():
            prev = before.get(pod)
            if prev is allows:
                continue
            hit = cache.entries.get((direction, pod))
            if prev is None:
                gone: dict[str, frozenset[str]] = {}
            elif hit is not None and hit[0] is prev:
                gone = hit[1]
            else:  # the cache lost it (another ruleset rendered meanwhile): render the old side again
                gone = _pod_elements(direction, pod, prev, cache.text[pod.version])
            made = cache.pod(direction, pod, allows)
            for name in gone.keys() | made.keys():
                g, m = gone.get(name, frozenset()), made.get(name, frozenset())
                if g is not m:
                    diff(name, g, m)
        for pod, prev in before.items():
            if pod in after:
                continue
            hit = cache.entries.pop((direction, pod), None)
            gone = hit[1] if hit is not None and hit[0] is prev else _pod_elements(
                direction, pod, prev, cache.text[pod.version])
            for name, texts in gone.items():
                diff(name, texts, ())
    if old.known is not new.known:
        for v in (4, 6):
            name = f"known{v}"
            diff(name, (str(a) for a in old.known - new.known if a.version == v), ())
            diff(name, (), (str(a) for a in new.known - old.known if a.version == v))
    t = nft.Table("inet", TABLE)
    out: list[str] = []
    for verb, changes in (("delete", dels), ("add", adds)):
        for n in sorted(changes):
            out.extend(nft.element_lines(t, n, changes[n], verb=verb))
    return "\n".join(out) + "\n" if out else ""


# ---- the table -----------------------------------------------------------------------------

def _direction_rules(direction: str) -> tuple[str, ...]:
    pod, peer = ("daddr", "saddr") if direction == "ingress" else ("saddr", "daddr")
    rules = []
    for v, fam in ((4, "ip"), (6, "ip6")):
        rules += [
            f"{fam} {pod} . {fam} {peer} . meta l4proto . th dport @{set_name(direction, 'exact', v)} return",
            f"{fam} {pod} . {fam} {peer} @{set_name(direction, 'pair', v)} return",
            f"{fam} {pod} . {fam} {peer} . meta l4proto . th dport @{set_name(direction, 'ports', v)} return",
            f"{fam} {pod} . {fam} {peer} @{set_name(direction, 'any', v)} return",
            f"{fam} {pod} @{set_name(direction, 'isolated', v)} goto {direction}-deny",
        ]
    return tuple(rules)


def table(rs: Ruleset) -> nft.Table:
    """The whole table: fixed chains and set declarations, the ruleset as elements.

    forward (after DNAT at -100): established/related first, then egress of the source and
    ingress of the destination; input: a pod's egress to the node itself (ND always passes).
    Node-originated traffic (kubelet probes) takes output, which this table does not hook.
    """
    t = nft.Table("inet", TABLE)
    t.add_chain(nft.Chain("forward", ("ct state established,related accept", _ND,
                                      "ip daddr @local4 ip daddr != @known4 counter drop",
                                      "ip saddr @local4 ip saddr != @known4 counter drop",
                                      "ip6 daddr @local6 ip6 daddr != @known6 counter drop",
                                      "ip6 saddr @local6 ip6 saddr != @known6 counter drop",
                                      "jump egress", "jump ingress"),
                          nft.Hook("filter", "forward", 0)))
    t.add_chain(nft.Chain("input", ("ct state established,related accept", _ND,
                                    "jump egress"), nft.Hook("filter", "input", 0)))
    lg = rs.log
    for direction in DIRECTIONS:
        t.add_chain(nft.Chain(direction, _direction_rules(direction)))
        short = "in" if direction == "ingress" else "out"
        t.add_chain(nft.Chain(f"{direction}-deny", (
            f"limit rate {lg.rate}/second burst {lg.burst} packets counter log prefix pw-deny-{short} "
            f"group {lg.group}",
            "counter drop")))
    els = elements(rs)
    for direction in DIRECTIONS:
        for v, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            n = set_name(direction, "isolated", v)
            t.add_set(nft.Set(n, addr, elements=els[n]))
            n = set_name(direction, "exact", v)
            t.add_set(nft.Set(n, f"{addr} . {addr} . inet_proto . inet_service", elements=els[n]))
            n = set_name(direction, "pair", v)
            t.add_set(nft.Set(n, f"{addr} . {addr}", elements=els[n]))
            n = set_name(direction, "ports", v)
            t.add_set(nft.Set(n, f"{addr} . {addr} . inet_proto . inet_service", ("interval",), elements=els[n]))
            n = set_name(direction, "any", v)
            t.add_set(nft.Set(n, f"{addr} . {addr}", ("interval",), elements=els[n]))
    for v, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        t.add_set(nft.Set(f"local{v}", addr, ("interval",), elements=els[f"local{v}"]))
        t.add_set(nft.Set(f"known{v}", addr, elements=els[f"known{v}"]))
    return t


def render_full(rs: Ruleset) -> str:
    """One `nft -f` transaction that makes the kernel's table exactly `rs`, whatever it held.

    Deletes and recreates the table (no set here is filled by the packet path, nothing to keep).
    Not `flush`: removing the elements of a loaded concatenated interval set costs time in the set's
    size per element (pipapo), in the commit, without rescheduling: a flush of 8.4k elements took
    10 s and one of 264k held a CPU for over 30 minutes (bench/policy_scale.py); a delete takes 0.03 s."""
    return nft.render_full(table(rs), keep_dynamic=False)


def render_diff(old: Ruleset, new: Ruleset, before: dict[str, frozenset[str]] | None = None,
                after: dict[str, frozenset[str]] | None = None) -> str | None:
    """Element deletes, then adds, taking a kernel holding `old` to `new` in one transaction;
    "" when nothing changed; None when the fixed part changed (then render_full). A delete of an
    element the kernel lacks fails the whole transaction: the caller falls back to render_full.
    `before`/`after`: elements(old)/elements(new) when the caller has them (a sync keeps the
    applied ruleset's, so each change computes only the new side)."""
    if old.log != new.log:
        return None
    t = nft.Table("inet", TABLE)
    before = elements(old) if before is None else before
    after = elements(new) if after is None else after
    out: list[str] = []
    for verb, a, b in (("delete", before, after), ("add", after, before)):
        for n in sorted(a):
            changed = a[n] - b[n]
            if changed:
                out.extend(nft.element_lines(t, n, changed, verb=verb))
    return "\n".join(out) + "\n" if out else ""
