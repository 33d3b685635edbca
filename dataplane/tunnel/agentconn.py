"""One agent's control connection to a tunnel server: login, proxies, visitors, datagrams."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from dataplane.tunnel.registry import ClaimError, ProxyRef
from fluxcommon.tunnel.protocol.binding import session_tag
from fluxcommon.tunnel.protocol.control import (
    LoginAccepted,
    LoginRefused,
    NatHoleReported,
    NatHoleRequested,
    PeerTimedOut,
    ProxyClosed,
    ProxyRequested,
    ServerSession,
    VisitorRequested,
    VisitorStreamOpened,
)
from fluxcommon.tunnel.protocol.mux import GoAway, Mux, StreamError, UdpPacket
from fluxcommon.tunnel.protocol.proxies import ProxyOptionsError, parse_new_proxy
from fluxcommon.tunnel.transport.link import TunnelLink, TunnelStream

if TYPE_CHECKING:
    from dataplane.tunnel.server import TunnelServer

log = logging.getLogger("flux.tunnel")

MAX_FRAME_DATA = 64 * 1024


class AgentConn:
    """The node's side of one agent connection (see TunnelServer for what it serves)."""

    def __init__(self, server: TunnelServer, transport: trio.abc.Stream, peer: str, tls: bool) -> None:
        self.server = server
        self.peer = peer
        self.tls = tls
        self.mux = Mux("server", max_frame_data=MAX_FRAME_DATA)
        self.session = ServerSession(
            self.mux,
            server.verifier,
            heartbeat_interval=server.heartbeat_timeout / 3,
            heartbeat_timeout=server.heartbeat_timeout,
            channel_binding=server.binding if tls else "",
            may_resume=lambda run_id: server.may_resume(run_id, self),
        )
        self.link = TunnelLink(transport, self.mux, self.session, self._on_event)
        self.name = ""
        self.run_id = ""
        self.version = ""
        self.metas: dict[str, str] = {}
        self.since = time.time()
        self.logged_in = False
        self.refs: dict[str, ProxyRef] = {}
        self.visiting: set[str] = set()
        self.nursery: trio.Nursery | None = None
        self.serial = server.next_serial()

    @property
    def token(self) -> str:
        return self.session.token

    @property
    def user(self) -> str:
        """The tunnel user it logged in as ("" for a shared token)."""
        return self.session.user

    def describe(self) -> dict[str, Any]:
        return {
            "agent": self.name,
            "user": self.user,
            "session": session_tag(self.run_id),  # the run id itself is never shown
            "version": self.version,
            "address": self.peer,
            "tls": self.tls,
            "connected_since": self.since,
            "bytes_in": self.link.bytes_in,
            "bytes_out": self.link.bytes_out,
            "connections": sum(r.connections for r in self.refs.values()),
            "proxies": [r.describe() for r in self.refs.values()],
            "visitors": sorted(self.visiting),
        }

    async def run(self) -> None:
        self.session.start(time.time())
        reason = "closed"
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.link.wake()
                reason = await self.link.run()
                nursery.cancel_scope.cancel()
        finally:
            self.server.detach(self)
            if self.logged_in:
                log.info("tunnel agent %r (%s) disconnected: %s", self.name, self.peer, reason)

    # -- events ----------------------------------------------------------------------------

    def _on_event(self, event: Any, stream: TunnelStream | None) -> None:
        server = self.server
        if isinstance(event, LoginAccepted):
            self.name, self.run_id, self.metas = event.name, event.run_id, event.metas
            self.version = event.metas.get("version", "")
            self.logged_in = True
            server.attach(self, reconnect=event.reconnect)
            log.info(
                "tunnel agent %r logged in from %s (%s, session %s%s)",
                self.name, self.peer, f"user {self.user!r}" if self.user else "shared token",
                session_tag(self.run_id), ", reconnect" if event.reconnect else "",
            )  # fmt: skip
        elif isinstance(event, LoginRefused):
            server.metrics.login_failures += 1
            log.warning("tunnel login refused from %s: %s", self.peer, event.message)
        elif isinstance(event, ProxyRequested):
            assert self.nursery is not None
            self.nursery.start_soon(self._new_proxy, event)
        elif isinstance(event, ProxyClosed):
            ref = self.refs.pop(event.name, None)
            if ref is not None:
                server.release(ref)
                log.info("tunnel agent %r closed proxy %r", self.name, event.name)
        elif isinstance(event, VisitorRequested):
            error = server.check_visitor(self, event)
            if error is None:
                self.session.accept_visitor(event.proxy)
                self.visiting.add(event.proxy)
            else:
                log.warning("tunnel visitor %r of %r refused: %s", self.name, event.proxy, error)
                self.session.reject_visitor(event.proxy, error)
        elif isinstance(event, VisitorStreamOpened):
            assert self.nursery is not None and stream is not None
            server.nursery.start_soon(server.relay_visitor, self, event.proxy, stream)
        elif isinstance(event, UdpPacket):
            server.udp_from_agent(self, event)
        elif isinstance(event, NatHoleRequested):
            server.nathole.request(self, event)
        elif isinstance(event, NatHoleReported):
            server.nathole.report(self, event)
        elif isinstance(event, GoAway):
            self.link.close(f"agent is going away: {event.reason}")
        elif isinstance(event, PeerTimedOut):
            log.warning("tunnel agent %r (%s): %s", self.name, self.peer, event.reason)
        self.link.wake()

    async def _new_proxy(self, event: ProxyRequested) -> None:
        try:
            request = parse_new_proxy(event.name, event.proxy_type, event.options)
        except ProxyOptionsError as exc:
            self._answer(event.name, error=str(exc))
            return
        ref = ProxyRef(self, request.name, request.proxy_type, request.options, since=time.time(), owner=self.user)
        try:
            remote = await self.server.claim(ref)
        except ClaimError as exc:
            self._answer(event.name, error=f"proxy {event.name!r}: {exc}")
            return
        if self.link.closed_reason is not None:
            self.server.release(ref)
            return
        self.refs[ref.name] = ref
        self._answer(event.name, remote=remote)
        log.info("tunnel agent %r serves %s proxy %r at %s", self.name, ref.type, ref.name, remote or "(secret)")

    def _answer(self, name: str, *, remote: str = "", error: str = "") -> None:
        try:
            if error:
                self.server.metrics.proxy_refusals += 1
                log.warning("tunnel agent %r: %s", self.name, error)
                self.session.reject_proxy(name, error)
            else:
                self.session.accept_proxy(name, remote)
        except StreamError:  # the agent closed the proxy meanwhile
            pass
        self.link.wake()

    def assign_static(self, ref: ProxyRef, remote: str, local_ip: str, local_port: int) -> None:
        self.refs[ref.name] = ref
        self.session.assign_proxy(ref.name, ref.type, local_ip, local_port, remote)
        self.link.wake()

    # -- used by the server ----------------------------------------------------------------

    def open_work(self, ref: ProxyRef, meta: dict[str, Any]) -> TunnelStream:
        return self.link.open_stream(lambda: self.session.open_work_stream(ref.name, meta), meta)

    def send_udp(self, ref: ProxyRef, peer: str, data: bytes) -> bool:
        try:
            ok = self.mux.send_udp(ref.name, peer, data)
        except StreamError:
            return False
        self.link.wake()
        return ok

    def send_udp_raw(self, proxy: str, peer: str, data: bytes) -> bool:
        try:
            ok = self.mux.send_udp(proxy, peer, data)
        except StreamError:
            return False
        self.link.wake()
        return ok
