"""One function per CNI verb: parse -> allocate -> plan -> apply -> result.

Imported on every call: what only hostPort/ipMasq, the policy gate or CHECK need is imported inside
the function that uses it.
"""

from __future__ import annotations

import os

from cni_plugin import dataplane
from cni_plugin.config import SUPPORTED_VERSIONS, NetConf, ifname_problem, is_safe_name
from cni_plugin.errors import INCOMPATIBLE_VERSION, INVALID_ENV, CNIError, invalid_config
from cni_plugin.plan import host_veth_name, plan_pod
from cni_plugin.result import Result
from cni_plugin.undo import Undo
from ipam import allocator
from ipam.config import IPAMConfig
from ipam.store import DiskStore


class Env:
    """The CNI_* environment, checked per verb."""

    def __init__(self, environ, trace=None):
        self.trace = trace  # main.Trace when bench/cni_startup.py asks for the phases
        self.command = environ.get("CNI_COMMAND", "")
        self.container_id = environ.get("CNI_CONTAINERID", "")
        self.netns = environ.get("CNI_NETNS", "")
        self.ifname = environ.get("CNI_IFNAME", "")
        self.path = environ.get("CNI_PATH", "")
        self.args = environ.get("CNI_ARGS", "")

    def need(self, *names: str) -> None:
        """Require the named variables and check the shape of those given: a container ID or interface
        name that is refused here never reaches the IPAM store, a file name or netlink (code 4)."""
        for name in names:
            if not getattr(self, name):
                variable = "CNI_" + name.upper().replace("_", "")
                raise CNIError(INVALID_ENV, f"required environment variable {variable} is not set")
        if self.container_id and not is_safe_name(self.container_id):
            raise CNIError(INVALID_ENV, f"CNI_CONTAINERID {self.container_id[:80]!r} must start with a letter or digit "
                           "and hold only letters, digits, '_', '.' and '-'")
        problem = ifname_problem(self.ifname) if self.ifname else None
        if problem:
            raise CNIError(INVALID_ENV, f"CNI_IFNAME {self.ifname[:80]!r} is not a valid interface name: it {problem}")

    def mark(self, phase: str) -> None:
        if self.trace is not None:
            self.trace.mark(phase)

    def who(self) -> str:
        """'<container id prefix> ns/pod ifname' for log lines (kubelet passes the pod in CNI_ARGS)."""
        args = dict(pair.split("=", 1) for pair in self.args.split(";") if "=" in pair)
        pod = f" {args.get('K8S_POD_NAMESPACE', '')}/{args['K8S_POD_NAME']}" if "K8S_POD_NAME" in args else ""
        return f"{self.container_id[:12]}{pod} {self.ifname}"


def _ipam(conf: NetConf) -> tuple[IPAMConfig, DiskStore]:
    if conf.ipam.get("type") != "host-local":
        raise invalid_config(f"unsupported IPAM type {conf.ipam.get('type')!r} (podwire has host-local built in)")
    cfg = IPAMConfig.from_json(conf.ipam, conf.name)
    return cfg, DiskStore(cfg.data_dir, conf.name)


def add(conf: NetConf, env: Env, log) -> dict:
    env.need("container_id", "netns", "ifname")
    cfg, store = _ipam(conf)
    netns_fd = dataplane.open_pod_netns(env.netns)
    try:
        with Undo() as undo:
            pod = undo.enter_context(dataplane.pod_socket(netns_fd))
            # before allocating: IPAM answers a repeated ADD with the same addresses, and our undo
            # would then release the live pod's allocation
            dataplane.assert_absent(pod, env.ifname, env.netns)
            env.mark("netns")
            allocations = allocator.allocate(cfg, store, env.container_id, env.ifname)
            undo.callback(allocator.release, store, env.container_id, env.ifname)
            env.mark("ipam")
            plan = plan_pod(conf, allocations, cfg.routes, env.container_id, env.ifname)
            if conf.policy is not None:
                # before the pod has an interface: its first packet, either way, meets its NetworkPolicy
                from cni_plugin import policy_gate
                policy_gate.wait(conf.policy, env.args, [a.split("/")[0] for a in plan.container_addrs], log)
                env.mark("policy gate")
            interfaces = dataplane.setup(plan, pod, netns_fd, env.netns, undo)
            env.mark("netlink")
            if conf.port_mappings or conf.ip_masq:  # the only ADDs that run `nft`
                from cni_plugin import hostport

                hostport.program(conf, env.container_id, env.ifname, plan.host_if, plan.container_addrs, undo)
                env.mark("hostport")
            undo.pop_all()  # success: keep everything (the pod socket closes with the process)
    finally:
        os.close(netns_fd)
    log(f"ADD {env.who()} -> {', '.join(plan.container_addrs)} via {plan.host_if}")
    out = Result(interfaces, plan.ips, plan.routes).to_json(conf.cni_version)
    env.mark("result")
    return out


