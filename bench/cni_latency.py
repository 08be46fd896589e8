"""CNI ADD/DEL latency: the frozen podwire against the reference bridge + host-local, same run.

Both plugins run from this process, which sits inside a throwaway node namespace, alternating
iteration by iteration so machine noise hits both alike. Then a burst of N concurrent ADDs (kubelet's
default max pods is 110) for each. Then ADDs of a pod with a hostPort: podwire alone against the
reference chain bridge + host-local + portmap (the runtime runs portmap after bridge: the two times
add up; portmap's iptables rules land in the throwaway node namespace). Prints p50/p95 and the ratios
podwire / reference. bench/cni_startup.py splits podwire's time into start-up, imports and work.

    python3 bench/cni_latency.py [--iterations 60] [--burst 110] [--binary dist/podwire/podwire] [--json]

--json adds one JSON object (milliseconds, per plugin) as the last line, for bench/run_all.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from netkit import netns  # noqa: E402
from node_daemon import cniconf  # noqa: E402

REF_DIR = "/usr/lib/cni"


def ip_netns(*args: str) -> None:
    subprocess.run(["ip", "netns", *args], check=True)


def configs(tmp: str) -> dict:
    common = {"cniVersion": "1.0.0", "isGateway": True, "hairpinMode": True, "ipMasq": False, "mtu": 1500}
    # podwire's from the daemon's own conflist writer, at the reference's CNI version and settings
    settings = cniconf.CniSettings(bridge="pwbench0", log_file=f"{tmp}/pw.log", data_dir=f"{tmp}/pw-ipam")
    podwire = cniconf.network_config(cniconf.conflist(
        (ipaddress.ip_network("10.200.0.0/16"),), 1500, settings, name="bench-pw", state_dir=f"{tmp}/pw-state",
        port_mappings=False), cni_version=common["cniVersion"])
    return {
        "podwire": podwire,
        "reference": {**common, "name": "bench-ref", "type": "bridge", "bridge": "refbench0",
                      "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.201.0.0/16"}]],
                               "routes": [{"dst": "0.0.0.0/0"}], "dataDir": f"{tmp}/ref-ipam"}},
    }


PORT_MAPPINGS = [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]


def with_hostport(conf: dict) -> dict:
    return {**conf, "capabilities": {"portMappings": True}, "runtimeConfig": {"portMappings": PORT_MAPPINGS}}


def portmap_conf(conf: dict, prev: dict | None) -> dict:
    out = {"cniVersion": conf["cniVersion"], "name": conf["name"], "type": "portmap",
           "capabilities": {"portMappings": True}, "runtimeConfig": {"portMappings": PORT_MAPPINGS}}
    if prev is not None:
        out["prevResult"] = prev
    return out


def run(binary: str, command: str, conf: dict, cid: str, pod_ns: str, out: list | None = None) -> float:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod_ns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": REF_DIR, "PATH": os.environ.get("PATH", "")}
    start = time.perf_counter()
    proc = subprocess.run([binary], input=json.dumps(conf).encode(), env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    if out is not None:
        out.append(json.loads(proc.stdout) if proc.stdout.strip() else None)
    return elapsed


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--burst", type=int, default=110)
    ap.add_argument("--binary", default="dist/podwire/podwire")
    ap.add_argument("--hostport-iterations", type=int, default=30)
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    binaries = {"podwire": os.path.abspath(args.binary), "reference": f"{REF_DIR}/bridge"}
    tag = uuid.uuid4().hex[:6]
    node = f"pwb-node-{tag}"
    pods = [f"pwb-{tag}-{i}" for i in range(max(args.burst, 2))]
    tmp = tempfile.mkdtemp(prefix="pwbench-")
    confs = configs(tmp)
    made = []
    try:
        ip_netns("add", node)
        made.append(node)
        for p in pods:
            ip_netns("add", p)
            made.append(p)
        netns.setns(netns.open_netns(f"/run/netns/{node}"))  # this bench process now lives on the "node"

        lat = {k: {"ADD": [], "DEL": []} for k in binaries}
        for i in range(args.iterations):
            for name, binary in binaries.items():  # alternate: same noise for both
                cid = f"{name}-{i}"
                lat[name]["ADD"].append(run(binary, "ADD", confs[name], cid, pods[0]))
                lat[name]["DEL"].append(run(binary, "DEL", confs[name], cid, pods[0]))

        burst, cpu = {}, {}
        for name, binary in binaries.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=len(pods)) as ex:
                list(ex.map(lambda p: run(binary, "ADD", confs[name], f"burst-{p}", p), pods[: args.burst]))
            burst[name] = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            # CPU per ADD (user+sys of the plugin processes): what a shared machine's noise cannot inflate
            cpu[name] = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / args.burst
            with ThreadPoolExecutor(max_workers=16) as ex:
                list(ex.map(lambda p: run(binary, "DEL", confs[name], f"burst-{p}", p), pods[: args.burst]))

        hostport = {"podwire": [], "reference": []}
        for i in range(args.hostport_iterations):
            cid = f"hp-{i}"
            hostport["podwire"].append(run(binaries["podwire"], "ADD", with_hostport(confs["podwire"]), cid, pods[0]))
            run(binaries["podwire"], "DEL", with_hostport(confs["podwire"]), cid, pods[0])
            prev: list = []
            t = run(binaries["reference"], "ADD", confs["reference"], cid, pods[0], prev)
            t += run(f"{REF_DIR}/portmap", "ADD", portmap_conf(confs["reference"], prev[0]), cid, pods[0])
            hostport["reference"].append(t)
            run(f"{REF_DIR}/portmap", "DEL", portmap_conf(confs["reference"], None), cid, pods[0])
            run(binaries["reference"], "DEL", confs["reference"], cid, pods[0])

        print(f"CNI latency, {args.iterations} iterations, burst of {args.burst} concurrent ADDs")
        print(f"{'':10} {'ADD p50':>9} {'ADD p95':>9} {'DEL p50':>9} {'DEL p95':>9} {'burst':>9} {'CPU/ADD':>9}")
        for name in binaries:
            a, d = lat[name]["ADD"], lat[name]["DEL"]
            print(f"{name:10} {pct(a, .5):8.1f}ms {pct(a, .95):8.1f}ms {pct(d, .5):8.1f}ms {pct(d, .95):8.1f}ms "
                  f"{burst[name] * 1000:8.0f}ms {cpu[name] * 1000:8.1f}ms")
        pw, ref = lat["podwire"], lat["reference"]
        print(f"ratio podwire/reference: ADD p50 {pct(pw['ADD'], .5) / pct(ref['ADD'], .5):.2f}x, "
              f"ADD p95 {pct(pw['ADD'], .95) / pct(ref['ADD'], .95):.2f}x, "
              f"DEL p50 {pct(pw['DEL'], .5) / pct(ref['DEL'], .5):.2f}x, "
              f"burst {burst['podwire'] / burst['reference']:.2f}x, "
              f"CPU per ADD {cpu['podwire'] / cpu['reference']:.2f}x")
        hp_pw, hp_ref = pct(hostport["podwire"], .5), pct(hostport["reference"], .5)
        print(f"ADD with a hostPort ({args.hostport_iterations} iterations): podwire {hp_pw:.1f}ms, "
              f"bridge+host-local+portmap {hp_ref:.1f}ms, ratio {hp_pw / hp_ref:.2f}x")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} (ratios are same-run; absolute times are noise)")
        if args.json:
            print(json.dumps({name: {"add_p50_ms": pct(lat[name]["ADD"], .5), "add_p95_ms": pct(lat[name]["ADD"], .95),
                                     "del_p50_ms": pct(lat[name]["DEL"], .5), "del_p95_ms": pct(lat[name]["DEL"], .95),
                                     "burst_ms": burst[name] * 1000, "cpu_per_add_ms": cpu[name] * 1000,
                                     "hostport_add_p50_ms": pct(hostport[name], .5)}
                              for name in binaries} | {"burst": args.burst, "iterations": args.iterations}))
        return 0
    finally:
        for p in made:
            subprocess.run(["ip", "netns", "del", p], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
