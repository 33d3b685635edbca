"""Public ports of a tunnel server: tcp and udp remote ports, and the https (SNI) vhost port.

Each port is bound when the first proxy claims it and closed (synchronously, so the port is
free at once for a reconnecting agent) when the last one leaves. Accepted connections are
handed to the server's `relay`; datagrams go to the agent chosen for their peer.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from dataplane.tunnel.registry import Group, ProxyRef
from dataplane.tunnel.sni import NEED_MORE, sni_from
from fluxcommon.netaddr import parse_peer
from fluxcommon.tunnel.transport.link import SEND_BUFFER
from fluxcommon.tunnel.transport.prefixed import PrefixedStream
from fluxcommon.tunnel.transport.sockstream import UDP_BATCH, BulkSocketStream, drain_datagrams

if TYPE_CHECKING:
    from dataplane.tunnel.server import TunnelServer

log = logging.getLogger("flux.tunnel")

UDP_PEER_IDLE = 60.0
SNI_TIMEOUT = 10.0


def bind_stream(address: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on `address`:`port` (OSError if the port cannot be had)."""
    return _bind(address, port, socket.SOCK_STREAM)


def _bind(address: str, port: int, kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Port:
    def __init__(self, server: TunnelServer, port: int) -> None:
        self.server = server
        self.port = port
        self.sock: socket.socket | None = None
        self.scope = trio.CancelScope()

    def close(self) -> None:
        self.scope.cancel()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class TcpPort(_Port):
    """A tcp remote port: each connection becomes a work stream to an agent of the group."""

    def __init__(self, server: TunnelServer, group: Group, port: int) -> None:
        super().__init__(server, port)
        self.group = group

    def open(self) -> None:
        self.sock = _bind(self.server.bind_address, self.port, socket.SOCK_STREAM)
        self.server.nursery.start_soon(self._accept_loop, trio.socket.from_stdlib_socket(self.sock))

    async def _accept_loop(self, tsock: trio.socket.SocketType) -> None:
        with self.scope:
            while True:
                try:
                    conn, _addr = await tsock.accept()
                except OSError as exc:  # closed under us, or out of descriptors
                    if self.sock is None:
                        return
                    log.warning("tunnel tcp port %d: accept failed: %s", self.port, exc)
                    await trio.sleep(0.1)
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)  # fewer, larger sends
                self.server.nursery.start_soon(self.server.relay, self.group, BulkSocketStream.adopt(conn))


class UdpPort(_Port):
    """A udp remote port: datagrams travel as UDP_PACKET frames; each peer sticks to one agent."""

    def __init__(self, server: TunnelServer, group: Group, port: int) -> None:
        super().__init__(server, port)
        self.group = group
        self.peers: dict[str, tuple[ProxyRef, float]] = {}
        self.received = 0
        self.sent = 0
        self.dropped = 0

    def open(self) -> None:
        self.sock = _bind(self.server.bind_address, self.port, socket.SOCK_DGRAM)
        self.server.nursery.start_soon(self._recv_loop, trio.socket.from_stdlib_socket(self.sock))

    def _agent_for(self, peer: str, now: float) -> ProxyRef | None:
        entry = self.peers.get(peer)
        if entry is not None and entry[0] in self.group.members:
            self.peers[peer] = (entry[0], now)
            return entry[0]
        ref = self.group.pick()
        if ref is not None:
            if len(self.peers) > 4096:
                self.peers = {p: e for p, e in self.peers.items() if now - e[1] < UDP_PEER_IDLE}
            self.peers[peer] = (ref, now)
        return ref

    async def _recv_loop(self, tsock: trio.socket.SocketType) -> None:
        std = self.sock  # kept: `close` clears self.sock while this task may be between reads
        assert std is not None
        with self.scope:
            while True:
                try:
                    batch = [await tsock.recvfrom(65535)]
                except OSError:
                    if self.sock is None:
                        return
                    await trio.sleep(0.05)
                    continue
                # Take what else is waiting without going back through trio: the datagrams go to
                # the agent in one write (one TLS record, one send) instead of one each.
                batch += drain_datagrams(std, UDP_BATCH - 1)  # [] once closed (EBADF)
                now = trio.current_time()
                for data, addr in batch:
                    host, port = addr[:2]
                    peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    ref = self._agent_for(peer, now)
                    if ref is None or not ref.session.send_udp(ref, peer, data):
                        self.dropped += 1
                        continue
                    self.received += 1
                    ref.bytes_in += len(data)

    def send_to(self, peer: str, data: bytes) -> None:
        """A datagram from the agent back to `peer` (dropped when the socket would block)."""
        if self.sock is None:
            return
        addr = parse_peer(peer)
        if addr is None:
            self.dropped += 1
            return
        try:
            self.sock.sendto(data, addr)
            self.sent += 1
        except OSError:
            self.dropped += 1


class StreamPort(_Port):
    """A TCP port whose connections each go to `_route` (a subclass reads a head, picks a proxy)."""

    kind = "tcp"

    def open(self, sock: socket.socket | None = None) -> None:
        """Serve the port: on `sock` if the server bound it already, else bind it now."""
        self.sock = sock if sock is not None else _bind(self.server.bind_address, self.port, socket.SOCK_STREAM)
        self.server.nursery.start_soon(self._accept_loop, trio.socket.from_stdlib_socket(self.sock))

    async def _accept_loop(self, tsock: trio.socket.SocketType) -> None:
        with self.scope:
            while True:
                try:
                    conn, _addr = await tsock.accept()
                except OSError as exc:
                    if self.sock is None:
                        return
                    log.warning("tunnel %s port %d: accept failed: %s", self.kind, self.port, exc)
                    await trio.sleep(0.1)
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.server.nursery.start_soon(self._route, BulkSocketStream.adopt(conn))

    async def _route(self, stream: BulkSocketStream) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class HttpsVhostPort(StreamPort):
    """The https vhost port: reads the ClientHello's server name and passes the bytes through."""

    kind = "https vhost"

    def __init__(self, server: TunnelServer, port: int, find: Callable[[str], Group | None]) -> None:
        super().__init__(server, port)
        self.find = find

    async def _route(self, stream: BulkSocketStream) -> None:
        data = b""
        name: object = NEED_MORE
        with trio.move_on_after(SNI_TIMEOUT):
            while name is NEED_MORE:
                try:
                    chunk = await stream.receive_some(16384)
                except (trio.BrokenResourceError, OSError):
                    chunk = b""
                if not chunk:
                    break
                data += chunk
                name = sni_from(data)
        group = self.find(name) if isinstance(name, str) else None
        if group is None:
            log.info("https vhost: no tunnel proxy for server name %r", name if isinstance(name, str) else None)
            self.server.metrics.vhost_misses += 1
            await _close(stream)
            return
        await self.server.relay(group, PrefixedStream(stream, data))


async def _close(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(1):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


RelayFn = Callable[[Group, trio.abc.HalfCloseableStream], Awaitable[None]]
