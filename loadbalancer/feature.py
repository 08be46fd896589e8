"""LoadBalancer addresses as a daemon feature (node_daemon.features): watches, Leases, two runners.

Every daemon runs both halves; the Leases decide who acts:
- the allocator (loadbalancer.controller) acts only on the daemon holding the
  `podwire-lb-allocator` Lease: exactly one writer of Service addresses in the cluster;
- the announcer (loadbalancer.announce) runs everywhere: a node holding an address's Lease
  answers ARP/NDP for it (loadbalancer.responder), on the interface its route to it leaves by.
Both runners wake every second to keep their Leases (cheap: nothing to write while a lease is
young); the allocation and the eligibility are recomputed only when an object changed, or every
resync interval.
"""
from __future__ import annotations

import copy
import functools
import logging
import threading
import time

from node_daemon.runner import SyncRunner

from .announce import Announcer
from .controller import Allocator, Writer
from .lease import LEASE_LABEL, Leases

log = logging.getLogger(__name__)

ALLOCATOR_LEASE = "podwire-lb-allocator"
TICK = 1.0  # seconds between lease checks


class Responders:
    """One loadbalancer.responder.Responder per interface, started when an address needs it.
    ARP and NDP only work on the link the asker is on, so an address is answered on the interface
    whose own subnet holds it (or `fixed`); a node with no such link cannot answer for it."""

    def __init__(self, fixed: str | None = None):
        self.fixed = fixed
        self._by_if: dict = {}
        self._lock = threading.Lock()
        self._links: list = []  # (ifname, ip_interface), read by refresh_links

    def refresh_links(self) -> None:
        """The node's interface subnets, read once per recomputation (not per address)."""
        import ipaddress

        from pyroute2 import IPRoute

        links = []
        try:
            with IPRoute() as ipr:
                names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
                for a in ipr.get_addr():
                    name, addr = names.get(a["index"]), a.get("IFA_ADDRESS")
                    if name and name != "lo" and addr and a.get("scope") == 0:
                        links.append((name, ipaddress.ip_interface(f"{addr}/{a['prefixlen']}")))
        except Exception as e:  # noqa: BLE001 - keep the last view: answering must not stop on a hiccup
            log.warning("cannot read the node's addresses: %s", e)
            return
        self._links = links

    def interface_for(self, ip) -> str | None:
        if self.fixed:
            return self.fixed
        # the most specific subnet wins (a /24 on eth0 over a /16 on another link)
        on = [(iface.network.prefixlen, name) for name, iface in self._links
              if iface.version == ip.version and ip in iface.network and iface.ip != ip]
        return max(on)[1] if on else None

    def set_addresses(self, addrs) -> None:
        from .responder import Responder

        want: dict[str, set] = {}
        for ip in addrs:
            ifname = self.interface_for(ip)
            if ifname:
                want.setdefault(ifname, set()).add(ip)
        with self._lock:
            for ifname, ips in want.items():
                r = self._by_if.get(ifname)
                if r is None:
                    try:
                        r = self._by_if[ifname] = Responder(ifname)
                    except (OSError, ValueError) as e:  # gone, or not an Ethernet link
                        log.error("cannot answer ARP/NDP on %s: %s", ifname, e)
                        continue
                try:
                    r.set_addresses(ips)
                except (ValueError, RuntimeError) as e:  # e.g. IPv6 disabled on that link
                    log.error("cannot answer for %s on %s: %s", ", ".join(map(str, sorted(ips, key=str))), ifname, e)
            for ifname, r in self._by_if.items():
                if ifname not in want:
                    r.set_addresses(())

    def stop(self) -> None:
        with self._lock:
            for r in self._by_if.values():
                r.stop()
            self._by_if.clear()


class _Sync:
    """A runner's sync, every tick: work(fresh) with fresh True when objects changed (or at
    resync), so the work can keep its leases every tick and recompute only when needed."""

    def __init__(self, work, resync: float, gate=lambda: True, clock=time.monotonic):
        self.work, self.resync, self.gate, self.clock = work, resync, gate, clock
        self.dirty = True
        self.last = -float("inf")

    def mark(self) -> None:
        self.dirty = True

    def __call__(self) -> None:
        if not self.gate():
            self.dirty = True  # becoming leader later: decide afresh
            return
        now = self.clock()
        fresh = self.dirty or now - self.last >= self.resync
        if fresh:
            self.dirty = False
            self.last = now
        self.work(fresh)


