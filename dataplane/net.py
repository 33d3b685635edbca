"""Thin trio I/O on raw non-blocking stdlib sockets: layer 4, listeners and health probes.

Each call tries the socket first and parks on `trio.lowlevel.wait_readable`
/ `wait_writable` only when the kernel says it would block. When data is
already there this costs one system call and no trip through the scheduler,
which is what makes a Python proxy fast enough; every wait is still a trio
checkpoint, so timeouts and cancellation work as usual.

Rules for callers: a socket passed here is non-blocking and owned by one task;
close it with `close()` (which tells trio first) and never use it after.

The HTTP hot path does not use this module: it runs on `dataplane.reactor`, which waits on its
own epoll. What the two layers have in common (`ConnectError`, address resolution, the upstream
socket's options, accept's error classes) lives once, in `dataplane.sockbase`.
"""

from __future__ import annotations

import socket

import trio
from trio.lowlevel import notify_closing, wait_readable, wait_writable

from dataplane.sockbase import (
    ACCEPT_EXHAUSTED,
    ACCEPT_RETRY,
    CONNECT_PENDING,
    ConnectError,
    connect_failed,
    connect_timed_out,
    numeric_addr,
    resolve,
    set_nodelay,
    tcp_socket,
)

__all__ = [
    "RECV_SIZE",
    "ConnectError",
    "accept",
    "close",
    "connect",
    "listen_socket",
    "recv",
    "send_all",
    "set_nodelay",
]

RECV_SIZE = 65536


async def recv(sock: socket.socket, size: int = RECV_SIZE) -> bytes:
    """Up to `size` bytes; b"" at EOF. Raises OSError on reset."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            await wait_readable(sock)


async def send_all(sock: socket.socket, data: bytes | bytearray | memoryview) -> None:
    """Write all of `data`. Raises OSError (BrokenPipe, ConnectionReset) when the peer is gone."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return
    view = memoryview(data)[sent:]
    while view:
        await wait_writable(sock)
        try:
            sent = sock.send(view)
        except BlockingIOError:
            continue
        view = view[sent:]


def close(sock: socket.socket) -> None:
    if sock.fileno() >= 0:
        try:
            notify_closing(sock)
        except Exception:  # not registered with trio's I/O manager
            pass
        sock.close()


async def connect(host: str, port: int, connect_timeout: float) -> socket.socket:
    """A connected non-blocking TCP socket, or ConnectError (refused, unreachable, unresolvable,
    timed out)."""
    info = numeric_addr(host, port) or await resolve(host, port)
    sock = tcp_socket(info)
    try:
        with trio.fail_after(connect_timeout):
            err = sock.connect_ex(info[4])
            if err in CONNECT_PENDING:
                await wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise connect_failed(host, port, err)
    except trio.TooSlowError:
        close(sock)
        raise connect_timed_out(host, port, connect_timeout) from None
    except BaseException:
        close(sock)
        raise
    return sock


def listen_socket(
    address: str, port: int, *, kind: int = socket.SOCK_STREAM, reuse_port: bool = True, backlog: int = 4096
) -> socket.socket:
    """A bound (and for TCP listening) non-blocking socket with SO_REUSEADDR/SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address == "::" else 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def accept(lsock: socket.socket) -> tuple[socket.socket, tuple[str, int]]:
    while True:
        try:
            conn, addr = lsock.accept()
        except BlockingIOError:
            await wait_readable(lsock)
            continue
        except OSError as exc:
            if exc.errno in ACCEPT_EXHAUSTED:
                await trio.sleep(0.1)  # out of descriptors: back off instead of spinning
                continue
            if exc.errno in ACCEPT_RETRY:
                continue
            raise
        conn.setblocking(False)
        set_nodelay(conn)
        return conn, addr[:2]
