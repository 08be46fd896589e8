#!/usr/bin/env python3
"""Run every benchmark, one after the other, and write one markdown table of ratios.

    python3 bench/run_all.py [--only cni,throughput,...] [--out bench/results] [--quick]

Each benchmark runs as a subprocess with `--json` (its last stdout line is a JSON object); a
failing or timed-out benchmark is reported in the table and does not stop the others. Writes
bench/results/<UTC date-time>.md and bench/results/latest.md: the table (benchmark, podwire,
anchor, ratio, target, met?), the machine's load average, the git commit, and each benchmark's
own output. Needs root (network namespaces) and `make dist` (the frozen CNI plugin).
Ratios are the point: every anchor is measured in the same run as podwire, on the same 2
shared cores, so absolute times are noise.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclasses.dataclass(frozen=True)
class Bench:
    key: str
    argv: tuple[str, ...]
    quick: tuple[str, ...]  # extra arguments for --quick (a smoke run of this script)
    timeout: float


BENCHES = (
    Bench("cni", ("bench/cni_latency.py",), ("--iterations", "10", "--burst", "20"), 600),
    Bench("throughput", ("bench/pod_throughput.py",), ("--seconds", "1", "--rounds", "1"), 600),
    Bench("proxy_sync", ("bench/proxy_sync.py",), ("--sizes", "1000,3000"), 900),
    Bench("proxy_latency", ("bench/proxy_latency.py",), ("--sizes", "10,1000", "--conns", "300"), 600),
    Bench("kubeproxy", ("bench/kubeproxy_vs_podwire.py",),
          ("--sizes", "10,300", "--conns", "200", "--changes", "2"), 1800),
    Bench("policy_datapath", ("bench/policy_datapath.py",), ("--sizes", "1,1000", "--conns", "300", "--rounds", "2"),
          600),
    Bench("policy_scale", ("bench/policy_scale.py",),
          ("--pods", "2000", "--policies", "200", "--local", "100", "--memory-pods", "10000"), 1500),
    Bench("policy_latency", ("bench/policy_latency.py",), ("--trials", "5", "--pods", "200", "--policies", "100"),
          1200),
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table. `ratio` is podwire / anchor; `met` None = no target stated."""

    bench: str
    podwire: str
    anchor: str
    ratio: str
    target: str = "—"
    met: bool | None = None


def ms(x: float) -> str:
    return f"{x:.1f} ms" if x < 100 else f"{x:.0f} ms" if x < 1000 else f"{x / 1000:.2f} s"


def secs(x: float) -> str:
    return f"{x:.2f} s"


def us(x: float) -> str:
    return f"{x:.1f} µs"


def x(r: float) -> str:
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


# -- one parser per benchmark: its JSON -> rows --------------------------------------------

def rows_cni(d: dict) -> list[Row]:
    pw, ref = d["podwire"], d["reference"]
    out = []
    for key, what in (("add_p50_ms", "ADD p50"), ("add_p95_ms", "ADD p95"), ("del_p50_ms", "DEL p50"),
                      ("del_p95_ms", "DEL p95"), ("burst_ms", f"{d['burst']} concurrent ADDs (burst)"),
                      ("cpu_per_add_ms", "CPU per ADD (burst)")):
        ratio = pw[key] / ref[key]
        # issue 2's targets: ADD p50 and the 110-pod burst within 3x of the reference
        target = ("≤ 3×", ratio <= 3) if key in ("add_p50_ms", "burst_ms") else ("—", None)
        out.append(Row(f"CNI {what}", ms(pw[key]), f"{ms(ref[key])} (bridge+host-local)", x(ratio), *target))
    return out


def rows_throughput(d: dict) -> list[Row]:
    node = d["median_gbits"]["node"]
    return [Row(f"pod→pod TCP, {path} (median of per-round ratios)", f"{d['median_gbits'][path]:.2f} Gbit/s",
                f"{node:.2f} Gbit/s (node→node)", f"{d['ratio'][path]:.1%}",
                f"≥ {d['targets'][path]:.0%}", d["ratio"][path] >= d["targets"][path])
            for path in ("direct", "vxlan")]


def rows_proxy_sync(d: dict) -> list[Row]:
    out = []
    for size, r in sorted(d.items(), key=lambda kv: int(kv[0])):
        n = int(size)
        target = ("< 5 s", r["full_s"] < 5) if n == 10000 else ("—", None)
        out.append(Row(f"proxy full sync, {n} Services × 2 endpoints (scratch netns)", secs(r["full_s"]), "—", "—",
                       *target))
        best = min(r["change_s"])
        target = ("< 100 ms", best < 0.1) if n == 30000 else ("—", None)
        out.append(Row(f"proxy one change at {n} Services (best of {len(r['change_s'])})", ms(best * 1e3),
                       f"{ms(r['floor_s'] * 1e3)} (nft floor: one `add rule`)", x(best / r["floor_s"]), *target))
    return out


