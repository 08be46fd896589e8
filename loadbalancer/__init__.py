"""LoadBalancer addresses: pools, the allocator, per-address Lease election and ARP/NDP answers."""
