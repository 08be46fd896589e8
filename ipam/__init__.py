"""host-local IPAM as a library, imported in-process by the CNI plugin (and the node daemon).

    cfg = IPAMConfig.from_json(netconf["ipam"], netconf["name"])   # ipam.config
    store = DiskStore.for_config(cfg)                               # ipam.store
    allocs = allocator.allocate(cfg, store, container_id, ifname)   # ipam.allocator

Failures are ipam.errors.IPAMError(code, msg, details) with CNI error codes. On disk
it keeps the reference host-local plugin's layout, so a node can switch either way.
Nothing is imported here: the plugin pays only for the modules it uses.
"""
