"""Read the server name (SNI) from the start of a TLS connection without terminating TLS.

https tunnel proxies are passed through: the node reads the ClientHello, picks the agent by
the name in it, and forwards every byte, the ClientHello included, untouched.

`sni_from(data)` looks at the bytes received so far:
- `NeedMore` while the ClientHello is not complete,
- the server name (lower case, no trailing dot) when it is there,
- `None` when the bytes are not a TLS ClientHello or carry no server name.
Handshake messages split over several TLS records are supported (up to `MAX_HELLO` bytes).
"""

from __future__ import annotations

import struct

MAX_HELLO = 16 * 1024


class NeedMore:
    """More bytes are needed to decide."""


NEED_MORE = NeedMore()


def _handshake_bytes(data: bytes) -> bytes | NeedMore | None:
    """The concatenated handshake-record payloads, None if not TLS handshake records."""
    out = bytearray()
    pos = 0
    while True:
        if len(data) < pos + 5:
            return NEED_MORE
        ctype, major = data[pos], data[pos + 1]
        (length,) = struct.unpack_from("!H", data, pos + 3)
        if ctype != 22 or major != 3 or length == 0 or length > 16384 + 2048:
            return None
        if len(data) < pos + 5 + length:
            out += data[pos + 5 :]
            if len(out) >= 4:
                need = 4 + int.from_bytes(out[1:4], "big")
                if need > MAX_HELLO:
                    return None
            return NEED_MORE
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(out) >= 4:
            need = 4 + int.from_bytes(out[1:4], "big")
            if need > MAX_HELLO:
                return None
            if len(out) >= need:
                return bytes(out[:need])


def sni_from(data: bytes) -> str | NeedMore | None:
    hs = _handshake_bytes(data)
    if hs is None or isinstance(hs, NeedMore):
        return hs
    if hs[0] != 1:  # not a ClientHello
        return None
    try:
        return _parse_client_hello(memoryview(hs)[4:])
    except (IndexError, struct.error, UnicodeDecodeError):
        return None


def _parse_client_hello(body: memoryview) -> str | None:
    pos = 2 + 32  # client_version, random
    sid_len = body[pos]
    pos += 1 + sid_len
    (cs_len,) = struct.unpack_from("!H", body, pos)
    pos += 2 + cs_len
    comp_len = body[pos]
    pos += 1 + comp_len
    if pos == len(body):
        return None  # no extensions
    (ext_total,) = struct.unpack_from("!H", body, pos)
    pos += 2
    end = pos + ext_total
    if end > len(body):
        return None
    while pos + 4 <= end:
        ext_type, ext_len = struct.unpack_from("!HH", body, pos)
        pos += 4
        if pos + ext_len > end:
            return None
        if ext_type == 0:  # server_name
            ext = body[pos : pos + ext_len]
            (list_len,) = struct.unpack_from("!H", ext, 0)
            p = 2
            while p + 3 <= 2 + list_len and p + 3 <= len(ext):
                name_type = ext[p]
                (name_len,) = struct.unpack_from("!H", ext, p + 1)
                name = bytes(ext[p + 3 : p + 3 + name_len])
                if len(name) != name_len:
                    return None
                if name_type == 0:
                    host = name.decode("ascii").lower().rstrip(".")
                    return host or None
                p += 3 + name_len
            return None
        pos += ext_len
    return None
