"""The one small HTTP server behind every endpoint podwire serves.

The daemon's /metrics and /healthz, kube-proxy's :10256 /healthz and /livez, one listener per
healthCheckNodePort, and kube-proxy's 127.0.0.1:10249 (/healthz, /proxyMode, /metrics) are all
a few GETs per second from probes and scrapers: `http.server` threads are enough, and one class
keeps their behaviour (quiet logs, IPv6 listen addresses, nosniff, clean close) the same.
A server answers through a function path -> Reply (or None: 404), so what is served stays
plain logic that tests call without sockets.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass(frozen=True)
class Reply:
    code: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


def text(code: int, body: str) -> Reply:
    return Reply(code, body.encode())


def as_json(code: int, body) -> Reply:
    return Reply(code, json.dumps(body).encode(), "application/json")


Answer = Callable[[str], "Reply | None"]


def split_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' (an empty host: every IPv4 address) -> (host, port).
    The config has validated the text; this only takes it apart."""
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _handler(answer: Answer):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            reply = answer(self.path.split("?")[0]) or text(404, "not found\n")
            self.send_response(reply.code)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, *args):  # probes and scrapes every few seconds: keep the log quiet
            pass
    return Handler


class Server(ThreadingHTTPServer):
    """Listening once constructed (OSError when the address is taken), served by a daemon thread."""

    daemon_threads = True

    def __init__(self, host: str, port: int, answer: Answer, name: str = "http"):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _handler(answer))
        self.thread = threading.Thread(target=self.serve_forever, name=name, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def stop(self) -> None:  # the daemon stops its parts with .stop()
        self.close()
