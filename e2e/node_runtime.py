"""A full Kubernetes node in a node namespace: its own mount namespace, containerd and kubelet.

Why it is built so: kind gives every node a container with its own filesystem; here a node
is a network namespace on one shared machine, so everything a kubelet or containerd keeps
must be made per node explicitly:

* **A private mount namespace per node** (and UTS: its hostname is the node's name), held by
  a small holder process (`sleep`) and entered by containerd and kubelet alike
  (`nsenter -t <holder> --mount --uts`, plus `--net=/run/netns/<node>`). Inside it, /etc,
  /opt, /var/lib and /var/log are overlays whose upper layers live in the node's directory,
  and /etc/cni/net.d, /opt/cni/bin and /run/containerd are bind mounts of node directories.
  So a DaemonSet's hostPath install (/opt/cni/bin, /etc/cni/net.d, /var/lib/cni,
  /var/log/...) lands on *that* node only, as on a kind node, without touching the host's
  files. containerd and kubelet must share the namespace: kubelet mounts the secret and
  service-account token tmpfs volumes, and containerd bind-mounts them into containers (in two
  namespaces the containers see empty directories — what `ip netns exec` does). All mounts
  (overlays, tmpfs volumes, container rootfs, pinned pod netns, the sysctl files below) live in
  that namespace and vanish with its last process, so teardown never has to find and unmount them.
* containerd 2.2 (scripts/install-deps.sh builds it), or per node Debian's 1.6.20 (`CONTAINERDS`:
  the libcni of containerd 1.x speaks CNI 1.0.0 at most, what many clusters still run), with
  private root, state, sockets and runc root; CRI with the node's CNI dirs, the locally built
  pause image as sandbox, cgroupfs (SystemdCgroup=false), pod netns pinned under its state dir.
* The machine's kernel settings stay as they are. kubelet wants six host-global sysctls
  (`KUBELET_SYSCTLS`: vm.overcommit_memory=1, kernel.panic=10, kernel.panic_on_oops=1, ...) and,
  unless protectKernelDefaults, writes them: on a shared machine any later kernel oops would
  reboot it. In the node's mount namespace a regular file holding kubelet's value is bind-mounted
  over each of those /proc/sys entries, so kubelet reads the value it wants and has nothing to
  write; with protectKernelDefaults it would refuse to start rather than write, should one differ.
* kubelet v1.34 with its own client certificate (system:node:NAME), root dir, podLogsDir,
  `cgroupRoot` (/pwe-<cluster>-<node>, created in every cgroup v1 hierarchy, in the ledger),
  resolv.conf without a 127.x stub, clusterDNS 10.96.0.10, image GC never (nothing can be
  pulled again). No kube-proxy: Services are podwire's job (or an explicit kube-proxy).

Images are imported at start (e2e/images.py); `import_image()` loads more later.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import shutil
import time
from pathlib import Path

import yaml

from e2e import build, cgroups, images
from e2e import netns as ns
from e2e.topology import Node
from node_daemon import cniconf

CONTAINERD_BIN = build.cache_root() / "tools" / "containerd-v2.2.1" / "bin"
RUNC = Path("/usr/sbin/runc")
LOOPBACK_PLUGIN = Path("/usr/lib/cni/loopback")  # Debian's containernetworking-plugins


@dataclasses.dataclass(frozen=True)
class Containerd:
    """A containerd a node can run: its binaries (containerd, ctr, shim) and config format."""

    name: str
    bin_dir: Path
    config_version: int  # 3: containerd 2.x, 2: containerd 1.x
    internal_loopback: bool  # else pods' `lo` needs the reference `loopback` plugin in /opt/cni/bin


CONTAINERDS = {
    "2.2": Containerd("2.2", CONTAINERD_BIN, 3, True),
    # Debian 12's package (libcni v1.1.2: CNI 1.0.0 at most, no cniVersions negotiation)
    "1.6": Containerd("1.6", Path("/usr/bin"), 2, False),
}
DEFAULT_CONTAINERD = "2.2"
# What kubelet's setupKernelTunables wants (/proc/sys paths), all host-global: see the docstring.
KUBELET_SYSCTLS = {"vm/overcommit_memory": 1, "vm/panic_on_oom": 0, "kernel/panic": 10, "kernel/panic_on_oops": 1,
                   "kernel/keys/root_maxkeys": 1000000, "kernel/keys/root_maxbytes": 25000000}
# Host trees each node sees as its own copy-on-write overlay (writes stay in the node dir).
PRIVATE_TREES = ("/etc", "/opt", "/var/lib", "/var/log")
CNI_CONF_DIR, CNI_BIN_DIR = "/etc/cni/net.d", "/opt/cni/bin"  # as seen inside a node
CLUSTER_DNS = ipaddress.ip_address("10.96.0.10")  # the IPv4 cluster's; cluster_dns() for any family


def cluster_dns(config) -> list[str]:
    """kube-dns's ClusterIPs, primary family first: the 10th address of each Service range (10.96.0.10,
    fd00:10:96::a as kubeadm and kind make them). Pure."""
    return [str(net[10]) for net in config.service_cidrs]
CLUSTER_DOMAIN = "cluster.local"
# Nodes spread over three zones of one region, round robin by node number (node1 zone-a, node2
# zone-b, node3 zone-c, node4 zone-a, ...), as kind users label them: the kubelet sets them at
# registration (--node-labels). NodeRestriction lets a kubelet set topology.kubernetes.io/zone
# and /region on its own Node (kubeletapis.KubeletLabels), so no admin patch is needed.
ZONES = ("zone-a", "zone-b", "zone-c")
REGION = "region-1"


class NodeRuntimeError(RuntimeError):
    pass


def containerd_config(rt: "NodeRuntime") -> str:
    """config.toml of a node's containerd, in the format of its version. Pure: paths in, text out."""
    return containerd_config_v3(rt) if rt.containerd.config_version == 3 else containerd_config_v2(rt)


