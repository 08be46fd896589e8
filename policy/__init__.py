"""NetworkPolicy as pure, typed data (issue 11).

API objects -> `policy.from_api` frozen records (`policy.model`, `policy.selector`) -> a `Cluster`
snapshot answered by `policy.verdict.verdict`. Nothing here does I/O or imports the API client.
"""
