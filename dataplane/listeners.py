"""ListenerManager: open, keep or close listening sockets as config versions change.

Applying a version is two steps so a bind failure can refuse the version
whole: `prepare(config)` binds every new socket (raising `ListenError` with
the listener named), then `commit(plan)` starts their accept loops and stops
the ones no longer configured. Stopping a listener closes its socket only;
connections it accepted live in their own nursery and finish their requests.
Sockets use SO_REUSEPORT so several worker processes share a port.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from functools import partial

import trio

from dataplane import net
from dataplane.config.isolation import Fault
from dataplane.config.runtime import DEFAULT_LISTENER_SETTINGS, ListenerRuntime, RuntimeConfig
from dataplane.http.errors import error_response
from dataplane.http.proxy import ProxyServices, serve_http
from dataplane.l4 import serve_tcp, serve_udp
from dataplane.reactor import RSock
from dataplane.tls.contexts import ServerTls
from dataplane.tls.rsock import TlsRSock

log = logging.getLogger("flux.listeners")

SocketKey = tuple[str, str, int, str]  # (transport, address, port, protocol)


class ListenError(Exception):
    """A listener's socket cannot be opened on this node (`fault`: that listener)."""

    def __init__(self, message: str, listener: str) -> None:
        super().__init__(message)
        self.fault = Fault("listener", listener)


@dataclass
class _Active:
    key: SocketKey
    sock: socket.socket
    name: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    rsock: RSock | None = None  # http listeners accept on the reactor


@dataclass
class Plan:
    opened: list[_Active]
    renamed: list[tuple[_Active, str]]
    closing: list[_Active]


def _key(lst: ListenerRuntime) -> SocketKey:
    transport, address, port = lst.socket_key
    return (transport, address, port, lst.protocol)