def start(host) -> list:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from .from_api import cluster_addresses

    cfg = host.cfg
    core, discovery = client.CoreV1Api(host.api), client.DiscoveryV1Api(host.api)
    coord, custom = client.CoordinationV1Api(host.api), client.CustomObjectsApi(host.api)
    # lease writes without urllib3's retries (3 by default, each up to the timeout): a holder
    # cut off from the API server must find out, and stop answering, within the lease duration
    lease_cfg = copy.copy(host.api.configuration)
    lease_cfg.retries = False
    lease_api = client.CoordinationV1Api(client.ApiClient(lease_cfg))
    leases = Leases(lease_api, cfg.loadbalancer_namespace, cfg.node_name,
                    duration=float(cfg.loadbalancer_lease_seconds),
                    renew_every=max(1.0, cfg.loadbalancer_lease_seconds / 3))
    writer = Writer(host.api, cfg.node_name)
    runners: list[SyncRunner] = []

    def trigger(*_):
        for s in syncs:
            s.mark()
        for r in runners:
            r.trigger()

    services = host.watch(core.list_service_for_all_namespaces, "lb-services", trigger)
    pools = host.watch(functools.partial(custom.list_cluster_custom_object, "podwire.io", "v1alpha1",
                                         "loadbalancerpools"), "loadbalancerpools", trigger)
    slices = host.watch(discovery.list_endpoint_slice_for_all_namespaces, "lb-endpointslices", trigger)
    lease_informer = host.watch(functools.partial(coord.list_namespaced_lease, cfg.loadbalancer_namespace),
                                "lb-leases", leases.observe, label_selector=LEASE_LABEL)
    host.on_node(trigger)

    # the Service CIDRs (ServiceCIDR, GA in 1.33): pools must not overlap them. An API server that
    # does not serve the kind leaves only the nodes' and the configured pod CIDRs to check against.
    net = client.NetworkingV1Api(host.api)
    service_cidrs = host.watch(net.list_service_cidr, "lb-servicecidrs", trigger)
    try:
        net.list_service_cidr(limit=1, _request_timeout=10)
    except ApiException as e:
        if e.status in (403, 404):  # its informer would retry forever and hold the allocator back
            service_cidrs = None
            log.warning("ServiceCIDRs %s: pools are checked against pod CIDRs and node addresses only",
                        "not served by this API server" if e.status == 404 else
                        "not readable (the manifest's ClusterRole grants list, watch)")
    except Exception:  # noqa: BLE001 - unreachable now: assume it is served, the informer retries
        pass

    def cluster():
        return cluster_addresses(host.nodes.list(), service_cidrs.list() if service_cidrs else (),
                                 cfg.cluster_cidrs)

    allocator = Allocator(services, pools, writer, cluster)
    announcer = Announcer(cfg.node_name, leases, services, slices, host.nodes,
                          Responders(None))
    alloc_sync = _Sync(lambda fresh: allocator.sync() if fresh else None, cfg.resync_interval,
                       gate=lambda: leases.hold(ALLOCATOR_LEASE, "allocator"))
    announce_sync = _Sync(announcer.sync, cfg.resync_interval)
    syncs = [alloc_sync, announce_sync]

    informers = [i for i in (services, pools, slices, lease_informer, service_cidrs) if i is not None]

    def synced() -> bool:
        return all(i.synced.is_set() for i in (*informers, host.nodes))

    # 50 ms between syncs at most: an event burst still comes in one sync, and a new Service's address is
    # written and announced without waiting out two longer floors (allocator, then announcer)
    runners += [SyncRunner(alloc_sync, name="lb-allocator", min_interval=0.05, resync_interval=TICK, ready=synced),
                SyncRunner(announce_sync, name="lb-announcer", min_interval=0.05, resync_interval=TICK,
                           ready=synced)]
    for part in (*informers, *runners):
        part.start()

    class _Stop:
        def stop(self) -> None:
            # announcer first: addresses move to another node at once instead of after a lease
            announcer.stop()
            announcer.responders.stop()
            leases.release(ALLOCATOR_LEASE, "allocator")

    # stopped in this order: runners (nothing takes a lease again), releases, informers
    return [*runners, _Stop(), *informers]
