"""Direct agent-to-agent TCP connections for xtcp: hole punching by simultaneous open.

Both peers bind a port first (`bind_punch_socket`) and tell the node, which tells each the
other's public address. Then each connects from its bound port to the other's, again and
again until one attempt gets through (the first SYNs open the NATs' mappings; when the two
SYNs cross, TCP's simultaneous open makes one connection). The provider also listens on
its port, so a SYN that arrives after its own attempt failed still finds a socket.

The visitor proves it holds the secret key with `proof(secret, sid)` as the first 32 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import socket

import trio

from fluxcommon.netaddr import parse_peer

PROOF_SIZE = 32


def proof(secret_key: str, sid: str) -> bytes:
    return hmac.new(secret_key.encode(), f"xtcp|{sid}".encode(), hashlib.sha256).digest()


def _socket(port: int, family: int = socket.AF_INET) -> trio.socket.SocketType:
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


async def bind_punch_socket(host: str = "0.0.0.0") -> tuple[trio.socket.SocketType, int]:
    """A listening socket on a fresh port that connect attempts may share (SO_REUSEPORT)."""
    sock = _socket(0)
    await sock.bind((host, 0))
    sock.listen(8)
    return sock, sock.getsockname()[1]


async def punch(
    listener: trio.socket.SocketType, port: int, peers: list[str], within: float
) -> trio.SocketStream | None:
    """A connected stream to one of `peers` (tried in order, in parallel), or None after `within` seconds."""
    targets = [a for a in (parse_peer(p) for p in peers) if a is not None]
    result: list[trio.SocketStream] = []

    async def accept(cancel: trio.CancelScope) -> None:
        conn, _ = await listener.accept()
        if not result:
            result.append(trio.SocketStream(conn))
            cancel.cancel()
        else:
            conn.close()

    async def dial(target: tuple[str, int], cancel: trio.CancelScope) -> None:
        while not result:
            sock = _socket(port)
            try:
                await sock.bind(("0.0.0.0", port))
                with trio.move_on_after(0.5):
                    await sock.connect(target)
                    if not result:
                        result.append(trio.SocketStream(sock))
                        cancel.cancel()
                        return
            except OSError:
                pass
            sock.close()
            await trio.sleep(0.05)

    with trio.move_on_after(within):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept, nursery.cancel_scope)
            for target in targets:
                nursery.start_soon(dial, target, nursery.cancel_scope)
    listener.close()
    return result[0] if result else None