def rows_proxy_latency(text: str) -> list[Row]:
    """proxy_latency.py has no --json (its text is parsed): 'N services (...): ClusterIP p50 X us'."""
    import re

    p50 = {int(m.group(1)): (float(m.group(2)), float(m.group(3))) for m in re.finditer(
        r"^\s*(\d+) services \(full sync[^)]*\): ClusterIP p50\s+([\d.]+)us.*?pod IP p50\s+([\d.]+)us", text, re.M)}
    if len(p50) < 2:
        raise ValueError("no two sizes in proxy_latency's output")
    lo, hi = min(p50), max(p50)
    r = p50[hi][0] / p50[lo][0]
    return [Row(f"ClusterIP first connect p50, {hi} vs {lo} Services (podwire rules, scratch netns)",
                us(p50[hi][0]), f"{us(p50[lo][0])} ({lo} Services)", x(r), "≤ 1.10×", r <= 1.10)]


def rows_kubeproxy(d: dict) -> list[Row]:
    sizes = d["sizes"]
    keys = sorted(sizes, key=int)
    out = []
    for k in keys:
        s = sizes[k]
        n = s["services"]
        if int(k) >= 1000:
            pw, kp = (s["first_sync"][p]["start_to_served_s"] for p in ("podwire", "kube-proxy"))
            out.append(Row(f"start → first full sync served, {n} Services", secs(pw), f"{secs(kp)} (kube-proxy)",
                           x(pw / kp)))
            pw, kp = (s["first_sync"][p].get("sync_mean_s") for p in ("podwire", "kube-proxy"))
            if pw and kp:
                out.append(Row(f"first sync, the proxy's own sync_proxy_rules_duration_seconds (IPv4), {n} Services",
                               secs(pw), f"{secs(kp)} (kube-proxy)", x(pw / kp)))
        pw, kp = (s["change_s"][p]["median"] for p in ("podwire", "kube-proxy"))
        target = ("< 1 s", s["change_s"]["podwire"]["max"] < 1) if k == keys[-1] else ("—", None)
        out.append(Row(f"one EndpointSlice change → programmed (median), {n} Services", ms(pw * 1e3),
                       f"{ms(kp * 1e3)} (kube-proxy)", x(pw / kp), *target))
    for k in (keys[0], keys[-1]):
        s = sizes[k]
        lat = s["latency"]
        pw, kp = (lat[p]["clusterip_over_pod"] for p in ("podwire", "kube-proxy"))
        out.append(Row(f"ClusterIP first connect p50 ÷ pod IP p50 (median of batches), {s['services']} Services",
                       f"{pw:.3f} ({us(lat['podwire']['clusterip']['p50_us'])})",
                       f"{kp:.3f} ({us(lat['kube-proxy']['clusterip']['p50_us'])}, kube-proxy)", x(pw / kp)))
    if len(keys) >= 2:
        lo, hi = sizes[keys[0]], sizes[keys[-1]]
        # ClusterIP/pod IP, not raw p50s: two steps can sit in different modes of the bimodal
        # softirq cost (13 vs 19 us), which the pod IP shares
        g = {p: hi["latency"][p]["clusterip_over_pod"] / lo["latency"][p]["clusterip_over_pod"]
             for p in ("podwire", "kube-proxy")}
        out.append(Row(f"ClusterIP first connect (÷ pod IP) p50, {hi['services']} vs {lo['services']} Services",
                       x(g["podwire"]), f"{x(g['kube-proxy'])} (kube-proxy)", x(g["podwire"] / g["kube-proxy"]),
                       "podwire ≤ 1.10×", g["podwire"] <= 1.10))
    return out


def rows_policy_datapath(d: dict) -> list[Row]:
    lanes = d["lanes"]
    none = lanes["none"]["p50_us"]
    out = [Row(f"policy first connect p50 (SYN policed), {n} isolating policies vs no policy table",
               us(r["p50_us"]), f"{us(none)} (no policy)", x(r["p50_us"] / none))
           for n, r in lanes.items() if n != "none"]
    hl = d.get("ratio_hi_vs_lo")
    if hl:
        lo, hi = hl["sizes"]
        out.append(Row(f"policy first connect p50, {hi} vs {lo} isolating policies", us(lanes[str(hi)]["p50_us"]),
                       f"{us(lanes[str(lo)]['p50_us'])} ({lo} policies)", x(hl["p50"]), "≤ 1.10×", hl["p50"] <= 1.10))
    return out


def rows_policy_scale(d: dict) -> list[Row]:
    out = []
    for _, r in sorted(d["sync"].items(), key=lambda kv: int(kv[0])):
        total = r["seconds"]["total"]
        out.append(Row(f"policy full sync, {d['pods']} pods × {d['policies']} policies, {r['local_pods']} local pods "
                       f"(from_api → compile → nft -f, {r['elements']} elements)", secs(total), "—", "—",
                       "< 5 s", total < 5))
    mem = d.get("memory") or {}
    if "daemon" in mem and "raw" in mem:
        n, today, raw = mem["daemon"]["pods"], mem["daemon"]["rss_with_snapshot_mb"], mem["raw"]["rss_mb"]
        out.append(Row(f"policy daemon memory, {n} pods (slim informer cache + records + a sync's snapshot)",
                       f"{today:.0f} MB", f"{raw:.0f} MB (cache of full Pod dicts)", x(today / raw),
                       "< 500 MB", today < 500))
    return out


