"""Where a CNI ADD/DEL of the frozen podwire spends its time, beside the reference bridge + host-local.

kubelet starts the plugin once per pod, so start-up is paid on every pod. Each podwire call runs with
PODWIRE_CNI_TRACE=<launch time> and reports its phases on stderr (cni_plugin/main.py Trace):

    interpreter   exec -> our __main__ runs: bootloader, Python's init, PyInstaller's bootstrap
    import main   cni_plugin.main and what it imports (JSON, config, errors)
    import verbs  the verbs and everything they import (dataplane, netlink, IPAM)
    netns/ipam/netlink/hostport/result   the work itself, per step
    exit          wall time not covered by the marks: process exit and the bench's own spawn/wait

Calls alternate podwire / reference, so machine noise hits both alike. --importtime also builds the
plugin with `-X importtime` (packaging/podwire.spec, PODWIRE_SPEC_IMPORTTIME=1, into build/cni_startup/)
and lists the modules an ADD and a DEL import after the bootloader's own, by cumulative time.

    python3 bench/cni_startup.py [--runs 30] [--binary dist/podwire/podwire] [--importtime]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from cni_latency import REF_DIR, configs, ip_netns, run  # noqa: E402

from netkit import netns  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
IMPORTTIME_DIR = os.path.join(ROOT, "build", "cni_startup")


def traced(binary: str, command: str, conf: dict, cid: str, pod_ns: str, extra_env=None) -> tuple[float, dict, str]:
    """(wall seconds, {phase: ms}, stderr) of one traced call."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod_ns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": REF_DIR, "PATH": os.environ.get("PATH", "")}
    env.update(extra_env or {})
    env["PODWIRE_CNI_TRACE"] = str(time.monotonic_ns())  # perf_counter and monotonic_ns: one clock on Linux
    start = time.perf_counter()
    proc = subprocess.run([binary], input=json.dumps(conf).encode(), env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    err = proc.stderr.decode()
    phases: dict = {}
    for line in err.splitlines():
        if line.startswith("podwire-trace "):
            phases = json.loads(line[len("podwire-trace "):])
    return elapsed, phases, err


def build_importtime() -> str:
    env = dict(os.environ, PODWIRE_SPEC_IMPORTTIME="1")
    subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
                    "--distpath", os.path.join(IMPORTTIME_DIR, "dist"),
                    "--workpath", os.path.join(IMPORTTIME_DIR, "work"),
                    os.path.join(ROOT, "packaging", "podwire.spec")], check=True, env=env, cwd=ROOT)
    return os.path.join(IMPORTTIME_DIR, "dist", "podwire", "podwire")


def parse_importtime(stderr: str) -> tuple[float, dict]:
    """(ms of the bootloader's imports, {module: (self ms, cumulative ms)} of ours and what they pull in)."""
    boot, ours, seen_ours = 0.0, {}, False
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|")
        module = name.strip()
        seen_ours = seen_ours or module.startswith(("cni_plugin", "ipam", "netkit"))
        if not seen_ours:
            if name.startswith(" ") and not name.startswith("  "):  # top level of the bootstrap
                boot += int(cum_us) / 1000
            continue
        ours[module] = (int(self_us) / 1000, int(cum_us) / 1000)
    return boot, ours


def p50(values) -> float:
    return statistics.median(values) if values else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--binary", default="dist/podwire/podwire")
    ap.add_argument("--importtime", action="store_true", help="also build and run the -X importtime variant")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    it_binary = build_importtime() if args.importtime else None
    tag = uuid.uuid4().hex[:6]
    node, pod = f"pws-node-{tag}", f"pws-pod-{tag}"
    tmp = tempfile.mkdtemp(prefix="pwstartup-")
    confs = configs(tmp)
    made = []
    try:
        for ns in (node, pod):
            ip_netns("add", ns)
            made.append(ns)
        netns.setns(netns.open_netns(f"/run/netns/{node}"))
        ref = {"ADD": [], "DEL": []}
        wall = {"ADD": [], "DEL": []}
        phases: dict = {"ADD": {}, "DEL": {}}
        for i in range(args.runs + 2):  # the first two warm caches and are dropped
            t_ref_add = run(f"{REF_DIR}/bridge", "ADD", confs["reference"], f"r{i}", pod)
            t_ref_del = run(f"{REF_DIR}/bridge", "DEL", confs["reference"], f"r{i}", pod)
            t_add, ph_add, _ = traced(binary, "ADD", confs["podwire"], f"p{i}", pod)
            t_del, ph_del, _ = traced(binary, "DEL", confs["podwire"], f"p{i}", pod)
            if i < 2:
                continue
            ref["ADD"].append(t_ref_add * 1000)
            ref["DEL"].append(t_ref_del * 1000)
            for verb, t, ph in (("ADD", t_add, ph_add), ("DEL", t_del, ph_del)):
                wall[verb].append(t * 1000)
                ph = dict(ph)
                ph["exit"] = t * 1000 - sum(ph.values())
                for k, v in ph.items():
                    phases[verb].setdefault(k, []).append(v)

        print(f"CNI start-up split, {args.runs} interleaved runs (p50 of each phase, ms)")
        for verb in ("ADD", "DEL"):
            print(f"\n{verb}: podwire {p50(wall[verb]):.1f} ms, reference bridge+host-local {p50(ref[verb]):.1f} ms "
                  f"({p50(wall[verb]) / p50(ref[verb]):.2f}x)")
            for k, v in phases[verb].items():
                print(f"  {k:14} {p50(v):7.2f}")
            imports = p50(phases[verb].get("import main", [])) + p50(phases[verb].get("import verbs", []))
            start = p50(phases[verb].get("interpreter", []))
            print(f"  = start {start:.1f} + imports {imports:.1f} + work and exit "
                  f"{p50(wall[verb]) - start - imports:.1f}  (reference total {p50(ref[verb]):.1f})")

        if it_binary:
            for verb in ("ADD", "DEL"):
                boots, tables = [], []
                for i in range(5):
                    cid = f"it{i}"
                    if verb == "DEL":
                        traced(binary, "ADD", confs["podwire"], cid, pod)
                    _, _, err = traced(it_binary, verb, confs["podwire"], cid, pod)
                    if verb == "ADD":
                        traced(binary, "DEL", confs["podwire"], cid, pod)
                    boot, ours = parse_importtime(err)
                    boots.append(boot)
                    tables.append(ours)
                modules = sorted(set().union(*tables))
                rows = [(m, p50([t[m][0] for t in tables if m in t]), p50([t[m][1] for t in tables if m in t]))
                        for m in modules]
                print(f"\n{verb} imports under -X importtime (p50 of 5; bootloader's own: {p50(boots):.1f} ms; "
                      f"ours: {sum(r[1] for r in rows):.1f} ms self in {len(rows)} modules)")
                for m, self_ms, cum_ms in sorted(rows, key=lambda r: -r[1]):
                    print(f"  {self_ms:6.2f} self {cum_ms:6.2f} cumulative  {m}")
        return 0
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