def delete(conf: NetConf, env: Env, log) -> None:
    env.need("container_id", "ifname")
    host_if = host_veth_name(env.container_id, env.ifname)
    dataplane.teardown(env.ifname, host_if, env.netns or None, log=log)
    env.mark("netlink")
    from cni_plugin import hostport  # cheap; its DEL is one failed open() for a pod without hostPort/ipMasq

    hostport.remove(conf.state_dir, host_if)
    env.mark("hostport")
    cfg, store = _ipam(conf)
    freed = allocator.release(store, env.container_id, env.ifname)
    env.mark("ipam")
    log(f"DEL {env.who()}: released {freed} address(es)")


def check(conf: NetConf, env: Env, log) -> None:
    if conf.version < (0, 4, 0):
        raise CNIError(INCOMPATIBLE_VERSION, f"config version {conf.cni_version} does not allow CHECK")
    env.need("container_id", "netns", "ifname")
    if conf.prev_result is None:
        raise invalid_config("CHECK needs prevResult in the network config")
    prev = Result.from_json(conf.prev_result)
    cfg, store = _ipam(conf)
    held = {str(ip) for ip in allocator.find(store, env.container_id, env.ifname)}
    for ip in prev.ips:
        if ip.address.split("/")[0] not in held:
            raise CNIError(100, f"IPAM holds no allocation of {ip.address} for this container")
    netns_fd = dataplane.open_pod_netns(env.netns)
    try:
        dataplane.check(host_veth_name(env.container_id, env.ifname), conf.bridge, env.ifname, netns_fd, prev)
    finally:
        os.close(netns_fd)


def status(conf: NetConf, env: Env, log) -> None:
    if conf.version < (1, 1, 0):
        raise CNIError(INCOMPATIBLE_VERSION, f"config version {conf.cni_version} does not allow STATUS")
    cfg, store = _ipam(conf)
    allocator.status(cfg, store)


def gc(conf: NetConf, env: Env, log) -> None:
    if conf.version < (1, 1, 0):
        raise CNIError(INCOMPATIBLE_VERSION, f"config version {conf.cni_version} does not allow GC")
    raw = conf.raw.get("cni.dev/valid-attachments", conf.raw.get("cni.dev/attachments"))
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise invalid_config("cni.dev/valid-attachments must be a list")
    valid = set()
    for i, item in enumerate(raw):
        # an entry without ifname would match no allocation and free a running pod's address
        keys = ("containerID", "ifname")
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k] for k in keys):
            raise invalid_config(f"cni.dev/valid-attachments[{i}] needs containerID "
                           f"and ifname as non-empty strings, got {item!r}"[:300])
        valid.add((item["containerID"], item["ifname"]))
    cfg, store = _ipam(conf)
    freed_ips = allocator.gc(store, valid)
    from cni_plugin import hostport

    freed_rules = hostport.gc(conf.state_dir, valid)
    log(f"GC kept {len(valid)} attachment(s), freed {len(freed_ips)} address(es) and {len(freed_rules)} rule set(s)")


def version_answer(raw: dict | None) -> dict:
    asked = (raw or {}).get("cniVersion")
    version = asked if asked in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


VERBS = {"ADD": add, "DEL": delete, "CHECK": check, "STATUS": status, "GC": gc}
