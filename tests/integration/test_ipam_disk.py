"""DiskStore for real: many plugin processes at once, and long allocate/release churn.

No root needed; everything lives in pytest's tmp dir.
"""

import json
import os
import subprocess
import sys

import pytest

from ipam import allocator
from ipam.addr import ip_address
from ipam.config import IPAMConfig
from ipam.store import DiskStore

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One CNI plugin run, reduced to IPAM: say "ready", wait for "go" on stdin, then act.
WORKER = r"""
import json, sys
from ipam import allocator
from ipam.config import IPAMConfig
from ipam.store import DiskStore
verb, cfg_json, cid = sys.argv[1:4]
cfg = IPAMConfig.from_json(json.loads(cfg_json), "net")
store = DiskStore.for_config(cfg)
print("ready", flush=True)
sys.stdin.readline()
if verb == "add":
    print(json.dumps([str(a.address) for a in allocator.allocate(cfg, store, cid, "eth0")]))
else:
    print(allocator.release(store, cid, "eth0"))
"""


def ipam_json(data_dir, *subnets):
    return {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": s}] for s in subnets]}


def run_parallel(verb, ipam, ids):
    """One process per id, released at once when all are up. Their answers, by id."""
    procs = {}
    try:
        for cid in ids:
            procs[cid] = subprocess.Popen(
                [sys.executable, "-c", WORKER, verb, json.dumps(ipam), cid],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        for cid, p in procs.items():
            assert p.stdout.readline() == "ready\n", f"{cid}: {p.stderr.read()}"
        for p in procs.values():
            p.stdin.write("go\n")
            p.stdin.flush()
        out = {}
        for cid, p in procs.items():
            stdout, stderr = p.communicate(timeout=120)
            assert p.returncode == 0, f"{cid}: {stderr}"
            out[cid] = json.loads(stdout)
        return out
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def allocation_files(net_dir):
    return sorted(n for n in os.listdir(net_dir) if n != "lock" and not n.startswith("last_reserved_ip."))


@pytest.mark.slow
def test_50_parallel_processes_get_50_distinct_addresses(tmp_path):
    ipam = ipam_json(tmp_path, "10.44.0.0/24", "fd00:44::/64")
    ids = [f"pod-{i:02d}" for i in range(50)]
    got = run_parallel("add", ipam, ids)

    v4 = [addrs[0] for addrs in got.values()]
    v6 = [addrs[1] for addrs in got.values()]
    assert len(set(v4)) == 50 and len(set(v6)) == 50
    # With the lock serialising them, 50 reservations fill .2 .. .51 exactly (.1 is the gateway).
    assert sorted(ip_address(a.split("/")[0]) for a in v4) == [ip_address(f"10.44.0.{i}") for i in range(2, 52)]

    net = tmp_path / "net"
    assert len(allocation_files(net)) == 100
    for cid, (a4, a6) in got.items():
        for addr in (a4, a6):
            assert (net / addr.split("/")[0]).read_bytes() == f"{cid}\r\neth0".encode()

    freed = run_parallel("del", ipam, ids)
    assert set(freed.values()) == {2}
    assert allocation_files(net) == []


def test_1000_allocate_release_cycles_leave_only_lock_and_last_reserved(tmp_path):
    # A /28 holds 13 addresses: 1000 cycles wrap around the range dozens of times,
    # with a few pods alive at any moment as on a busy node.
    cfg = IPAMConfig.from_json(ipam_json(tmp_path, "10.45.0.0/28", "fd00:45::/124"), "net")
    store = DiskStore.for_config(cfg)
    alive = []
    previous = None
    for i in range(1000):
        cid = f"c{i}"
        a4, a6 = allocator.allocate(cfg, store, cid, "eth0")
        assert a4.address.ip != previous  # round robin: never the address just handed out
        previous = a4.address.ip
        assert allocator.allocate(cfg, store, cid, "eth0") == (a4, a6)  # an ADD retried
        alive.append(cid)
        if len(alive) > 4:
            assert allocator.release(store, alive.pop(0), "eth0") == 2
    assert len(allocation_files(tmp_path / "net")) == 8
    for cid in alive:
        assert allocator.release(store, cid, "eth0") == 2
        assert allocator.release(store, cid, "eth0") == 0  # DEL repeated
    assert sorted(os.listdir(tmp_path / "net")) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]
