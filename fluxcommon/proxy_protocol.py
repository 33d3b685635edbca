"""HAProxy PROXY protocol headers (v1 text, v2 binary): the client address ahead of the bytes.

The tunnel agent writes one to the local service when a proxy sets
`transport.proxyProtocolVersion`, so the service sees the real client, not the agent.
`encode_v1` / `encode_v2` build headers; `parse` reads one back (used by tests and by
anyone who wants to accept them), answering `(header, consumed_bytes)`, `NEED_MORE`, or
raising `ProxyProtocolError`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107


class ProxyProtocolError(ValueError):
    pass


@dataclass(frozen=True)
class ProxyHeader:
    source: tuple[str, int] | None  # None: LOCAL / UNKNOWN (no address carried)
    dest: tuple[str, int] | None
    datagram: bool = False


class _NeedMore:
    pass


NEED_MORE = _NeedMore()


def _family(host: str) -> int:
    return ipaddress.ip_address(host).version


def encode_v1(source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    """`PROXY TCP4 src dst sport dport\\r\\n` (TCP6 for IPv6; UNKNOWN when families differ)."""
    try:
        fam_s, fam_d = _family(source[0]), _family(dest[0])
    except ValueError:
        return b"PROXY UNKNOWN\r\n"
    if fam_s != fam_d:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP4" if fam_s == 4 else "TCP6"
    return f"PROXY {proto} {source[0]} {dest[0]} {source[1]} {dest[1]}\r\n".encode()


def encode_v2(source: tuple[str, int], dest: tuple[str, int], *, datagram: bool = False) -> bytes:
    """A v2 PROXY header (command PROXY, TCP or UDP over IPv4/IPv6; LOCAL when unknown)."""
    try:
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(dest[0])
    except ValueError:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    if src.version != dst.version:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    transport = 0x2 if datagram else 0x1
    family = 0x1 if src.version == 4 else 0x2
    body = src.packed + dst.packed + struct.pack("!HH", source[1], dest[1])
    return V2_SIGNATURE + bytes([0x21, (family << 4) | transport]) + struct.pack("!H", len(body)) + body


def parse(data: bytes) -> tuple[ProxyHeader, int] | _NeedMore:
    """Read a v1 or v2 header at the start of `data`."""
    if data.startswith(V2_SIGNATURE[: min(len(data), 12)]) and data[:1] == b"\r":
        if len(data) < 16:
            return NEED_MORE
        ver_cmd, fam = data[12], data[13]
        (length,) = struct.unpack_from("!H", data, 14)
        if ver_cmd >> 4 != 2:
            raise ProxyProtocolError("PROXY v2: bad version")
        if len(data) < 16 + length:
            return NEED_MORE
        body = data[16 : 16 + length]
        cmd = ver_cmd & 0x0F
        if cmd == 0:
            return ProxyHeader(None, None), 16 + length
        if cmd != 1:
            raise ProxyProtocolError("PROXY v2: bad command")
        family, transport = fam >> 4, fam & 0x0F
        size = {1: 4, 2: 16}.get(family)
        if size is None or transport not in (1, 2):
            return ProxyHeader(None, None), 16 + length
        if len(body) < 2 * size + 4:
            raise ProxyProtocolError("PROXY v2: address block too short")
        src = str(ipaddress.ip_address(body[:size]))
        dst = str(ipaddress.ip_address(body[size : 2 * size]))
        sport, dport = struct.unpack_from("!HH", body, 2 * size)
        return ProxyHeader((src, sport), (dst, dport), transport == 2), 16 + length
    if data.startswith(b"PROXY"[: len(data)]):
        end = data.find(b"\r\n")
        if end < 0:
            if len(data) >= V1_MAX:
                raise ProxyProtocolError("PROXY v1: header too long")
            return NEED_MORE
        if end + 2 > V1_MAX:
            raise ProxyProtocolError("PROXY v1: header too long")
        parts = data[:end].decode("ascii", "replace").split(" ")
        if len(parts) >= 2 and parts[1] == "UNKNOWN":
            return ProxyHeader(None, None), end + 2
        if len(parts) != 6 or parts[0] != "PROXY" or parts[1] not in ("TCP4", "TCP6"):
            raise ProxyProtocolError("PROXY v1: malformed header")
        try:
            src, dst = ipaddress.ip_address(parts[2]), ipaddress.ip_address(parts[3])
            sport, dport = int(parts[4]), int(parts[5])
        except ValueError:
            raise ProxyProtocolError("PROXY v1: bad address or port") from None
        if (src.version == 4) != (parts[1] == "TCP4") or not (0 <= sport <= 65535 and 0 <= dport <= 65535):
            raise ProxyProtocolError("PROXY v1: bad address or port")
        return ProxyHeader((str(src), sport), (str(dst), dport)), end + 2
    raise ProxyProtocolError("not a PROXY protocol header")
