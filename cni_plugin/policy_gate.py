"""ADD's last step when the daemon enforces NetworkPolicy: wait until the new pod's policy is in
the kernel (policy/gate.py is the daemon's side), so the pod's first packet is already policed.

Imported only when the config has `policy` (the plain ADD path stays lean). Outcomes:
- the daemon answers ok: return;
- the daemon answers not ok, or not in time: code 11 (try again later); ADD undoes everything and
  kubelet retries the sandbox;
- nobody listens (daemon down or restarting): a pod in a namespace without policies cannot be
  isolated, so it goes ahead; in a namespace holding policies (the daemon's last published list)
  the ADD fails with code 11 until the daemon is back: fail closed, not open.
"""
from __future__ import annotations

import json
import socket

from cni_plugin.errors import TRY_AGAIN, CNIError


def pod_of(cni_args: str) -> tuple[str, str, str] | None:
    """(namespace, name, uid) from CNI_ARGS as kubelet's runtimes pass it; None for other callers."""
    args = dict(pair.split("=", 1) for pair in cni_args.split(";") if "=" in pair)
    ns, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    if not ns or not name:
        return None
    return ns, name, args.get("K8S_POD_UID", "")


def _policy_namespaces(path: str) -> set[str] | None:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else None


def _mark_known(ips: list[str], log) -> None:
    """Let the node forward the pod's traffic although the daemon has not classified it: add its
    addresses to the policy table's `known` sets (the one write the plugin makes to that table; the
    daemon's next full sync replaces the sets with what the API says). `ips` are our IPAM's."""
    import ipaddress

    from netkit import nftexec  # the project's nft process runner (finds nft whatever PATH the runtime gives)

    lines = []
    for text in ips:
        ip = ipaddress.ip_address(text)  # typed again before it becomes nft text
        lines.append(f"add element inet podwire-policy known{ip.version} {{ {ip} }}")
    try:
        err = nftexec.run("\n".join(lines) + "\n")
    except OSError as e:
        err = str(e)
    if err is not None:
        log(f"policy: could not mark {ips} known ({err.strip()[:200]}); no policy table here?")


def wait(gate, cni_args: str, ips: list[str], log) -> None:
    """`gate`: config.PolicyGate. Raises CNIError(11) when the pod must not start yet."""
    pod = pod_of(cni_args)
    if pod is None:
        log("policy: no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS; not a Kubernetes pod, not policed")
        return
    ns, name, uid = pod
    request = json.dumps({"namespace": ns, "name": name, "uid": uid, "ips": ips}).encode() + b"\n"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(gate.timeout)
    try:
        try:
            s.connect(gate.socket)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            held = _policy_namespaces(gate.namespaces_file)
            if held is not None and ns not in held:
                log(f"policy: daemon not answering ({e.strerror}); namespace {ns} holds no policy, going ahead")
                _mark_known(ips, log)
                return
            raise CNIError(TRY_AGAIN, f"NetworkPolicy for {ns}/{name} cannot be confirmed: the podwire daemon "
                           f"does not answer on {gate.socket} ({e.strerror}) and namespace {ns} may hold "
                           "policies; retry when it runs") from None
        s.sendall(request)
        data = b""
        while not data.endswith(b"\n") and len(data) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError as e:  # timeout, reset
        raise CNIError(TRY_AGAIN, f"NetworkPolicy for {ns}/{name} not confirmed by the podwire daemon: "
                       f"{e.strerror or type(e).__name__}") from None
    finally:
        s.close()
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        why = reply.get("error") if isinstance(reply, dict) else "no answer"
        raise CNIError(TRY_AGAIN, f"NetworkPolicy for {ns}/{name} not in force: {str(why)[:300]}")