class ListenerManager:
    def __init__(self, svc: ProxyServices) -> None:
        self.svc = svc
        self.active: dict[SocketKey, _Active] = {}
        self._services: trio.Nursery | None = None
        self._connections: trio.Nursery | None = None
        self.unsupported: dict[str, str] = {}

    def bind(self, services: trio.Nursery, connections: trio.Nursery) -> None:
        self._services = services
        self._connections = connections

    def prepare(self, cfg: RuntimeConfig) -> Plan:
        wanted: dict[SocketKey, ListenerRuntime] = {}
        self.unsupported = {}
        for lst in cfg.listeners.values():
            wanted[_key(lst)] = lst
        opened: list[_Active] = []
        try:
            for key, lst in wanted.items():
                if key in self.active:
                    continue
                kind = socket.SOCK_DGRAM if lst.protocol == "udp" else socket.SOCK_STREAM
                try:
                    sock = net.listen_socket(lst.address, lst.port, kind=kind)
                except OSError as exc:
                    raise ListenError(
                        f"listener {lst.name!r}: cannot listen on {lst.protocol} {lst.address}:{lst.port}: "
                        f"{exc.strerror or exc}",
                        lst.name,
                    ) from None
                opened.append(_Active(key, sock, lst.name))
        except ListenError:
            for a in opened:
                net.close(a.sock)
            raise
        renamed = [(a, wanted[k].name) for k, a in self.active.items() if k in wanted and a.name != wanted[k].name]
        closing = [a for k, a in self.active.items() if k not in wanted]
        return Plan(opened, renamed, closing)

    def commit(self, plan: Plan) -> None:
        assert self._services is not None, "bind() first"
        for active in plan.closing:
            log.info("closing listener %s (%s %s:%d)", active.name, active.key[3], active.key[1], active.key[2])
            del self.active[active.key]
            self._close(active)
        for active, name in plan.renamed:
            active.name = name
        for active in plan.opened:
            self.active[active.key] = active
            if active.key[3] in ("http", "https"):
                active.rsock = self.svc.reactor.wrap(active.sock)
                self.svc.reactor.spawn(self._accept_http(active), f"accept {active.name}")
            else:
                self._services.start_soon(self._serve, active)
            port = active.sock.getsockname()[1]
            log.info("listening: %s %s on %s:%d", active.key[3], active.name, active.key[1], port)
        for name, why in self.unsupported.items():
            log.warning("listener %s: %s", name, why)

    def abort(self, plan: Plan) -> None:
        for active in plan.opened:
            net.close(active.sock)

    async def _serve(self, active: _Active) -> None:
        try:
            await self._accept_loop(active)
        except (trio.ClosedResourceError, OSError) as exc:
            if active.key in self.active:  # not closed on purpose
                log.error("listener %s stopped: %s", active.name, exc)

    async def _accept_loop(self, active: _Active) -> None:
        """tcp and udp listeners: trio tasks."""
        with active.scope:
            if active.key[3] == "udp":
                await serve_udp(self.svc, active.sock, lambda: active.name)
                return
            conns = self._connections
            assert conns is not None
            passthrough = active.key[3] == "tls"
            while True:
                sock, peer = await net.accept(active.sock)
                conns.start_soon(partial(serve_tcp, passthrough=passthrough), self.svc, sock, peer, active.name)

    async def _accept_http(self, active: _Active) -> None:
        """http listeners: a reactor task accepting, one reactor task per admitted connection."""
        svc = self.svc
        reactor = svc.reactor
        admission = svc.admission
        assert active.rsock is not None
        try:
            while True:
                sock, peer = await active.rsock.accept()
                name, ip = active.name, peer[0]
                cfg = svc.holder.current
                lst = cfg.listeners.get(name) if cfg is not None else None
                settings = lst.settings if lst is not None else DEFAULT_LISTENER_SETTINGS
                tls = lst.tls.current if lst is not None and lst.tls is not None else None
                if active.key[3] == "https" and tls is None:
                    sock.close()  # the listener is going away with this config version
                    continue
                reason = admission.check(name, ip, settings, fd=sock.fileno(), in_use=reactor.open_sockets)
                reclaimed = reason == "fd_reserve" and svc.reclaim_idle()
                if reclaimed:
                    reason = None  # an idle connection makes room
                if reason is not None:
                    admission.refuse(name, ip, reason, time.monotonic())
                    _refuse(sock, reason)
                    continue
                admission.admit(name, ip)
                reactor.spawn(self._serve_http(sock, peer, name, tls), "http")
                if reclaimed:
                    await reactor.sleep(0)  # let the idle connection close before the next accept
        except OSError as exc:
            if active.key in self.active:  # not closed on purpose
                log.error("listener %s stopped: %s", active.name, exc)

    async def _serve_http(self, sock: socket.socket, peer: tuple[str, int], name: str, tls: ServerTls | None) -> None:
        try:
            if tls is None:
                await serve_http(self.svc, self.svc.reactor.wrap(sock), peer, name)
            else:
                try:
                    rsock = TlsRSock(self.svc.reactor, tls.wrap(sock))
                except OSError:
                    sock.close()
                    return
                await serve_http(self.svc, rsock, peer, name, b"https")
        finally:
            self.svc.admission.release(name, peer[0])

    def _close(self, active: _Active) -> None:
        if active.rsock is not None:
            active.rsock.close()  # ends its accept task
        else:
            active.scope.cancel()
            net.close(active.sock)

    def close_all(self) -> None:
        for active in list(self.active.values()):
            self._close(active)
        self.active.clear()

    def ports(self) -> dict[str, int]:
        """Listener name -> bound port (useful when a config asks for port 0 in tests)."""
        return {a.name: a.sock.getsockname()[1] for a in self.active.values()}


_REFUSED = error_response(503, "too many connections", close=True)


def _refuse(sock: socket.socket, reason: str) -> None:
    """Close a connection the listener may not serve; over a limit it first gets a 503 if the
    kernel takes it at once (nothing waits on a refused client). Short of descriptors, not even that."""
    if reason != "fd_reserve":
        try:
            sock.send(_REFUSED)
        except OSError:
            pass
    sock.close()
