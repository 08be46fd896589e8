"""LoadBalancer addresses: allocation, per-Service Lease election and ARP/NDP announcement."""
