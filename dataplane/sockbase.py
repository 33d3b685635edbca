"""What the node's two socket layers share: `dataplane.reactor` (the HTTP hot path's
edge-triggered loop, the owner of the fast path) and `dataplane.net` (plain trio waits on raw
sockets, for layer 4, listeners and probes).

One `ConnectError` (so a caller catches the same class whichever layer connected), one address
resolution (numeric addresses without a thread, names in a trio worker thread), one way to make
an upstream TCP socket, and one classification of `accept` errors. Nothing here waits: each
layer does its own waiting.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import trio

AddrInfo = tuple[Any, ...]

# accept() errors: out of descriptors (back off, then retry) and a client gone before we took it (retry)
ACCEPT_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
ACCEPT_RETRY = frozenset((errno.ECONNABORTED, errno.EPROTO))
CONNECT_PENDING = frozenset((errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK))


class ConnectError(OSError):
    """The upstream refused, was unreachable, or did not answer in time."""


def numeric_addr(host: str, port: int) -> AddrInfo | None:
    """The first addrinfo of a numeric `host` (no system call beyond parsing), or None for a name."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)[0]
    except socket.gaierror:
        return None


async def resolve(host: str, port: int) -> AddrInfo:
    """The first addrinfo of `host` resolved in a worker thread (a trio coroutine); ConnectError
    when the name does not resolve."""
    try:
        infos = await trio.to_thread.run_sync(
            lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), abandon_on_cancel=True
        )
    except socket.gaierror as exc:
        raise ConnectError(errno.EHOSTUNREACH, f"cannot resolve {host}: {exc}") from None
    return infos[0]


def set_nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def tcp_socket(info: AddrInfo) -> socket.socket:
    """A non-blocking TCP socket with TCP_NODELAY for the address family of `info`."""
    sock = socket.socket(info[0], socket.SOCK_STREAM, info[2])
    sock.setblocking(False)
    set_nodelay(sock)
    return sock


def connect_failed(host: str, port: int, err: int) -> ConnectError:
    return ConnectError(err, f"connect to {host}:{port}: {errno.errorcode.get(err, err)}")


def connect_timed_out(host: str, port: int, timeout: float) -> ConnectError:
    return ConnectError(errno.ETIMEDOUT, f"connect to {host}:{port}: timed out after {timeout:g}s")
