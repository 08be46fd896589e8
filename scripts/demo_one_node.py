"""podwire on one node: two pod namespaces wired by the frozen plugin, pinging each other.

Everything happens in throwaway namespaces (a "node" and two "pods") and is removed at the end.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PLUGIN = os.path.join(ROOT, "dist", "podwire", "podwire")
sys.path.insert(0, ROOT)

from node_daemon import cniconf  # noqa: E402


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def cni(node: str, command: str, conf: dict, cid: str, pod: str) -> dict | None:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
           "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0", "CNI_PATH": os.path.dirname(PLUGIN)}
    r = subprocess.run(["nsenter", f"--net=/run/netns/{node}", PLUGIN], input=json.dumps(conf), env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"podwire {command} failed: {r.stdout}{r.stderr}")
    return json.loads(r.stdout) if r.stdout.strip() else None


def main() -> int:
    if not os.access(PLUGIN, os.X_OK):
        raise SystemExit("dist/podwire/podwire is missing: run `make dist` (make demo does)")
    tag = uuid.uuid4().hex[:6]
    node, pods = f"pwdemo-node-{tag}", [f"pwdemo-pod{i}-{tag}" for i in (1, 2)]
    tmp = tempfile.mkdtemp(prefix="podwire-demo-")
    # the config a runtime would hand the plugin from the daemon's conflist (one writer of it)
    settings = cniconf.CniSettings(log_file=f"{tmp}/cni.log", data_dir=f"{tmp}/ipam")
    conf = cniconf.network_config(cniconf.conflist(
        (ipaddress.ip_network("10.244.1.0/24"), ipaddress.ip_network("fd00:10:244:1::/64")), 1500, settings,
        name="demo", state_dir=f"{tmp}/state"))
    failures = 0
    try:
        for ns in (node, *pods):
            sh("ip", "netns", "add", ns)
        results = [cni(node, "ADD", conf, f"demo-{i}", p) for i, p in enumerate(pods)]
        for pod, res in zip(pods, results, strict=True):
            addrs = ", ".join(ip["address"] for ip in res["ips"])
            print(f"ADD  {pod}: eth0 {addrs} (host end {res['interfaces'][1]['name']} on podwire0)")
        checks = [
            ("pod1 -> pod2 (IPv4)", pods[0], ["ping", "-c2", "-W2", results[1]["ips"][0]["address"].split("/")[0]]),
            ("pod2 -> pod1 (IPv4)", pods[1], ["ping", "-c2", "-W2", results[0]["ips"][0]["address"].split("/")[0]]),
            ("pod1 -> pod2 (IPv6)", pods[0],
             ["ping", "-6", "-c2", "-W2", results[1]["ips"][1]["address"].split("/")[0]]),
            ("pod1 -> gateway", pods[0], ["ping", "-c2", "-W2", "10.244.1.1"]),
        ]
        for label, ns, cmd in checks:
            r = sh("nsenter", f"--net=/run/netns/{ns}", *cmd, check=False)
            ok = r.returncode == 0
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'} {label}: {r.stdout.strip().splitlines()[-1] if r.stdout else r.stderr}")
        for i, p in enumerate(pods):
            cni(node, "DEL", conf, f"demo-{i}", p)
            print(f"DEL  {p}")
        return 1 if failures else 0
    finally:
        for ns in (node, *pods):
            sh("ip", "netns", "del", ns, check=False)
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main())