def containerd_config_v3(rt: "NodeRuntime") -> str:
    """config.toml (version 3, containerd 2.x)."""
    return f"""version = 3
root = '{rt.dir}/containerd/root'
state = '{rt.dir}/containerd/state'
# NRI's socket and the `opt` dir are fixed host paths; nothing here uses them.
disabled_plugins = ['io.containerd.nri.v1.nri', 'io.containerd.internal.v1.opt',
  'io.containerd.snapshotter.v1.btrfs', 'io.containerd.snapshotter.v1.zfs', 'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.blockfile', 'io.containerd.snapshotter.v1.erofs', 'io.containerd.differ.v1.erofs',
  'io.containerd.tracing.processor.v1.otlp', 'io.containerd.internal.v1.tracing']
imports = []

[grpc]
  address = '{rt.containerd_socket}'
[ttrpc]
  address = '{rt.containerd_socket}.ttrpc'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = '{rt.snapshotter}'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{images.PAUSE}'
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = ''

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # No CAP_SYS_RESOURCE on some machines (sandboxed VMs): runc then cannot lower a process's
  # oom_score_adj (kubelet asks -998 for sandboxes). Clamp to containerd's own, as rootless does.
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{RUNC}'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{CNI_BIN_DIR}']
    conf_dir = '{CNI_CONF_DIR}'
    max_conf_num = 1
    use_internal_loopback = true

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'

[plugins.'io.containerd.transfer.v1.local']
  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = 'linux/amd64'
    snapshotter = '{rt.snapshotter}'
"""


def containerd_config_v2(rt: "NodeRuntime") -> str:
    """config.toml (version 2, containerd 1.6/1.7): the same node as containerd_config_v3, with the
    1.x names (one CRI plugin, sandbox_image instead of pinned images, bin_dir not bin_dirs).
    Without netns_mounts_under_state_dir the pod netns would be pinned in the host's /run/netns."""
    cri = "plugins.'io.containerd.grpc.v1.cri'"
    return f"""version = 2
root = '{rt.dir}/containerd/root'
state = '{rt.dir}/containerd/state'
disabled_plugins = ['io.containerd.internal.v1.opt', 'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs', 'io.containerd.snapshotter.v1.devmapper', 'io.containerd.snapshotter.v1.aufs',
  'io.containerd.tracing.processor.v1.otlp', 'io.containerd.internal.v1.tracing']

[grpc]
  address = '{rt.containerd_socket}'
[ttrpc]
  address = '{rt.containerd_socket}.ttrpc'

[{cri}]
  sandbox_image = '{images.PAUSE}'
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
  [{cri}.containerd]
    snapshotter = '{rt.snapshotter}'
    default_runtime_name = 'runc'
    [{cri}.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = '{RUNC}'
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = '{CNI_BIN_DIR}'
    conf_dir = '{CNI_CONF_DIR}'
    max_conf_num = 1
  [{cri}.registry]
    config_path = ''
"""


