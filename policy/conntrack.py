"""Deleting the conntrack entries of flows a policy change now denies (issue 11, item 4).

The policy table accepts `ct state established,related` before any lookup (ruleset.table()), so a
removed allow only stops *new* flows; an established connection lives as long as its conntrack
entry. After each sync the daemon calls ConntrackCleaner(old, new): it lists only the entries that
touch a pod which may have lost an allow (`affected`), judges each with the same evaluator the tests
use for the table (FlowCheck: what the kernel would decide for the flow's first packet), and deletes
the denied ones by their original tuple, so no other flow is touched.

The policy hooks run after the proxy's DNAT, so a flow is judged on its post-DNAT destination, which
conntrack shows as the reply direction's source. Flows the node itself opened (kubelet probes) take
`output`, which the table does not hook: they are never judged, so never deleted.

Pure: affected(), now_denied(), parse_line(), delete_message(). Edge: ConntrackCleaner lists with the
`conntrack` CLI (filtered per address; nsenter for another netns) and deletes over ctnetlink
(netkit.conntrack, the one home of netlink conntrack code), one hash lookup per entry, where
`conntrack -D` walks the whole table per entry; it never raises into the sync.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Union

from netkit import conntrack as ctnl
from policy.flowcheck import FlowCheck
from policy.ruleset import DIRECTIONS, PROTOCOLS, Ruleset

Addr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

log = logging.getLogger(__name__)

ICMP = ("icmp", "icmpv6")
# More per-address listings than this: one full listing is cheaper. A filtered `conntrack -L` still
# walks the whole table (measured, 10,000 entries: 46-106 ms filtered, 106 ms full + ~40 ms to parse
# it with the `keep` pre-check), so filtered listings pay off for one or two addresses only.
FULL_LIST_ABOVE = 2
_TIMEOUT = 60.0


def conntrack_binary() -> str:
    for path in ("/usr/sbin/conntrack", "/sbin/conntrack", "/usr/bin/conntrack"):
        if os.access(path, os.X_OK):
            return path
    return "conntrack"


# ---- which pods may have lost an allow --------------------------------------------------------

def affected(old: Ruleset | None, new: Ruleset) -> dict[str, frozenset[Addr]]:
    """Per direction, the local pods whose flows in that direction may be denied now: isolated in
    `new` and either not isolated in `old` or with an Allow of `old` missing from `new` (whether
    another allow still covers the flow is decided per flow by now_denied). Only additions: empty.
    `old` None (first sync after a start): every isolated pod, as a change may have been missed."""
    out: dict[str, frozenset[Addr]] = {}
    for d in DIRECTIONS:
        isolated = new.isolated(d)
        if old is None:
            out[d] = isolated
            continue
        was_isolated = old.isolated(d)
        now = new.by_pod(d)  # per pod: an unchanged pod keeps its very group (no O(node) set difference)
        lost = set()
        for pod, group in old.by_pod(d).items():
            kept = now.get(pod)
            if kept is not group and (kept is None or not group <= kept):
                lost.add(pod)
        out[d] = frozenset(p for p in isolated if p not in was_isolated or p in lost)
    return out


# ---- one conntrack entry ----------------------------------------------------------------------

@dataclass(frozen=True)
class Flow:
    """One conntrack entry, typed. Ports for tcp/udp/sctp; `icmp` = (type, code, id) for icmp/icmpv6.
    reply_src/reply_sport are the post-DNAT destination the policy hooks see."""
    proto: str
    src: Addr
    dst: Addr
    reply_src: Addr
    sport: int | None = None
    dport: int | None = None
    reply_sport: int | None = None
    icmp: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.proto not in PROTOCOLS + ICMP:
            raise ValueError(f"flow protocol {self.proto!r:.20} not one of {PROTOCOLS + ICMP}")
        for a in (self.src, self.dst, self.reply_src):
            if type(a) not in (ipaddress.IPv4Address, ipaddress.IPv6Address):
                raise ValueError(f"flow address {a!r:.60} is not an address")
        if not self.src.version == self.dst.version == self.reply_src.version:
            raise ValueError("flow with mixed IP families")
        if (self.proto == "icmpv6") != (self.src.version == 6) and self.proto in ICMP:
            raise ValueError(f"{self.proto} flow over IPv{self.src.version}")
        if self.proto in PROTOCOLS:
            for p in (self.sport, self.dport, self.reply_sport):
                if type(p) is not int or not 0 <= p <= 65535:
                    raise ValueError(f"flow port {p!r:.20} is not an integer 0-65535")
            if self.icmp is not None:
                raise ValueError("a port protocol flow has no icmp fields")
        else:
            if self.icmp is None or len(self.icmp) != 3 or any(type(v) is not int for v in self.icmp) \
                    or not (0 <= self.icmp[0] <= 255 and 0 <= self.icmp[1] <= 255 and 0 <= self.icmp[2] <= 65535):
                raise ValueError(f"icmp fields {self.icmp!r:.40} are not (type 0-255, code 0-255, id 0-65535)")
            if (self.sport, self.dport, self.reply_sport) != (None, None, None):
                raise ValueError("an icmp flow has no ports")


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ValueError(f"port {text!r:.20}")
    return int(text)


def _byte(text: str) -> int:
    if not text.isdigit() or len(text) > 3 or int(text) > 255:
        raise ValueError(f"icmp field {text!r:.20}")
    return int(text)


def _address(text: str, cache: dict[str, Addr] | None) -> Addr:
    if cache is None:
        return ipaddress.ip_address(text)
    a = cache.get(text)
    if a is None:
        a = cache[text] = ipaddress.ip_address(text)
    return a


def _order(f: Flow) -> tuple:
    return (f.src.version, f.proto, int(f.src), int(f.dst), f.sport or 0, f.dport or 0, f.icmp or ())


def parse_line(line: str, addrs: dict[str, Addr] | None = None) -> Flow | None:
    """One line of `conntrack -L` (default output); None for a protocol policy does not judge by
    tuple (gre, …); ValueError for a line that is not a conntrack entry. `addrs` caches parsed
    addresses across lines: the same pod addresses recur, and ipaddress costs ~30 µs an address here."""
    tokens = line.split()
    if len(tokens) < 3 or not tokens[1].isdigit():
        raise ValueError(f"not a conntrack entry: {line!r:.120}")
    proto = tokens[0]
    if proto not in PROTOCOLS + ICMP:
        return None
    pairs = [t.split("=", 1) for t in tokens[2:] if "=" in t]
    srcs = [i for i, (k, _) in enumerate(pairs) if k == "src"]
    if len(srcs) != 2:
        raise ValueError(f"entry without two tuples: {line!r:.120}")
    orig = dict(pairs[srcs[0]:srcs[1]])
    reply = dict(pairs[srcs[1]:])
    try:
        src, dst, rsrc = (_address(t, addrs) for t in (orig["src"], orig["dst"], reply["src"]))
        if proto in PROTOCOLS:
            return Flow(proto, src, dst, rsrc, _port(orig["sport"]), _port(orig["dport"]), _port(reply["sport"]))
        ident = _port(orig["id"])
        return Flow(proto, src, dst, rsrc, icmp=(_byte(orig["type"]), _byte(orig["code"]), ident))
    except KeyError as e:
        raise ValueError(f"entry without {e}: {line!r:.120}") from None


def _src_texts(line: str) -> tuple[str, str] | None:
    """The original and the reply source as they stand in a line, without parsing the rest."""
    i = line.find(" src=")
    j = line.find(" src=", i + 5) if i >= 0 else -1
    if j < 0:
        return None
    return line[i + 5:line.find(" ", i + 5)], line[j + 5:line.find(" ", j + 5)]


def parse_listing(text: str, keep: Callable[[Addr, Addr], bool] | None = None) -> tuple[list[Flow], int, int]:
    """(flows, lines of other protocols, unparseable lines) of a `conntrack -L` stdout. `keep`
    (original source, reply source): a line it refuses is passed over before the costly part of
    the parse (a full listing holds mostly flows no change touched)."""
    flows: list[Flow] = []
    addrs: dict[str, Addr] = {}
    other = bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            if keep is not None:
                srcs = _src_texts(line)
                if srcs is not None and not keep(_address(srcs[0], addrs), _address(srcs[1], addrs)):
                    continue
            f = parse_line(line, addrs)
        except ValueError:
            bad += 1
            continue
        if f is None:
            other += 1
        else:
            flows.append(f)
    return flows, other, bad


# ---- the verdict ------------------------------------------------------------------------------

def now_denied(flows: Iterable[Flow], new: Ruleset, exempt: frozenset[Addr] = frozenset(),
               check: FlowCheck | None = None) -> list[Flow]:
    """The flows whose first packet `new` would drop, judged as FlowCheck does: source = original
    source, destination and port = post-DNAT (the reply's source). ICMP (and a port-0 flow) can
    only match an allow without ports, as in the kernel, where `meta l4proto . th dport` never
    matches their elements: FlowCheck.passes with no port protocol gives exactly that. Flows from
    `exempt` sources (the node's own addresses: its traffic takes `output`, which is not hooked)
    are never denied."""
    fc = check or FlowCheck(new)
    out = []
    for f in flows:
        if f.src in exempt:
            continue
        if f.proto in PROTOCOLS and f.reply_sport:
            ok = fc.allows(f.src, f.reply_src, f.proto, f.reply_sport)
        else:
            ok = fc.passes("egress", f.src, f.reply_src, f.proto, 0) and \
                fc.passes("ingress", f.reply_src, f.src, f.proto, 0)
        if not ok:
            out.append(f)
    return out


def _tuple(f: Flow) -> ctnl.Tuple:
    return ctnl.Tuple(ctnl.PROTO_NUMBERS[f.proto], f.src, f.dst, f.sport or 0, f.dport or 0, f.icmp)


def delete_message(f: Flow) -> bytes:
    """The body of a ctnetlink delete of exactly this entry: nfgenmsg + its original tuple. The
    kernel looks the tuple up in its hash (zone 0), so no other entry can match."""
    return _tuple(f).delete_message()


def delete_flows(flows: list[Flow], netns_path: str | None = None) -> int:
    """Deletes each entry by its original tuple (netkit.conntrack, batched); returns how many the
    kernel deleted (an entry that ended meanwhile is not counted)."""
    return ctnl.delete([_tuple(f) for f in flows], netns_path)


# ---- the edge ---------------------------------------------------------------------------------

@dataclass
class Cleanup:
    """What one call did (also on failure: errors filled, nothing raised)."""
    affected: int = 0
    listings: int = 0
    listed: int = 0
    other: int = 0
    unparseable: int = 0
    denied: int = 0
    deleted: int = 0
    seconds: float = 0.0
    list_seconds: float = 0.0
    delete_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class ConntrackCleaner:
    """`cleaner(old, new)` after a policy sync: deletes the now-denied flows' entries, returns how many.

    Lists per affected address (`--src` for egress, `--reply-src` for ingress: the post-DNAT
    destination), or once in full above FULL_LIST_ABOVE such listings; deletes in netlink batches.
    `last` holds the figures of the latest call."""

    def __init__(self, netns_path: str | None = None, full_list_above: int = FULL_LIST_ABOVE):
        self.netns_path = netns_path
        self.prefix = ["nsenter", f"--net={netns_path}"] if netns_path else []
        self.full_list_above = full_list_above
        self.last = Cleanup()

    def __call__(self, old: Ruleset | None, new: Ruleset) -> int:
        t0 = time.monotonic()
        rep = Cleanup()
        try:
            self._clean(old, new, rep)
        except Exception as e:  # never into the caller's sync: the next sync retries (old None if it must)
            rep.errors.append(f"{type(e).__name__}: {e}")
        rep.seconds = time.monotonic() - t0
        for err in rep.errors:
            log.warning("policy conntrack cleanup: %s", err)
        self.last = rep
        return rep.deleted

    def _run(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.prefix + argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT)

    def _node_addresses(self) -> frozenset[Addr]:
        r = self._run(["ip", "-j", "addr", "show"])
        if r.returncode != 0:
            raise RuntimeError(f"ip addr: {r.stderr.strip()[:200]}")
        out = set()
        for link in json.loads(r.stdout):
            for a in link.get("addr_info", ()):
                out.add(ipaddress.ip_address(str(a.get("local", "")).split("%")[0]))
        return frozenset(out)

    def _list(self, args: list[str], rep: Cleanup,
              keep: Callable[[Addr, Addr], bool] | None = None) -> list[Flow]:
        rep.listings += 1
        t0 = time.monotonic()
        r = self._run([conntrack_binary(), "-L", *args])
        if r.returncode != 0:
            rep.errors.append(f"conntrack -L {' '.join(args)}: {r.stderr.strip()[:200]}")
            return []
        flows, other, bad = parse_listing(r.stdout, keep)
        rep.other += other
        rep.unparseable += bad
        rep.list_seconds += time.monotonic() - t0
        return flows

    def _clean(self, old: Ruleset | None, new: Ruleset, rep: Cleanup) -> None:
        hit = affected(old, new)
        ingress, egress = hit["ingress"], hit["egress"]
        rep.affected = len(ingress | egress)
        if not rep.affected:
            return
        flows: set[Flow] = set()
        if len(ingress) + len(egress) > self.full_list_above:
            flows.update(self._list([], rep, lambda src, rsrc: src in egress or rsrc in ingress))
        else:
            for opt, addrs in (("--src", egress), ("--reply-src", ingress)):
                for a in sorted(addrs, key=lambda x: (x.version, int(x))):
                    flows.update(self._list(["-f", f"ipv{a.version}", opt, str(a)], rep))
        rep.listed = len(flows)
        if not flows:
            return
        denied = now_denied(sorted(flows, key=_order), new, self._node_addresses())
        rep.denied = len(denied)
        if not denied:
            return
        # `conntrack -D` (also batched in `-R`) dumps the whole table per entry: 488 deletions among
        # 1,000 entries took 7-10 s; a ctnetlink delete by tuple is a hash lookup.
        t0 = time.monotonic()
        rep.deleted = delete_flows(denied, self.netns_path)
        rep.delete_seconds = time.monotonic() - t0
