"""The daemon's side of "in force from the first packet": a unix socket the CNI plugin asks, at the
end of every ADD, to put its new pod's policy into the kernel before the pod starts.

Why a wait and not a default-deny of unknown addresses: kubelet writes a pod's IP into the API
only after the ADD returns, so without the plugin telling us, the daemon learns a new pod's
address only after its containers have started. Waiting here closes that window exactly: the
plugin's ADD returns only once the pod's isolation and allows (and its place as a peer in the
other local pods' allows) are committed; without policies that sync takes milliseconds.

Protocol: one JSON line each way. Request {"namespace", "name", "uid", "ips": [..]}; reply
{"ok": true} or {"ok": false, "error": "..."}. Everything is checked before use: names from the
API's alphabet, addresses parsed, sizes bounded; the socket is root's (mode 0600) in the node's
/run/podwire, which pods do not see.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import socketserver
import threading
import time
from typing import Callable

from policy.model import IPAddress
from proxy.from_api import parse_ip

log = logging.getLogger("podwire.policy")

MAX_REQUEST = 4096
MAX_WAITING = 128  # concurrent ADDs held; more get a "retry" answer
COMMIT_TIMEOUT = 10.0  # below the plugin's own wait (policy.timeout in the conflist, 15 s)
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_UID = re.compile(r"[A-Za-z0-9-]{0,64}")


class BadRequest(ValueError):
    pass


def parse_request(data: bytes) -> tuple[str, str, str, tuple[IPAddress, ...]]:
    """(namespace, name, uid, ips) from one request line; BadRequest with the reason otherwise."""
    try:
        req = json.loads(data)
    except (ValueError, RecursionError):
        raise BadRequest("not JSON") from None
    if not isinstance(req, dict):
        raise BadRequest("not a JSON object")
    ns, name, uid, ips = req.get("namespace"), req.get("name"), req.get("uid", ""), req.get("ips")
    for what, v in (("namespace", ns), ("name", name)):
        if not isinstance(v, str) or len(v) > 253 or not _NAME.fullmatch(v):
            raise BadRequest(f"bad {what} {v!r:.80}")
    if not isinstance(uid, str) or not _UID.fullmatch(uid):
        raise BadRequest(f"bad uid {uid!r:.80}")
    if not isinstance(ips, list) or not 1 <= len(ips) <= 2:
        raise BadRequest("ips: one or two addresses")
    parsed = []
    for v in ips:
        try:
            parsed.append(parse_ip(v))
        except ValueError:
            raise BadRequest(f"bad address {v!r:.80}") from None
    if len({ip.version for ip in parsed}) != len(parsed):
        raise BadRequest("two addresses of one family")
    return str(ns), str(name), uid, tuple(parsed)


class Gate:
    """Serves the socket; `admit` does the work (separate, so tests can call it directly).

    store: policy.store.Store; agent: policy.agent.PolicyAgent; trigger(): wakes the sync runner;
    fetch_pod(ns, name) -> API dict or None: the pod when the informer has not delivered it yet.
    """

    def __init__(self, path: str, node_name: str, store, agent, trigger: Callable[[], None],
                 fetch_pod: Callable[[str, str], dict | None], metrics=None, timeout: float = COMMIT_TIMEOUT,
                 ready: Callable[[], bool] = lambda: True):
        self.path, self.node_name, self.store, self.agent = path, node_name, store, agent
        self.ready = ready  # the informers' first LISTs are in: "no policy" means something
        self.trigger, self.fetch_pod, self.metrics, self.timeout = trigger, fetch_pod, metrics, timeout
        self._slots = threading.BoundedSemaphore(MAX_WAITING)
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def admit(self, ns: str, name: str, uid: str, ips: tuple[IPAddress, ...]) -> tuple[bool, str]:
        started = time.monotonic()
        while not self.ready():  # a daemon that just started knows of no policy yet
            if time.monotonic() - started > self.timeout:
                return False, "the daemon has not read the API yet"
            time.sleep(0.05)
        if not self.store.knows_pod(ns, name):
            obj = self.fetch_pod(ns, name)  # the informer lags the scheduler's write: ask the API
            if obj is not None:
                self.store.on_pod(obj, False)
        if not self.store.knows_pod(ns, name) and self.store.has_policies(ns):
            return False, f"pod {ns}/{name} is not in the API; its namespace has policies"
        # Always wait for the commit, policies or not: until it, the pod's address is not `known`
        # and the table drops its forwarded packets (a sync without policies costs milliseconds).
        version = self.store.report(ns, name, uid, ips, self.node_name)
        self.trigger()
        ok = self.agent.wait_committed(version, self.timeout)
        waited = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.admit.observe(waited)
        if not ok:
            return False, f"policy for {ns}/{name} not committed within {self.timeout:.0f}s"
        return True, f"in force after {waited * 1000:.0f} ms"

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        data = b""
        try:
            while b"\n" not in data and len(data) <= MAX_REQUEST:
                chunk = conn.recv(MAX_REQUEST + 1 - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError:
            return
        if not self._slots.acquire(blocking=False):
            reply = {"ok": False, "error": "too many pods waiting; retry"}
        else:
            try:
                if len(data) > MAX_REQUEST:
                    raise BadRequest("request too long")
                ns, name, uid, ips = parse_request(data.split(b"\n", 1)[0])
                ok, why = self.admit(ns, name, uid, ips)
                reply = {"ok": True} if ok else {"ok": False, "error": why}
                log.log(logging.DEBUG if ok else logging.WARNING, "CNI ADD %s/%s %s: %s", ns, name,
                        ",".join(map(str, ips)), why)
            except BadRequest as e:
                log.warning("policy gate: refused a request: %s", e)
                reply = {"ok": False, "error": f"bad request: {e}"}
            except Exception as e:  # noqa: BLE001 - never a traceback loop; the plugin retries
                log.exception("policy gate: request failed")
                reply = {"ok": False, "error": f"internal error: {type(e).__name__}"}
            finally:
                self._slots.release()
        try:
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass

    def start(self) -> "Gate":
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        try:
            os.unlink(self.path)  # left by a previous daemon
        except FileNotFoundError:
            pass
        gate = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                gate._handle(self.request)

        old = os.umask(0o177)
        try:
            self._server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        finally:
            os.umask(old)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="policy-gate", daemon=True)
        self._thread.start()
        log.info("policy gate listening on %s", self.path)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            try:
                os.unlink(self.path)
            except OSError:
                pass