def topology_labels(node_name: str) -> dict[str, str]:
    """The zone and region labels of node<N>. Pure."""
    m = re.fullmatch(r"node([1-9][0-9]*)", node_name)
    if not m:
        raise ValueError(f"not a harness node name: {node_name!r}")
    return {"topology.kubernetes.io/region": REGION,
            "topology.kubernetes.io/zone": ZONES[(int(m.group(1)) - 1) % len(ZONES)]}


def kubelet_config(rt: "NodeRuntime", client_ca: Path) -> dict:
    """KubeletConfiguration of a node's kubelet. Pure."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # "::" serves both families (the API server reaches a dual-stack node on its primary address)
        "address": "::" if any(ip.version == 6 for ip in rt.node.ips) else str(rt.node.ip),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        # Only clients with a certificate of the cluster CA (the API server's kubelet client is
        # system:masters); no webhook round trips for a throw-away cluster.
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{rt.cgroup_root}",
        "cgroupsPerQOS": True,
        "failSwapOn": False,
        "failCgroupV1": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # Three kubelets see one machine's disk and memory: evict only when it is really full.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "clusterDNS": cluster_dns(rt.cp.config),
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(rt.dir / "resolv.conf"),
        "podLogsDir": str(rt.dir / "pod-logs"),
        "volumePluginDir": str(rt.dir / "volume-plugins"),
        "containerRuntimeEndpoint": f"unix://{rt.containerd_socket}",
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "makeIPTablesUtilChains": False,
        # Never write the host's kernel settings: fail instead (they are shown as wanted, see
        # KUBELET_SYSCTLS).
        "protectKernelDefaults": True,
        "nodeStatusReportFrequency": "10s",
        "registerNode": True,
    }


def kube_proxy_config(rt: "NodeRuntime", kubeconfig: Path, cluster_cidrs) -> dict:
    """KubeProxyConfiguration (nftables) for the optional kube-proxy anchor. Pure.

    masqueradeAll: the control plane has no route to pod CIDRs, so a pod's traffic to the
    `kubernetes` Service must leave with the node's address (podwire's daemon does that for
    all egress; kube-proxy alone only for Service traffic, hence masqueradeAll).
    Conntrack limits are global (init namespace only): left alone.
    """
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": rt.node.name,
        "bindAddress": str(rt.node.ip),
        "clusterCIDR": ",".join(map(str, cluster_cidrs if isinstance(cluster_cidrs, tuple) else (cluster_cidrs,))),
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "nftables": {"masqueradeAll": True},
    }


def _snapshotter() -> str:
    return os.environ.get("PODWIRE_E2E_SNAPSHOTTER", "overlayfs")


class NodeRuntime:
    """containerd + kubelet of one node, with files under <node dir>/rt."""

    def __init__(self, node: Node, cluster_name: str, control_plane, bin_dir: Path,
                 containerd: str = DEFAULT_CONTAINERD):
        if containerd not in CONTAINERDS:
            raise ValueError(f"containerd must be one of {sorted(CONTAINERDS)}, not {containerd!r}")
        self.containerd = CONTAINERDS[containerd]
        self.node = node
        self.cluster_name = cluster_name
        self.cp = control_plane
        self.bin = Path(bin_dir)
        self.dir = node.dir / "rt"
        self.snapshotter = _snapshotter()
        self.holder: ns.Proc | None = None
        self.procs: dict[str, ns.Proc] = {}

    # -- paths -------------------------------------------------------------------------

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        return self.node.netns  # pwe-<cluster>-<node>: unique, and swept by the same prefix

    @property
    def cni_conf_dir(self) -> Path:
        """The node's /etc/cni/net.d, as a path of the harness (root mount namespace)."""
        return self.dir / "cni" / "net.d"

    @property
    def cni_bin_dir(self) -> Path:
        return self.dir / "cni" / "bin"

    def tree_upper(self, tree: str) -> Path:
        """Where the node's writes under a PRIVATE_TREES entry land (e.g. its /var/log)."""
        return self.dir / "fs" / tree.strip("/").replace("/", "-") / "upper"

    # -- running things inside the node -----------------------------------------------

    def argv(self, argv) -> list[str]:
        """argv run in the node's network and mount namespaces (what containerd and kubelet see)."""
        assert self.holder is not None, "node runtime not started"
        return ["nsenter", "-t", str(self.holder.pid), "--mount", "--uts", f"--net={ns.netns_path(self.node.netns)}",
                *map(str, argv)]

    def run(self, argv, **kw):
        return ns.run(self.argv(argv), **kw)

    def proc_sys_mounts(self) -> set[str]:
        """The /proc/sys entries something is mounted over in the node's mount namespace."""
        assert self.holder is not None, "node runtime not started"
        lines = Path(f"/proc/{self.holder.pid}/mountinfo").read_text().splitlines()
        return {line.split()[4] for line in lines if line.split()[4].startswith("/proc/sys/")}

    def ctr(self, *args, **kw):
        """ctr against this node's containerd, namespace k8s.io. A plain client of the socket:
        it runs in the harness's namespaces (imports unpack inside containerd, through the
        transfer service), so it works from any process, e.g. `e2e.cluster load`."""
        return ns.run([self.containerd.bin_dir / "ctr", "--address", self.containerd_socket, "--namespace",
                       "k8s.io", *args], **kw)

    def _spawn(self, name: str, argv, env=None) -> ns.Proc:
        proc = ns.spawn(name, self.argv(argv), self.node.dir / "logs" / f"{name}.log", env=env)
        self.node.ledger.proc(proc)
        self.procs[name] = proc
        return proc

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "NodeRuntime":
        """Mount namespace, cgroups, containerd, the kubelet's files. Then (start_nodes):
        wait_containerd, import_image, launch_kubelet. Does not wait for Ready."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._start_holder()
        self.node.ledger.cgroup(self.cgroup_root)  # recorded first, like everything
        cgroups.create(self.cgroup_root)
        self._start_containerd()
        self._prepare_kubelet()
        return self

    def _start_holder(self) -> None:
        """The process that owns the node's mount namespace (mounts are made by its shell)."""
        # /run/containerd is the shims' socket dir and runc's default root, fixed paths; the
        # node binds its own dir there. The host directory is only a mount point (it is what
        # containerd itself creates on a machine that runs it).
        Path("/run/containerd").mkdir(mode=0o711, exist_ok=True)
        ready = self.dir / "mounts.ready"
        script = [*self.holder_script(), f"touch {ready}", "exec sleep infinity"]
        argv = ["nsenter", f"--net={ns.netns_path(self.node.netns)}", "unshare", "--mount", "--uts",
                "--propagation", "unchanged", "sh", "-c", "\n".join(script)]
        self.holder = ns.spawn("mounts", argv, self.node.dir / "logs" / "mounts.log")
        self.node.ledger.proc(self.holder)
        self.procs["mounts"] = self.holder
        deadline = time.monotonic() + 10
        while not ready.exists():
            if not self.holder.alive() or time.monotonic() > deadline:
                raise NodeRuntimeError(f"{self.node.name}: mount namespace not made:\n{self.holder.log_tail()}")
            time.sleep(0.02)

    def holder_script(self) -> list[str]:
        """The holder's shell lines that make the node's mounts (run inside its new mount namespace,
        slave to the host's: nothing propagates back). Creates the node directories they need."""
        # Its own UTS namespace too: `hostname` on the node (and in its hostNetwork pods) is the
        # node's name, as on a kind node.
        script = ["set -e", "mount --make-rslave /", f"hostname {self.node.name}"]
        for tree in PRIVATE_TREES:
            upper = self.tree_upper(tree)
            work = upper.with_name("work")
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            script.append(f"mount -t overlay overlay -o lowerdir={tree},upperdir={upper},workdir={work} {tree}")
        for src, dst in ((self.cni_conf_dir, CNI_CONF_DIR), (self.cni_bin_dir, CNI_BIN_DIR),
                         (self.dir / "run-containerd", "/run/containerd"),
                         (self.dir / "run-podwire", "/run/podwire")):
            src.mkdir(parents=True, exist_ok=True)
            script += [f"mkdir -p {dst}", f"mount --bind {src} {dst}"]
        # kubelet's kernel tunables: it reads these files, the host's values stay untouched.
        sysctl_dir = self.dir / "sysctl"
        sysctl_dir.mkdir(parents=True, exist_ok=True)
        for key, value in KUBELET_SYSCTLS.items():
            f = sysctl_dir / key.replace("/", ".")
            f.write_text(f"{value}\n")
            script.append(f"mount --bind {f} /proc/sys/{key}")
        return script

    def _start_containerd(self) -> None:
        config = self.dir / "containerd.toml"
        config.write_text(containerd_config(self))
        bin_dir = self.containerd.bin_dir
        ctrd = bin_dir / "containerd"
        if not os.access(ctrd, os.X_OK):
            raise NodeRuntimeError(f"{ctrd} missing: run scripts/install-deps.sh (builds containerd 2.2, "
                                   "installs Debian's 1.6)")
        # Its own shim first on PATH (containerd looks the shim up there).
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
        self._spawn("containerd", [ctrd, "--config", config, "--log-level", "warn"], env=env)

    def wait_containerd(self, deadline: float) -> None:
        while self.ctr("version", check=False).returncode != 0:
            self._check_alive()
            if time.monotonic() > deadline:
                raise NodeRuntimeError(f"{self.node.name}: containerd not serving:\n"
                                       + self.procs["containerd"].log_tail())
            time.sleep(0.1)

    def import_image(self, tarball: Path) -> None:
        """Load an OCI tarball into this node (unpacked for the CRI's snapshotter)."""
        self.ctr("images", "import", "--snapshotter", self.snapshotter, tarball, timeout=180)

    def _prepare_kubelet(self) -> None:
        name = self.node.name
        kubeconfig = self.cp.kubeconfig_for(f"kubelet-{name}", f"system:node:{name}", orgs=("system:nodes",))
        (self.dir / "resolv.conf").write_text(f"nameserver {self.node.plan.gateway}\noptions ndots:1\n")
        for d in ("kubelet", "pod-logs", "volume-plugins"):
            (self.dir / d).mkdir(exist_ok=True)
        config = self.dir / "kubelet.yaml"
        config.write_text(yaml.safe_dump(kubelet_config(self, self.cp.pki.path("ca.crt"))))
        self._kubelet_argv = [
            self.bin / "kubelet", f"--config={config}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.dir / 'kubelet'}", f"--hostname-override={name}",
            f"--node-ip={','.join(map(str, self.node.ips))}",  # one per family, primary first
            "--v=1",
            "--node-labels=" + ",".join(f"{k}={v}" for k, v in topology_labels(name).items()),
        ]

    def launch_kubelet(self) -> None:
        self._spawn("kubelet", self._kubelet_argv)

    def start_kube_proxy(self) -> None:
        """kube-proxy (nftables mode) in this node: the anchor, not part of a podwire cluster."""
        name = self.node.name
        kubeconfig = self.cp.kubeconfig_for(f"kube-proxy-{name}", "system:kube-proxy")
        config = self.dir / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump(kube_proxy_config(self, kubeconfig, self.cp.config.cluster_cidrs)))
        self._spawn("kube-proxy", [self.bin / "kube-proxy", f"--config={config}", "--v=1"])

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if not proc.alive():
                raise NodeRuntimeError(f"{self.node.name}: {name} exited; last log lines:\n{proc.log_tail()}")

    # -- CNI for tests (before podwire's DaemonSet installs it) -------------------------

    def support_plugins(self) -> dict[str, Path]:
        """CNI plugins the runtime itself calls besides the conflist's (containerd 1.x: `loopback`)."""
        return {} if self.containerd.internal_loopback else {"loopback": LOOPBACK_PLUGIN}

    def install_cni(self, conflist: dict, plugins: dict[str, Path], name: str = "10-podwire.conflist") -> Path:
        """Put plugin executables (symlinks) into the node's /opt/cni/bin and a conflist into its
        /etc/cni/net.d (atomically: containerd watches the directory)."""
        for plugin, target in plugins.items():
            link = self.cni_bin_dir / plugin
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        path = self.cni_conf_dir / name
        tmp = path.with_name("." + name + ".tmp")
        tmp.write_text(json.dumps(conflist, indent=1))
        os.replace(tmp, path)
        return path