def rows_policy_latency(d: dict) -> list[Row]:
    return [Row(f"policy programming p99, {kind} (API write → kernel element), {d['pods']} pods × {d['policies']} "
                f"policies, {d['trials']} trials", ms(r["p99_ms"]), f"p50 {ms(r['p50_ms'])}", "—",
                "≤ 100 ms", r["p99_ms"] <= 100) for kind, r in d["kinds"].items()]


PARSERS = {"cni": rows_cni, "throughput": rows_throughput, "proxy_sync": rows_proxy_sync,
           "proxy_latency": rows_proxy_latency, "kubeproxy": rows_kubeproxy,
           "policy_datapath": rows_policy_datapath, "policy_scale": rows_policy_scale,
           "policy_latency": rows_policy_latency}
TITLES = {"cni": "bench/cni_latency.py", "throughput": "bench/pod_throughput.py", "proxy_sync": "bench/proxy_sync.py",
          "proxy_latency": "bench/proxy_latency.py", "kubeproxy": "bench/kubeproxy_vs_podwire.py",
          "policy_datapath": "bench/policy_datapath.py", "policy_scale": "bench/policy_scale.py",
          "policy_latency": "bench/policy_latency.py"}


# -- running -------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    bench: Bench
    argv: list[str]
    rc: int | None  # None: timed out
    seconds: float
    stdout: str
    stderr: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    error: str = ""


def run_one(b: Bench, quick: bool) -> Outcome:
    argv = [PY, *b.argv, *(b.quick if quick else ())]
    if b.key != "proxy_latency":
        argv.append("--json")
    print(f"== {' '.join(argv[1:])}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=b.timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # KeyboardInterrupt: the benchmarks' finally blocks clean up
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        rc = None
    o = Outcome(b, argv, rc, time.monotonic() - t0, out, err)
    if rc == 0:
        try:
            if b.key == "proxy_latency":
                o.rows = PARSERS[b.key](out)
            else:
                o.rows = PARSERS[b.key](json.loads(out.strip().splitlines()[-1]))
        except (ValueError, KeyError, IndexError, ZeroDivisionError, TypeError) as e:
            o.error = f"output not understood: {type(e).__name__}: {e}"
    else:
        o.error = "timed out" if rc is None else f"exit code {rc}"
    print(f"   {o.error or 'ok'} ({o.seconds:.0f} s)", flush=True)
    return o


# -- report --------------------------------------------------------------------------------

def git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip()


def render(outcomes: list[Outcome], started: datetime.datetime, loads: list[tuple[float, ...]], quick: bool) -> str:
    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    lines = [f"# podwire benchmarks, {started:%Y-%m-%d %H:%M} UTC" + (" (--quick smoke run)" if quick else ""), "",
             f"- commit `{commit}`" + (" (working tree had uncommitted changes)" if dirty else ""),
             f"- machine: {os.cpu_count()} CPUs, `{os.uname().release}`; load average (1/5/15 min) at start "
             f"{'/'.join(f'{v:.1f}' for v in loads[0])}, at end {'/'.join(f'{v:.1f}' for v in loads[-1])}",
             "- ratio = podwire / anchor, both measured in the same run (absolute numbers are noise on a "
             "shared 2-core machine); for times lower is better, for throughput higher is better",
             "", "| benchmark | podwire | anchor | ratio | target | met? |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        for r in o.rows:
            met = "—" if r.met is None else ("yes" if r.met else "**no**")
            lines.append(f"| {r.bench} | {r.podwire} | {r.anchor} | {r.ratio} | {r.target} | {met} |")
        if o.error:
            lines.append(f"| {TITLES[o.bench.key]}: **failed** ({o.error}) | — | — | — | — | — |")
    lines += ["", "## Runs", ""]
    for o in outcomes:
        status = o.error or "ok"
        text = o.stdout.rstrip()
        if o.rows and "--json" in o.argv:  # the JSON line was for us; the text is for people
            text = text.rpartition("\n")[0]
        lines += [f"<details><summary><code>{' '.join(o.argv[1:])}</code>: {status}, {o.seconds:.0f} s</summary>",
                  "", "```", text[-8000:]]
        if o.error and o.stderr.strip():
            lines += ["--- stderr (tail) ---", o.stderr.rstrip()[-3000:]]
        lines += ["```", "", "</details>", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated subset of: " + ",".join(b.key for b in BENCHES))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--quick", action="store_true", help="small sizes: check the pipeline, not the numbers")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    chosen = [b for b in BENCHES if not args.only or b.key in args.only.split(",")]
    started = datetime.datetime.now(datetime.timezone.utc)
    loads = [os.getloadavg()]
    outcomes = []
    for b in chosen:
        outcomes.append(run_one(b, args.quick))
        loads.append(os.getloadavg())
    text = render(outcomes, started, loads, args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{started:%Y-%m-%dT%H%M}Z.md"
    path.write_text(text)
    shutil.copyfile(path, out / "latest.md")
    print(f"wrote {path} and {out / 'latest.md'}")
    return 0 if all(not o.error for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
