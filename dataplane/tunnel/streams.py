"""Peer and local addresses of the tunnel server's streams, as "host:port" strings."""

from __future__ import annotations

import trio


def peer_of(stream: trio.abc.Stream) -> str:
    """ "ip:port" of a socket stream's peer (or "" when not a socket)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        inner = getattr(stream, "transport_stream", None) or getattr(stream, "inner", None)
        return peer_of(inner) if inner is not None else ""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_of(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    if sock is None:
        inner = getattr(stream, "transport_stream", None) or getattr(stream, "inner", None)
        return local_of(inner) if inner is not None else ""
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
