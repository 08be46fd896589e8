"""A minimal DNS client over UDP for the harness's checks (no dig on the machine).

Why it exists: the harness tests ask DNS servers inside namespaces (the upstream resolver, a
server pod) from a process started there: `python3 -m e2e.dnsquery SERVER NAME [TYPE]` prints
the rcode and the answers, one per line, and exits 0 when a reply came.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import sys

TYPES = {"A": 1, "PTR": 12, "AAAA": 28, "TXT": 16, "HINFO": 13}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def query(qid: int, name: str, qtype: str) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", TYPES[qtype], 1)


def _name(msg: bytes, pos: int) -> tuple[str, int]:
    """A (possibly compressed) name at pos -> (name, position after it)."""
    labels: list[str] = []
    end: int | None = None
    hops = 0
    while True:
        n = msg[pos]
        if n & 0xC0 == 0xC0:
            if hops > 32:
                raise ValueError("compression loop")
            end = pos + 2 if end is None else end
            pos, hops = ((n & 0x3F) << 8) | msg[pos + 1], hops + 1
        elif n == 0:
            return ".".join(labels) + ".", (pos + 1 if end is None else end)
        else:
            labels.append(msg[pos + 1:pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n


def parse(msg: bytes, qid: int) -> tuple[str, list[str]]:
    """(rcode name, answers as text: addresses for A/AAAA, names for PTR/CNAME)."""
    rid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    if rid != qid:
        raise ValueError("reply to another query")
    pos = 12
    for _ in range(qd):
        pos = _name(msg, pos)[1] + 4
    answers = []
    for _ in range(an):
        pos = _name(msg, pos)[1]
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", msg[pos:pos + 10])
        data = msg[pos + 10:pos + 10 + length]
        if rtype == 1:
            answers.append(str(ipaddress.IPv4Address(data)))
        elif rtype == 28:
            answers.append(str(ipaddress.IPv6Address(data)))
        elif rtype in (5, 12):
            answers.append(_name(msg, pos + 10)[0])
        pos += 10 + length
    return RCODES.get(flags & 0xF, str(flags & 0xF)), answers


def ask(server: str, name: str, qtype: str = "A", timeout: float = 2.0, port: int = 53) -> tuple[str, list[str]]:
    """One UDP query; raises TimeoutError when no reply comes."""
    qid = random.randrange(1 << 16)
    family = socket.AF_INET6 if ipaddress.ip_address(server).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query(qid, name, qtype), (server, port))
        while True:
            try:
                data, _ = s.recvfrom(4096)
            except socket.timeout:
                raise TimeoutError(f"no reply from {server} for {name} {qtype}") from None
            try:
                return parse(data, qid)
            except ValueError:
                continue  # a stray datagram


def main(argv=None) -> int:
    args = (argv if argv is not None else sys.argv[1:])
    if len(args) not in (2, 3):
        print("usage: python3 -m e2e.dnsquery SERVER NAME [A|AAAA|PTR|TXT]", file=sys.stderr)
        return 2
    try:
        rcode, answers = ask(args[0], args[1], args[2] if len(args) == 3 else "A")
    except (TimeoutError, OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(rcode)
    for a in answers:
        print(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
