"""A node can switch between the reference host-local plugin and podwire's IPAM, both ways.

Runs the Debian-packaged reference plugin (containernetworking-plugins,
/usr/lib/cni/host-local) on the same data directory as our DiskStore. IPAM-only
calls need no network namespace: CNI_NETNS just has to be set.
"""

import json
import os
import subprocess
import sys

import pytest

from ipam import allocator
from ipam.addr import ip_address as A
from ipam.config import IPAMConfig
from ipam.store import DiskStore

HOST_LOCAL = "/usr/lib/cni/host-local"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module", autouse=True)
def reference_plugin():
    if not os.access(HOST_LOCAL, os.X_OK):
        pytest.fail(f"{HOST_LOCAL} missing: install the Debian package containernetworking-plugins")


def ipam_section(data_dir):
    return {
        "type": "host-local",
        "dataDir": str(data_dir),
        "ranges": [[{"subnet": "10.46.0.0/24"}], [{"subnet": "fd00:46::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    }


def ref_conf(data_dir):
    return json.dumps({"cniVersion": "0.4.0", "name": "net", "type": "host-local", "ipam": ipam_section(data_dir)})


def ref_env(command, cid, ifname="eth0"):
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/var/run/netns/pwi-unused",  # never opened by IPAM
        "CNI_IFNAME": ifname,
        "CNI_PATH": os.path.dirname(HOST_LOCAL),
    }


def ref_start(command, data_dir, cid):
    """The reference plugin as a running process, its config already on stdin."""
    p = subprocess.Popen([HOST_LOCAL], env=ref_env(command, cid), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    p.stdin.write(ref_conf(data_dir))
    p.stdin.close()
    return p


def host_local(command, data_dir, cid, ifname="eth0"):
    """Run the reference plugin; (exit code, parsed stdout)."""
    p = subprocess.run([HOST_LOCAL], input=ref_conf(data_dir), env=ref_env(command, cid, ifname),
                       capture_output=True, text=True, timeout=30)
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else None)


def ref_add(data_dir, cid):
    rc, out = host_local("ADD", data_dir, cid)
    assert rc == 0, out
    return [ip["address"] for ip in out["ips"]]


@pytest.fixture
def ours(tmp_path):
    cfg = IPAMConfig.from_json(ipam_section(tmp_path), "net")
    return cfg, DiskStore.for_config(cfg)


def addresses(allocs):
    return [str(a.address) for a in allocs]


def test_reference_allocates_then_podwire_takes_over(tmp_path, ours):
    cfg, store = ours
    assert ref_add(tmp_path, "ref-a") == ["10.46.0.2/24", "fd00:46::2/64"]
    assert ref_add(tmp_path, "ref-b") == ["10.46.0.3/24", "fd00:46::3/64"]
    rc, _ = host_local("DEL", tmp_path, "ref-a")
    assert rc == 0

    # We read its files and continue its round robin (after .3, not into the freed .2).
    assert allocator.find(store, "ref-b", "eth0") == (A("10.46.0.3"), A("fd00:46::3"))
    assert addresses(allocator.allocate(cfg, store, "ours-c", "eth0")) == ["10.46.0.4/24", "fd00:46::4/64"]
    # An ADD repeated after the switch gets the reference's addresses back.
    assert addresses(allocator.allocate(cfg, store, "ref-b", "eth0")) == ["10.46.0.3/24", "fd00:46::3/64"]
    # DEL and GC work on its files.
    assert allocator.release(store, "ref-b", "eth0") == 2
    assert allocator.gc(store, set()) == ["10.46.0.4", "fd00:46::4"]
    assert sorted(os.listdir(tmp_path / "net")) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]


def test_podwire_allocates_then_reference_takes_over(tmp_path, ours):
    cfg, store = ours
    assert addresses(allocator.allocate(cfg, store, "ours-a", "eth0")) == ["10.46.0.2/24", "fd00:46::2/64"]
    assert addresses(allocator.allocate(cfg, store, "ours-b", "eth0")) == ["10.46.0.3/24", "fd00:46::3/64"]
    allocator.release(store, "ours-a", "eth0")

    # The reference continues from our last_reserved_ip.* files ...
    assert ref_add(tmp_path, "ref-c") == ["10.46.0.4/24", "fd00:46::4/64"]
    # ... recognises our files as ours-b's allocation (it refuses a duplicate) ...
    rc, err = host_local("ADD", tmp_path, "ours-b")
    assert rc != 0 and "duplicate allocation" in err["msg"]
    rc, _ = host_local("CHECK", tmp_path, "ours-b")
    assert rc == 0
    # ... and releases them.
    rc, _ = host_local("DEL", tmp_path, "ours-b")
    assert rc == 0
    assert allocator.find(store, "ours-b", "eth0") == ()
    assert allocator.find(store, "ref-c", "eth0") == (A("10.46.0.4"), A("fd00:46::4"))


# Our side of the mixed race, as a process: wait for "go", then allocate.
WORKER = r"""
import json, sys
from ipam import allocator
from ipam.config import IPAMConfig
from ipam.store import DiskStore
cfg = IPAMConfig.from_json(json.loads(sys.argv[1]), "net")
store = DiskStore.for_config(cfg)
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps([str(a.address) for a in allocator.allocate(cfg, store, sys.argv[2], "eth0")]))
"""


def test_reference_and_podwire_racing_share_the_lock(tmp_path):
    """20 reference and 20 podwire processes at once on one store: 40 distinct addresses."""
    section = json.dumps(ipam_section(tmp_path))
    ours_procs, ref_procs = [], []
    try:
        for i in range(20):
            p = subprocess.Popen(
                [sys.executable, "-c", WORKER, section, f"ours-{i}"],
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            ours_procs.append(p)
        for p in ours_procs:
            assert p.stdout.readline() == "ready\n", p.stderr.read()
        for p in ours_procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for i in range(20):
            ref_procs.append(ref_start("ADD", tmp_path, f"ref-{i}"))
        got = []
        for p in ours_procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            got += json.loads(out)
        for p in ref_procs:
            out = p.stdout.read()
            assert p.wait(timeout=120) == 0, out
            got += [ip["address"] for ip in json.loads(out)["ips"]]
    finally:
        for p in ours_procs + ref_procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    v4 = [a for a in got if "." in a]
    v6 = [a for a in got if ":" in a]
    assert len(v4) == len(set(v4)) == 40
    assert len(v6) == len(set(v6)) == 40


def test_reference_waits_for_our_lock(tmp_path, ours):
    """Both take flock on <dir>/lock: while we hold it the reference's ADD blocks."""
    _, store = ours
    with store.lock():
        p = ref_start("ADD", tmp_path, "ref-late")
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                p.wait(timeout=1.0)
            assert not os.path.exists(tmp_path / "net" / "10.46.0.2")
        except BaseException:
            p.kill()
            p.wait()
            raise
    assert p.wait(timeout=30) == 0
    assert json.loads(p.stdout.read())["ips"][0]["address"] == "10.46.0.2/24"