def podwire_conflist(rt: NodeRuntime, mtu: int = 1500) -> dict:
    """The conflist node_daemon/cniconf.py renders (what podwire's daemon writes), for this node's
    podCIDR, with the plugin's state and IPAM store in the node's directory and its log next to the
    node's other logs (hosts/<node>/logs/podwire-cni.log: kept by PODWIRE_E2E_KEEP_LOGS)."""
    if rt.node.pod_cidr is None:
        raise ValueError(f"{rt.node.name} has no podCIDR yet")
    cidrs = rt.node.pod_cidrs or (rt.node.pod_cidr,)
    state = rt.dir / "podwire"
    settings = cniconf.CniSettings(log_file=str(rt.node.dir / "logs" / "podwire-cni.log"), data_dir=str(state / "ipam"))
    # the plugin's state per node too (its default is one /var/lib directory for every "node")
    return cniconf.conflist(tuple(cidrs), mtu, settings, state_dir=str(state / "state"))


# -- all nodes -------------------------------------------------------------------------------


def start_nodes(cluster, timeout: float = 120, kube_proxy: bool = False,
                containerd: dict[str, str] | None = None) -> dict[str, NodeRuntime]:
    """Start every node's runtime, import the images, start kubelets (and kube-proxies if
    asked), wait until each Node is registered with a podCIDR (fills node.pod_cidr). Nodes
    become Ready once a CNI config exists in their conf dir (install_cni, or podwire's DaemonSet).
    `containerd`: node name -> a CONTAINERDS key, for nodes that run another than the default."""
    deadline = time.monotonic() + timeout
    tarballs = images.images()
    containerd = containerd or {}
    runtimes = {n.name: NodeRuntime(n, cluster.name, cluster.control_plane, cluster.bin_dir,
                                    containerd.get(n.name, DEFAULT_CONTAINERD)) for n in cluster.nodes}
    for rt in runtimes.values():
        rt.start()
    for rt in runtimes.values():
        rt.wait_containerd(deadline)
        for tarball in tarballs.values():
            rt.import_image(tarball)
        rt.launch_kubelet()
        if kube_proxy:
            rt.start_kube_proxy()
    api = cluster.api_client()
    try:
        from kubernetes import client

        core = client.CoreV1Api(api)
        for rt in runtimes.values():
            while True:
                rt._check_alive()
                try:
                    cidrs = core.read_node(rt.node.name).spec.pod_cidrs
                except client.ApiException as err:
                    if err.status != 404:
                        raise
                    cidrs = None
                if cidrs:
                    rt.node.pod_cidrs = tuple(ipaddress.ip_network(c) for c in cidrs)
                    rt.node.pod_cidr = rt.node.pod_cidrs[0]
                    break
                if time.monotonic() > deadline:
                    raise NodeRuntimeError(f"{rt.node.name} not registered with a podCIDR in {timeout}s:\n"
                                           + rt.procs["kubelet"].log_tail())
                time.sleep(0.2)
    finally:
        api.close()
    return runtimes


def import_image(runtimes, tarball: Path) -> None:
    """Load an OCI image tarball into every node (what `kind load image-archive` does).
    The image keeps the name its index gives it (`io.containerd.image.name` or
    `org.opencontainers.image.ref.name`); pods then use it with imagePullPolicy IfNotPresent."""
    for rt in runtimes.values() if isinstance(runtimes, dict) else runtimes:
        rt.import_image(Path(tarball))


def install_podwire_cni(cluster, dist: Path) -> None:
    """podwire's CNI on every node without its DaemonSet: a private copy of `dist` (the frozen
    dist/podwire folder; another `make dist` must not swap it mid-run) in the cluster's
    directory, linked from each node's /opt/cni/bin, and podwire_conflist() in /etc/cni/net.d."""
    copy = cluster.dir / "podwire-dist"
    if not copy.exists():
        shutil.copytree(dist, copy, symlinks=True)
    for rt in cluster.runtimes.values():
        rt.install_cni(podwire_conflist(rt), {"podwire": copy / "podwire", **rt.support_plugins()})


def node_ready(node_obj) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (node_obj.status.conditions or []))
