"""The `flux-tunnel` agent: one control connection to a node carrying every proxy's traffic.

Life cycle: dial the node (TLS by default), log in with the token digest (the token of
``user``'s tunnel user, or a shared one) bound to the TLS connection, check the node's proof
that it holds the same token (a relay or fake node without it is refused before anything else
is sent, see fluxcommon.tunnel.protocol.binding), register every proxy and visitor, then serve work
streams until the connection ends; reconnect with exponential back-off and jitter (1 s
doubling to 30 s), except that a failed first login ends the agent while `loginFailExit` is
true (the default, as in frp). An agent started with `exit_on_refusal` (the quick forms, which
serve one proxy) ends when the node refuses every proxy it has, rather than run with nothing
published. SIGTERM/SIGINT close the connection and end the agent without reconnecting.
A reconnect presents the previous run id, so the node replaces the old session (of the same
credential) at once instead of keeping a duplicate.

Per work stream the agent dials the proxy's local service and only then accepts the stream
(OPEN_ACK), so the node can try another agent of a load-balancing group when this one's
service is down; a PROXY protocol header goes first when the proxy asks for it.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import trio

from fluxcommon.netaddr import parse_peer
from fluxcommon.proxy_protocol import encode_v1, encode_v2
from fluxcommon.tunnel.protocol.binding import NO_BINDING, peer_end_point
from fluxcommon.tunnel.protocol.control import (
    PROTOCOL_VERSION,
    ClientSession,
    LoginFailed,
    LoginSucceeded,
    NatHoleAnswered,
    NatHoleInvited,
    PeerTimedOut,
    ProxyAccepted,
    ProxyAssigned,
    ProxyCloseConfirmed,
    ProxyRejected,
    VisitorAccepted,
    VisitorRejected,
    WorkStreamOpened,
)
from fluxcommon.tunnel.protocol.mux import GoAway, Mux, ResetCode, StreamError, UdpPacket
from fluxcommon.tunnel.protocol.proxies import wire_options
from fluxcommon.tunnel.transport.link import SEND_BUFFER, TunnelLink, TunnelStream, error_text
from fluxcommon.tunnel.transport.pipe import bandwidth, pipe, transformed
from fluxcommon.tunnel.transport.sockstream import UDP_BATCH, BulkSocketStream, drain_datagrams
from fluxcommon.tunnel.transport.tlsstream import TLSStream
from tunnelclient.config import AgentConfig, ProxyConfig, frp_wording, load_config
from tunnelclient.plugins import Plugin, make_plugin
from tunnelclient.visitors import VisitorManager  # (it imports the agent for its annotations only)

log = logging.getLogger("flux.tunnel.agent")

AGENT_VERSION = "0.1.0"
MAX_FRAME_DATA = 64 * 1024
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
UDP_IDLE = 60.0


def udp_peer_idle(last_used: float, now: float) -> bool:
    """Whether a UDP peer last used at `last_used` has been idle for UDP_IDLE at `now` (its
    socket is closed and the peer forgotten; its next packet makes a new one)."""
    return now - last_used >= UDP_IDLE


class LoginRefused(Exception):
    pass


@dataclass
class ProxyState:
    config: ProxyConfig | None  # None for static mappings assigned by the node
    wire_name: str
    type: str
    local_ip: str
    local_port: int
    status: str = "new"  # new | pending | running | rejected | withdrawn
    remote_addr: str = ""
    error: str = ""
    healthy: bool = True
    connections: int = 0
    total_connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    static: bool = False
    checking: bool = False  # a local health checker runs for it
    plugin: Plugin | None = None  # serves its connections instead of a local service
    udp_peers: dict[str, list[Any]] = field(default_factory=dict)  # peer -> [std socket, trio socket, last used]

    def describe(self) -> dict[str, Any]:
        out = {
            "name": self.wire_name,
            "type": self.type,
            "local": f"{self.local_ip}:{self.local_port}",
            "status": self.status,
            "remote_addr": self.remote_addr,
            "healthy": self.healthy,
            "connections": self.connections,
            "total_connections": self.total_connections,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
        if self.error:
            out["error"] = self.error
        if self.static:
            out["static"] = True
        return out


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        config_path: str | None = None,
        *,
        exit_on_refusal: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock  # monotonic seconds: UDP peers' last use and idle expiry
        self.config_path = config_path
        self.exit_on_refusal = exit_on_refusal
        self.stopping = False  # told to stop: the connection's end is no reason to reconnect
        self._given_up = ""  # why the agent ends by itself (every proxy refused, with exit_on_refusal)
        self.name = config.user or socket.gethostname()
        self.run_id = ""
        self.state = "starting"
        self.last_error = ""
        self.connected_since: float | None = None
        self.connects = 0
        self.link: TunnelLink | None = None
        self.session: ClientSession | None = None
        self.proxies: dict[str, ProxyState] = {}
        self.nursery: trio.Nursery = None  # type: ignore[assignment]
        self._online = trio.Event()
        self._tls_warned = False
        self.visitors = VisitorManager(self)
        self._load_proxies(config)

    # -- config ------------------------------------------------------------------------------

    def _load_proxies(self, config: AgentConfig) -> None:
        for p in config.proxies:
            wire = p.wire_name(config.user)
            self.proxies[wire] = self._state(p, wire)

    def _state(self, cfg: ProxyConfig, wire: str) -> ProxyState:
        state = ProxyState(cfg, wire, cfg.type, cfg.local_ip, cfg.local_port)
        if cfg.plugin is not None:
            o = cfg.options
            state.plugin = make_plugin(cfg.plugin, (lambda meta: self._proxy_header(o.proxy_protocol, meta))
                                       if o.proxy_protocol else None)  # fmt: skip
        return state

    def reload(self) -> dict[str, Any]:
        """Re-read the config file; add, change and remove proxies and visitors, keep the rest."""
        if not self.config_path:
            raise ValueError("this agent was started without a config file")
        new = load_config(self.config_path)
        if (new.server_addr, new.server_port, new.token, new.user, new.tls) != (
            self.config.server_addr, self.config.server_port, self.config.token, self.config.user, self.config.tls,
        ):  # fmt: skip
            log.warning("reload: server, token, user and TLS settings take effect on restart only")
        wanted = {p.wire_name(self.config.user): p for p in new.proxies}
        removed, added, changed = [], [], []
        for wire, state in list(self.proxies.items()):
            if state.static:
                continue
            if wire not in wanted:
                removed.append(wire)
                self._close_proxy(wire)
                del self.proxies[wire]
            elif wanted[wire] != state.config:
                changed.append(wire)
                self._close_proxy(wire)
                self.proxies[wire] = self._state(wanted[wire], wire)
        for wire, cfg in wanted.items():
            if wire not in self.proxies:
                added.append(wire)
                self.proxies[wire] = self._state(cfg, wire)
        self.config = new
        self.visitors.reload(new)
        self._register_all()
        self.nursery.start_soon(self._start_health_checks)
        log.info("config reloaded: %d added, %d changed, %d removed", len(added), len(changed), len(removed))
        return {"added": added, "changed": changed, "removed": removed}

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> int:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            if self.config.admin is not None:
                from tunnelclient.admin import serve_admin

                await nursery.start(serve_admin, self)
            await self._start_health_checks()
            await self.visitors.start(nursery)
            code = await self._connect_loop()
            nursery.cancel_scope.cancel()
        return code

    async def _start_health_checks(self) -> None:
        from tunnelclient.health import HealthChecker

        for state in self.proxies.values():
            if state.config is not None and state.config.health_check is not None and not state.checking:
                state.checking = True
                self.nursery.start_soon(HealthChecker(self, state).run)
        await trio.lowlevel.checkpoint()

    async def _connect_loop(self) -> int:
        backoff = BACKOFF_START
        first = True
        while True:
            logged_in = False
            try:
                logged_in = await self._connect_once()
            except LoginRefused as exc:
                self.last_error = str(exc)
                log.error("login failed: %s", exc)
                if first and self.config.login_fail_exit:
                    return 1
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError) as exc:
                where = f"{self.config.server_addr}:{self.config.server_port}"
                self.last_error = f"cannot connect to {where}: {error_text(exc)}"
                log.warning("%s", self.last_error)
                if first and self.config.login_fail_exit:
                    return 1
            first = False
            if self.stopping:
                return 0
            if self._given_up:
                log.error("%s: exiting", self._given_up)
                return 1
            self.state = "reconnecting"
            if logged_in:
                backoff = BACKOFF_START
            delay = backoff * random.uniform(0.5, 1.0)
            log.info("reconnecting in %.1f s", delay)
            await trio.sleep(delay)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _dial(self) -> tuple[trio.abc.Stream, str]:
        """The connection to the node and its channel binding ("" without TLS)."""
        cfg = self.config
        with trio.fail_after(cfg.dial_timeout):
            sock = BulkSocketStream.adopt(await self._open_tcp())
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            stream: trio.abc.Stream = sock
            binding = NO_BINDING
            if cfg.tls.enable:
                ctx = self._tls_context()
                server_name = cfg.tls.server_name or cfg.server_addr
                tls = TLSStream(stream, ctx, server_hostname=server_name)
                await tls.do_handshake()
                binding = peer_end_point(tls.ssl_object)
                stream = tls
        return stream, binding

    async def _open_tcp(self) -> trio.SocketStream:
        """The TCP connection to the node: from transport.connectServerLocalIP if set, through
        transport.proxyURL (HTTP CONNECT or SOCKS5, by python-socks) if set."""
        cfg = self.config
        if not cfg.proxy_url:
            local = cfg.connect_local_ip or None
            return await trio.open_tcp_stream(cfg.server_addr, cfg.server_port, local_address=local)
        from python_socks import ProxyError
        from python_socks.async_.trio import Proxy

        proxy = Proxy.from_url(cfg.proxy_url, rdns=True)  # the proxy resolves the node's name, as frp's
        try:
            sock = await proxy.connect(
                cfg.server_addr, cfg.server_port, local_addr=(cfg.connect_local_ip, 0) if cfg.connect_local_ip else None
            )
        except ProxyError as exc:
            raise OSError(f"through the proxy {_shown(cfg.proxy_url)}: {exc}") from None
        return trio.SocketStream(sock)

    def _tls_context(self) -> ssl.SSLContext:
        t = self.config.tls
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if t.trusted_ca_file and not t.insecure_skip_verify:
            ctx.load_verify_locations(cafile=t.trusted_ca_file)
            # the file may hold the node's own certificate rather than its CA's (pinning it)
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            if not self._tls_warned and not t.insecure_skip_verify:
                log.warning(
                    "TLS to the node is encrypted but the node's certificate is not verified: "
                    "set transport.tls.trustedCaFile to verify it"
                )
                self._tls_warned = True
        if t.cert_file:
            ctx.load_cert_chain(t.cert_file, t.key_file or None)
        return ctx

    async def _connect_once(self) -> bool:
        cfg = self.config
        self.state = "connecting"
        stream, binding = await self._dial()
        mux = Mux("client", max_frame_data=MAX_FRAME_DATA)
        metas = {"version": AGENT_VERSION, "hostname": socket.gethostname(), **cfg.metadatas}
        session = ClientSession(
            mux, name=self.name, token=cfg.token, run_id=self.run_id, metas=metas,
            heartbeat_interval=cfg.heartbeat_interval, heartbeat_timeout=cfg.heartbeat_timeout,
            channel_binding=binding,
        )  # fmt: skip
        link = TunnelLink(stream, mux, session, self._on_event)
        self.session, self.link = session, link
        self._login_error: str | None = None
        self._logged_in = False
        session.start(time.time())
        link.wake()
        self.connects += 1
        try:
            reason = await link.run()
        finally:
            self.session = self.link = None
            self.connected_since = None
            for state in self.proxies.values():
                if state.status in ("pending", "running"):
                    state.status = "new"
            for wire in [w for w, s in self.proxies.items() if s.static]:
                del self.proxies[wire]
            self.visitors.disconnected()
        if self._login_error is not None:
            raise LoginRefused(self._login_error)
        if self.stopping or self._given_up:
            return self._logged_in
        if self._logged_in:
            log.warning("connection to the node lost: %s", reason)
            self.last_error = reason
        else:
            raise OSError(f"connection closed before login: {reason}")
        return self._logged_in

    # -- events ------------------------------------------------------------------------------

    def _on_event(self, event: Any, stream: TunnelStream | None) -> None:
        if isinstance(event, LoginSucceeded):
            first = not self.run_id
            self.run_id = event.run_id
            self._logged_in = True
            self.state = "online"
            self.connected_since = time.time()
            self.last_error = ""
            if event.server_version != PROTOCOL_VERSION:
                log.warning("node speaks protocol %d", event.server_version)
            log.info(
                "logged in to %s:%d as %r (run id %s)%s",
                self.config.server_addr, self.config.server_port, self.name, self.run_id,
                "" if first else ", re-registering proxies",
            )  # fmt: skip
            self._register_all()
            self.visitors.connected()
        elif isinstance(event, LoginFailed):
            self._login_error = event.message
            assert self.link is not None
            self.link.close("login failed")
        elif isinstance(event, ProxyAccepted):
            state = self.proxies.get(event.name)
            if state is not None:
                state.status, state.remote_addr, state.error = "running", event.remote_addr, ""
                where = f" at {event.remote_addr}" if event.remote_addr else ""
                log.info("proxy %r (%s) is up%s", event.name, state.type, where)
                self.visitors.proxy_accepted(event.name)
        elif isinstance(event, ProxyRejected):
            state = self.proxies.get(event.name)
            message = frp_wording(event.message)  # customDomains, remotePort: as the config names them
            if state is not None:
                state.status, state.error = "rejected", message
            log.error("proxy %r refused by the node: %s", event.name, message)
            self._give_up_if_all_refused()
        elif isinstance(event, ProxyAssigned):
            self.proxies[event.name] = ProxyState(
                None, event.name, event.proxy_type, event.local_ip, event.local_port,
                status="running", remote_addr=event.remote_addr, static=True,
            )  # fmt: skip
            log.info("static mapping %r assigned: %s -> %s:%d", event.name, event.remote_addr, event.local_ip,
                     event.local_port)  # fmt: skip
        elif isinstance(event, ProxyCloseConfirmed):
            pass
        elif isinstance(event, WorkStreamOpened):
            assert stream is not None
            self.nursery.start_soon(self._work, event.proxy, stream)
        elif isinstance(event, UdpPacket):
            if event.proxy in self.proxies:
                self._udp_to_local(event)
            else:
                self.visitors.udp_from_node(event)
        elif isinstance(event, VisitorAccepted | VisitorRejected):
            self.visitors.answered(event)
        elif isinstance(event, NatHoleInvited):
            from tunnelclient.visitors import provide_xtcp

            self.nursery.start_soon(provide_xtcp, self, event)
        elif isinstance(event, NatHoleAnswered):
            self.visitors.nat_answered(event)
        elif isinstance(event, GoAway):
            if not self.stopping:  # on SIGTERM the agent's own close comes back as a GoAway
                log.info("the node is going away: %s", event.reason or "no reason given")
        elif isinstance(event, PeerTimedOut):
            log.warning("%s", event.reason)

    # -- proxies -----------------------------------------------------------------------------

    def _give_up_if_all_refused(self) -> None:
        """With `exit_on_refusal`: every proxy refused and no visitor to serve, so stop."""
        own = [s for s in self.proxies.values() if not s.static]
        if not self.exit_on_refusal or not own or self.config.visitors:
            return
        if all(s.status == "rejected" for s in own):
            refused = "; ".join(f"{s.wire_name}: {s.error}" for s in own)
            self._given_up = self.last_error = f"the node refused every proxy ({refused}), nothing to serve"
            if self.link is not None:
                self.link.close("every proxy was refused")

    def _register_all(self) -> None:
        session = self.session
        if session is None or session.state != "active":
            return
        for state in self.proxies.values():
            if state.status == "new" and state.healthy and state.config is not None:
                self._register(state)

    def _register(self, state: ProxyState) -> None:
        session, link = self.session, self.link
        if session is None or link is None or session.state != "active" or state.config is None:
            return
        request = state.config.request(self.config.user)
        try:
            session.new_proxy(request.name, request.proxy_type, wire_options(request.options))
            state.status = "pending"
        except (StreamError, ValueError) as exc:
            state.status, state.error = "rejected", str(exc)
        link.wake()

    def _close_proxy(self, wire: str) -> None:
        session, link = self.session, self.link
        if session is None or link is None or session.state != "active":
            return
        try:
            session.close_proxy(wire)
        except StreamError:
            pass
        link.wake()

    def set_healthy(self, state: ProxyState, healthy: bool, detail: str) -> None:
        """A local health check changed its verdict: withdraw the proxy or register it again."""
        if healthy == state.healthy:
            return
        state.healthy = healthy
        if not healthy:
            log.warning("proxy %r: local service unhealthy (%s): withdrawing it", state.wire_name, detail)
            if state.status in ("pending", "running"):
                self._close_proxy(state.wire_name)
            state.status = "withdrawn"
        else:
            log.info("proxy %r: local service healthy again: registering it", state.wire_name)
            state.status = "new"
            self._register(state)

    def _meta_addr(self, text: Any) -> tuple[str, int] | None:
        return parse_peer(text) if isinstance(text, str) else None

    def _proxy_header(self, version: str, meta: dict[str, Any]) -> bytes:
        src = self._meta_addr(meta.get("client")) or ("0.0.0.0", 0)
        dst = self._meta_addr(meta.get("server")) or ("0.0.0.0", 0)
        return encode_v1(src, dst) if version == "v1" else encode_v2(src, dst)

    async def _work(self, proxy: str, stream: TunnelStream) -> None:
        state = self.proxies.get(proxy)
        if state is None:
            stream.reset("unknown proxy", ResetCode.REFUSED)
            return
        if state.plugin is not None:
            await self._plugin_work(state, state.plugin, stream)
            return
        try:
            with trio.fail_after(self.config.dial_timeout):
                local = BulkSocketStream.adopt(await trio.open_tcp_stream(state.local_ip, state.local_port))
            local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except (OSError, trio.TooSlowError) as exc:
            log.warning("proxy %r: cannot reach %s:%d: %s", proxy, state.local_ip, state.local_port, exc)
            stream.reset(f"cannot reach the local service: {exc}", ResetCode.CONNECT_FAILED)
            return
        stream.accept()
        cfg = state.config
        o = cfg.options if cfg is not None else None
        try:
            if o is not None and o.proxy_protocol:
                await local.send_all(self._proxy_header(o.proxy_protocol, stream.meta))
            inner = transformed(
                stream, self.config.token, encrypt=bool(o and o.use_encryption), compress=bool(o and o.use_compression)
            )
            rate = cfg.bandwidth_limit if cfg is not None and cfg.bandwidth_limit_mode == "client" else 0
            state.connections += 1
            state.total_connections += 1

            def count(up: int, down: int) -> None:
                state.bytes_in += up
                state.bytes_out += down

            try:
                await pipe(inner, local, up_limit=bandwidth(rate), down_limit=bandwidth(rate), on_bytes=count)
            finally:
                state.connections -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await local.aclose()

    async def _plugin_work(self, state: ProxyState, plugin: Plugin, stream: TunnelStream) -> None:
        """A work stream of a plugin proxy: the plugin serves it (no local service to dial first)."""
        stream.accept()
        o = state.config.options if state.config is not None else None
        inner = transformed(
            stream, self.config.token, encrypt=bool(o and o.use_encryption), compress=bool(o and o.use_compression)
        )
        state.connections += 1
        state.total_connections += 1
        try:
            await plugin.handle(inner, stream.meta)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("proxy %r: plugin connection ended: %s", state.wire_name, exc)
        finally:
            state.connections -= 1
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await inner.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

    # -- udp ---------------------------------------------------------------------------------

    def _udp_to_local(self, packet: UdpPacket) -> None:
        state = self.proxies[packet.proxy]
        peer = state.udp_peers.get(packet.peer)
        state.bytes_in += len(packet.data)
        if peer is None:
            std = socket.socket(socket.AF_INET6 if ":" in state.local_ip else socket.AF_INET, socket.SOCK_DGRAM)
            std.setblocking(False)
            peer = state.udp_peers[packet.peer] = [std, trio.socket.from_stdlib_socket(std), self.clock()]
            self.nursery.start_soon(self._udp_peer, state, packet.peer, peer)
        peer[2] = self.clock()
        try:
            peer[0].sendto(packet.data, (state.local_ip, state.local_port))  # drop when it would block
        except OSError:
            pass

    async def _udp_peer(self, state: ProxyState, peer_name: str, peer: list[Any]) -> None:
        sock = peer[1]
        clock = self.clock
        try:
            while True:
                with trio.move_on_after(UDP_IDLE) as scope:
                    batch = [await sock.recv(65535)]
                if scope.cancelled_caught:
                    if udp_peer_idle(peer[2], clock()):
                        return
                    continue
                # what else the local service sent goes to the node in the same write
                batch += [data for data, _ in drain_datagrams(peer[0], UDP_BATCH - 1)]
                peer[2] = clock()
                if self.link is not None:
                    try:
                        for data in batch:
                            self.link.mux.send_udp(state.wire_name, peer_name, data)
                            state.bytes_out += len(data)
                        self.link.wake()
                    except StreamError:
                        pass
        except OSError:
            return
        finally:
            state.udp_peers.pop(peer_name, None)
            sock.close()

    # -- status ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        link = self.link
        return {
            "agent": self.name,
            "version": AGENT_VERSION,
            "server": f"{self.config.server_addr}:{self.config.server_port}",
            "state": self.state,
            "run_id": self.run_id,
            "connected_since": self.connected_since,
            "connects": self.connects,
            "last_error": self.last_error,
            "bytes_in": link.bytes_in if link else 0,
            "bytes_out": link.bytes_out if link else 0,
            "proxies": [s.describe() for s in self.proxies.values()],
            "visitors": self.visitors.describe(),
        }


def _shown(url: str) -> str:
    """A proxy URL without its password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}"


async def run_agent(config: AgentConfig, config_path: str | None = None, *, exit_on_refusal: bool = False) -> int:
    """Run the agent until it is told to stop (SIGINT/SIGTERM) or gives up; returns the exit status."""
    import signal

    agent = Agent(config, config_path, exit_on_refusal=exit_on_refusal)
    code = 0
    async with trio.open_nursery() as nursery:

        async def main() -> None:
            nonlocal code
            code = await agent.run()
            nursery.cancel_scope.cancel()

        nursery.start_soon(main)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                log.info("received %s: closing the tunnel", signal.Signals(sig).name)
                agent.stopping = True
                if agent.link is not None:
                    agent.link.close("agent shutting down")
                    await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
                break
    return code
