"""A TCP forwarder from the root namespace's loopback into the control-plane host.

Why it is built so: the root namespace must get no links or routes, yet kubectl, pytest and
the Python client there need the API server, which lives in the control-plane namespace.
A socket keeps the namespace it was created in. So the harness creates the *listening*
socket on 127.0.0.1 in the root namespace and hands it (as an inherited fd) to this process,
which it starts with `nsenter --net=<cp netns>`: every *outgoing* connection made here
therefore originates inside the control-plane host. The harness itself never switches
namespaces.

It only copies bytes (TLS stays end to end), so watches, exec/port-forward upgrades and
HTTP/2 all pass. Standalone on purpose (stdlib only): it is run as a script.

    nsenter --net=/run/netns/pwe-dev-cp python3 e2e/forwarder.py --fd 3 --connect 172.30.0.2:6443
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be talking
    except (ConnectionError, OSError):
        writer.transport.abort()


async def _handle(client_r, client_w, host: str, port: int) -> None:
    try:
        upstream_r, upstream_w = await asyncio.open_connection(host, port)
    except OSError:
        client_w.transport.abort()
        return
    try:
        await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))
    finally:
        for w in (client_w, upstream_w):
            w.close()


async def serve(listener: socket.socket, host: str, port: int) -> None:
    server = await asyncio.start_server(lambda r, w: _handle(r, w, host, port), sock=listener)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="forward an inherited listening socket to host:port")
    parser.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    parser.add_argument("--connect", required=True, help="host:port to connect to (from this netns)")
    args = parser.parse_args(argv)
    host, _, port = args.connect.rpartition(":")
    host = host.strip("[]")  # [v6]:port
    listener = socket.socket(fileno=args.fd)
    listener.setblocking(False)
    asyncio.run(serve(listener, host, int(port)))


if __name__ == "__main__":
    main()
