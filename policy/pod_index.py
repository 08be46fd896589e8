"""PodIndex: the pod side of a policy.model.Cluster, kept up to date one record at a time.

A sync used to build its Cluster from every pod record (sort 150k keys, hash every address into
`pods_by_ip`): 0.9 s per sync at 150k pods, whatever the change. The Store now feeds this index the
records that changed, and a snapshot rebuilds only the namespaces and addresses they touched. The
result is what Cluster.build gives for the same records (tests/unit/test_policy_store_snapshot.py
checks it over random histories): per namespace its policed pods sorted by name; per address of a
policed pod the owner with the smallest (namespace, name), the address in `ip_conflicts` when more
than one claim it (a pod listing it twice included).
"""
from __future__ import annotations

from policy.model import IPAddress, Pod

Key = tuple[str, str]


class PodIndex:
    def __init__(self) -> None:
        self.records: dict[Key, Pod] = {}  # every pod, by key
        self._by_ns: dict[str, dict[str, Pod]] = {}  # policed pods
        # address -> the policed pod listing it once (nearly always), or {pod: times listed} when
        # several do (or one twice): a dict per address would cost ~270 bytes per pod of the cluster
        self._claims: dict[IPAddress, Key | dict[Key, int]] = {}
        self._by_ip: dict[IPAddress, Pod] = {}
        self._conflicts: set[IPAddress] = set()
        self._tuples: dict[str, tuple[Pod, ...]] = {}
        self._dirty_ns: set[str] = set()
        self._dirty_ips: set[IPAddress] = set()

    def put(self, key: Key, record: Pod | None) -> None:
        """`record` is now the pod at `key` (None: there is none)."""
        old = self.records.get(key)
        if old is record:
            return
        if old is not None:
            del self.records[key]
            if old.policed:
                names = self._by_ns[old.namespace]
                del names[old.name]
                if not names:
                    del self._by_ns[old.namespace]
                self._dirty_ns.add(old.namespace)
                for ip in old.ips:
                    _unclaim(self._claims, ip, key)
                    self._dirty_ips.add(ip)
        if record is not None:
            self.records[key] = record
            if record.policed:
                self._by_ns.setdefault(record.namespace, {})[record.name] = record
                self._dirty_ns.add(record.namespace)
                for ip in record.ips:
                    _claim(self._claims, ip, key)
                    self._dirty_ips.add(ip)

    def parts(self) -> tuple[dict[str, tuple[Pod, ...]], dict[IPAddress, Pod], tuple[IPAddress, ...]]:
        """(policed pods per namespace, owner per address, conflicting addresses): fresh dicts, the
        caller's to keep (a snapshot must not change under a sync)."""
        for ip in self._dirty_ips:
            claims = self._claims.get(ip)
            if claims is None:
                self._by_ip.pop(ip, None)
                self._conflicts.discard(ip)
            elif isinstance(claims, tuple):  # one pod, once
                self._by_ip[ip] = self.records[claims]
                self._conflicts.discard(ip)
            else:
                self._by_ip[ip] = self.records[min(claims)]
                self._conflicts.add(ip)  # a dict only while more than one claim
        for ns in self._dirty_ns:
            names = self._by_ns.get(ns)
            if names:
                self._tuples[ns] = tuple(names[n] for n in sorted(names))
            else:
                self._tuples.pop(ns, None)
        self._dirty_ips.clear()
        self._dirty_ns.clear()
        return (dict(self._tuples), dict(self._by_ip),
                tuple(sorted(self._conflicts, key=lambda ip: (ip.version, ip))))


def _claim(claims: dict, ip: IPAddress, key: Key) -> None:
    cur = claims.get(ip)
    if cur is None:
        claims[ip] = key
    elif type(cur) is tuple:
        claims[ip] = {cur: 1} if cur != key else {}
        claims[ip][key] = claims[ip].get(key, 0) + 1
    else:
        cur[key] = cur.get(key, 0) + 1


def _unclaim(claims: dict, ip: IPAddress, key: Key) -> None:
    cur = claims[ip]
    if type(cur) is tuple:
        del claims[ip]
        return
    cur[key] -= 1
    if not cur[key]:
        del cur[key]
    if len(cur) == 1 and next(iter(cur.values())) == 1:  # back to one claim, once
        claims[ip] = next(iter(cur))
