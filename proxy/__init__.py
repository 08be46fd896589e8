"""podwire's Service proxy: API objects -> nftables, replacing kube-proxy.

Modules, in the order data flows through them:
  model      frozen dataclasses (Service, EndpointSlice, NodeInfo, ProxyConfig)
  from_api   API JSON dicts -> model; odd objects raise a Skip with the reason
  endpoints  which endpoints a service port uses here (ready / terminating / topology)
  plan       pure planner: one nftables table per IP family (Planner caches per Service)
  nft        nftables objects as data and the `nft -f` renderer
  sync       full sync, then in-memory diffs in one transaction each; NftRunner edge
  conntrack  stale UDP conntrack entries to delete, deleted over ctnetlink (netkit.conntrack)
  metrics    kube-proxy's metric names (prometheus_client)
  healthz    :10256 healthz/livez and the healthCheckNodePort servers
  proxier    the state holder the node daemon drives
  flowcheck  a packet-flow evaluator of planned rulesets (for tests)

Driving it from a watch loop (the node daemon):

    proxier = Proxier(node_name, ProxyConfig(cluster_cidrs=...),
                      {4: NftRunner(), 6: NftRunner()}, conntrack_runner=ConntrackRunner(),
                      service_health=ServiceHealthServers())
    HealthzServer(proxier.health, "0.0.0.0", 10256, proxier.metrics)
    proxier.metrics.serve(10249, "127.0.0.1")
    ... proxier.on_service(obj, deleted=False); proxier.on_slice(obj); proxier.on_node(obj)
    ... proxier.sync()                  # after the first LIST of all three, then rate-limited
    ... proxier.request_full_sync()     # periodically: rewrites the tables, repairs tampering
"""
