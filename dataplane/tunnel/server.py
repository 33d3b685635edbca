"""A node's tunnel server: the agents' control port and everything their proxies expose.

One `TunnelServer` per `tunnels` resource of the node's group. It listens on `bind_port`
for agents (TLS or plain, told apart by the first byte; `tls_force` refuses plain ones),
authenticates them (`LoginVerifier`: a tunnel user's own token or a shared one, bound to the
TLS connection by the SHA-256 of this server's certificate, timestamp window, nonce replay
cache; the node proves the token back), and serves their proxies within their user's
allowances (`ownership.py`: names, ports, domains, max_proxies, bandwidth, one owner per
domain and group, gateway routes not shadowed):

- tcp / udp: a public port (fixed, or any free one from `allow_ports` for 0);
- http: virtual hosts on `vhost_http_port`, served by the gateway's own HTTP proxy as
  routes the node adds to its config (see `vhost.py`), so tunnelled services are routes;
- https: SNI passthrough on `vhost_https_port`;
- tcpmux: `CONNECT name:port` on `tcpmux_httpconnect_port`, by domain and basic-auth user
  (`tcpmux.py`);
- stcp / sudp / xtcp: no public port; visitors (other agents) with the secret key reach them
  through the node, and xtcp peers try a direct connection first (`nathole.py`).

A user connection becomes a work stream to an agent of the proxy's group: the node waits
for the agent's OPEN_ACK (the agent has dialled its local service) and moves on to the next
member of the group if the agent could not connect, so a dead local service costs a retry,
not a failed connection. Static mappings from the control plane are assigned to the named
agent whenever it logs in. A new login carrying a run id that is still connected replaces
the old connection at once, when it comes with the same credential (user and token; name and
token for a shared token); a run id alone replaces nothing. A settings change that removes a
user or changes a token closes the sessions that logged in with the old credential.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from dataplane.tunnel.agentconn import AgentConn
from dataplane.tunnel.nathole import NatHoleCoordinator
from dataplane.tunnel.ownership import Tenancy, shadowing_route
from dataplane.tunnel.ports import HttpsVhostPort, TcpPort, UdpPort, _Port, bind_stream
from dataplane.tunnel.registry import ClaimError, Group, ProxyRef, ProxyRegistry
from dataplane.tunnel.streams import local_of, peer_of
from dataplane.tunnel.tcpmux import TcpmuxPort
from dataplane.upstream.bridge import ReactorEnd, bridge
from flux.v1 import config_pb2 as pb
from fluxcommon.netaddr import parse_port_ranges
from fluxcommon.tunnel.protocol.control import VisitorRequested
from fluxcommon.tunnel.protocol.messages import LoginVerifier, ReplayCache, check_visitor
from fluxcommon.tunnel.protocol.mux import Mux, ResetCode, UdpPacket
from fluxcommon.tunnel.protocol.proxies import ProxyOptions
from fluxcommon.tunnel.transport.link import SEND_BUFFER, error_text
from fluxcommon.tunnel.transport.pipe import Bandwidth, bandwidth, combined, pipe, transformed
from fluxcommon.tunnel.transport.prefixed import PrefixedStream
from fluxcommon.tunnel.transport.sockstream import BulkSocketStream
from fluxcommon.tunnel.transport.tlsstream import TLSStream

if TYPE_CHECKING:
    from dataplane.reactor import Reactor

log = logging.getLogger("flux.tunnel")

HANDSHAKE_TIMEOUT = 10.0
OPEN_TIMEOUT = 10.0
TLS_RECORD = 0x16


class TunnelMetrics:
    """Counters one worker keeps across its tunnel servers (exported on /metrics)."""

    def __init__(self) -> None:
        self.logins = 0
        self.login_failures = 0
        self.proxy_refusals = 0
        self.connections = 0
        self.connect_failures = 0
        self.vhost_misses = 0
        self.visitor_refusals = 0


class TunnelServer:
    def __init__(
        self,
        spec: pb.Tunnel,
        tls: ssl.SSLContext | None,
        metrics: TunnelMetrics,
        on_http_change: Callable[[], None] = lambda: None,
        *,
        binding: str = "",
    ) -> None:
        """`binding`: the channel binding of `tls` (`binding.own_end_point` of its certificate)."""
        self.spec = spec
        self.name = spec.name
        self.bind_address = spec.bind_address or "0.0.0.0"
        self.tls = tls
        self.binding = binding
        self.metrics = metrics
        self.on_http_change = on_http_change
        self.registry = ProxyRegistry(parse_port_ranges(spec.allow_ports or "1024-65535"), spec.subdomain_host)
        self.tenancy = Tenancy(spec)
        self.verifier = LoginVerifier(list(spec.tokens), users={u.name: u.token for u in spec.users})
        self.gateway_hosts: list[tuple[str, str]] = []  # (host pattern, route) on a shared http listener
        self._user_limits: dict[str, tuple[Bandwidth, Bandwidth]] = {}
        self.visitor_replay = ReplayCache()
        self.heartbeat_timeout = (spec.heartbeat_timeout_ms or 90_000) / 1000
        self.conns: set[AgentConn] = set()
        self.sessions: dict[str, AgentConn] = {}  # run id -> connection
        self.ports: dict[tuple[str, int], _Port] = {}
        self.https_port: HttpsVhostPort | None = None
        self.tcpmux_port: TcpmuxPort | None = None
        self.nathole = NatHoleCoordinator(self)
        self.nursery: trio.Nursery = None  # type: ignore[assignment]  # set by run()
        self.port = 0
        self.error: str | None = None
        self._serial = itertools.count(1)
        self._listen: socket.socket | None = None
        self._https_sock: socket.socket | None = None  # bound by bind(), served by run()
        self._tcpmux_sock: socket.socket | None = None

    def next_serial(self) -> int:
        return next(self._serial)

    # -- life cycle ------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether the control port is open (False once stopped)."""
        return self._listen is not None

    def bind(self, take_over: TunnelServer | None = None) -> None:
        """Bind the control port and the https vhost port now, so a conflict refuses the snapshot
        before the swap (`BindError`, nothing left open). With `take_over`, the running server this
        one replaces, a port it holds on the same address is taken as a duplicate of its socket
        instead: the port stays open while one server replaces the other."""
        old = take_over if take_over is not None and take_over.bind_address == self.bind_address else None
        held = old._listen if old is not None and old.spec.bind_port == self.spec.bind_port else None
        self._listen = _take_or_bind(held, self.bind_address, self.spec.bind_port, "bind_port")
        self.port = self._listen.getsockname()[1]
        extra = (
            ("vhost_https_port", "https_port", "_https_sock"),
            ("tcpmux_httpconnect_port", "tcpmux_port", "_tcpmux_sock"),
        )
        try:
            for setting, port_attr, sock_attr in extra:
                port = getattr(self.spec, setting)
                if port:
                    prior = getattr(old, port_attr) if old is not None else None
                    held = prior.sock if prior is not None and prior.port == port else None
                    setattr(self, sock_attr, _take_or_bind(held, self.bind_address, port, setting))
        except BindError:
            self._listen.close()
            self._listen = None
            self._close_unserved()
            raise

    def _close_unserved(self) -> None:
        """Close the vhost https and tcpmux sockets bind() opened that run() has not served."""
        for attr in ("_https_sock", "_tcpmux_sock"):
            sock = getattr(self, attr)
            if sock is not None:
                sock.close()
                setattr(self, attr, None)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self._listen is None:
            self.bind()
        assert self._listen is not None
        tsock = trio.socket.from_stdlib_socket(self._listen)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            if self.spec.vhost_https_port:
                self.https_port = HttpsVhostPort(self, self.spec.vhost_https_port, self.registry.find_https)
                try:
                    self.https_port.open(self._https_sock)
                    self._https_sock = None
                except OSError as exc:
                    self.error = f"vhost_https_port {self.spec.vhost_https_port}: {exc.strerror or exc}"
                    log.error("tunnel %r: %s", self.name, self.error)
                    self.https_port = None
            if self.spec.tcpmux_httpconnect_port:
                self.tcpmux_port = TcpmuxPort(self, self.spec.tcpmux_httpconnect_port, self.spec.tcpmux_passthrough)
                try:
                    self.tcpmux_port.open(self._tcpmux_sock)
                    self._tcpmux_sock = None
                except OSError as exc:
                    self.error = f"tcpmux_httpconnect_port {self.spec.tcpmux_httpconnect_port}: {exc.strerror or exc}"
                    log.error("tunnel %r: %s", self.name, self.error)
                    self.tcpmux_port = None
            log.info(
                "tunnel server %r listening for agents on %s:%d%s",
                self.name, self.bind_address, self.port, " (TLS required)" if self.spec.tls_force else "",
            )  # fmt: skip
            task_status.started()
            while True:
                try:
                    conn, _ = await tsock.accept()
                except (OSError, trio.ClosedResourceError) as exc:
                    if self._listen is None:
                        break
                    log.warning("tunnel %r: accept failed: %s", self.name, exc)
                    await trio.sleep(0.1)
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)  # fewer, larger sends
                nursery.start_soon(self._serve_agent, BulkSocketStream.adopt(conn))

    def stop(self) -> None:
        """Close every port and agent connection (the server's task then ends)."""
        if self._listen is not None:
            # Wake the accept loop now: a socket closed under a waiting task leaves its fd registered
            # with trio, and a new server that gets the same fd number would crash the node.
            trio.lowlevel.notify_closing(self._listen)
            self._listen.close()
            self._listen = None
        for port in list(self.ports.values()):
            port.close()
        self.ports.clear()
        if self.https_port is not None:
            self.https_port.close()
        if self.tcpmux_port is not None:
            self.tcpmux_port.close()
        self._close_unserved()  # bound, never served
        for conn in list(self.conns):
            conn.link.close("tunnel server stopped", ResetCode.CANCEL)
        if self.nursery is not None:
            self.nursery.cancel_scope.deadline = trio.current_time() + 2.0

    def update(self, spec: pb.Tunnel) -> None:
        """Apply settings that need no rebinding: tokens, users, allowed ports, heartbeats, mappings."""
        old = self.spec
        self.spec = spec
        users = {u.name: u.token for u in spec.users}
        self.verifier = LoginVerifier(list(spec.tokens), users=users, replay_cache=self.verifier.replay_cache)
        for conn in self.conns:
            conn.session.verifier = self.verifier
        for conn in self.agents():  # a removed user or a changed token ends the sessions it opened
            if conn.user:
                valid = users.get(conn.user) == conn.token
            else:  # a shared token, for a name that is not (now) a user's
                valid = conn.token in spec.tokens and conn.name not in users
            if not valid:
                log.info("tunnel %r: agent %r's credential was revoked: closing its session", self.name, conn.name)
                conn.logged_in = False
                self._release_all(conn)
                conn.link.close("the agent's credential was revoked", ResetCode.REFUSED)
        self.tenancy = Tenancy(spec)
        self._user_limits.clear()
        self.registry.allow_ports = parse_port_ranges(spec.allow_ports or "1024-65535")
        self.heartbeat_timeout = (spec.heartbeat_timeout_ms or 90_000) / 1000
        if self.tcpmux_port is not None:
            self.tcpmux_port.passthrough = spec.tcpmux_passthrough
        if list(old.mappings) != list(spec.mappings):
            self._sync_mappings()

    # -- agents ----------------------------------------------------------------------------

    async def _serve_agent(self, sock_stream: BulkSocketStream) -> None:
        peer = peer_of(sock_stream)
        first = b""
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            try:
                first = await sock_stream.receive_some(4096)
            except (trio.BrokenResourceError, OSError):
                first = b""
        if not first:
            await _aclose(sock_stream)
            return
        stream: trio.abc.HalfCloseableStream = PrefixedStream(sock_stream, first)
        tls = first[0] == TLS_RECORD
        if tls:
            if self.tls is None:
                await _aclose(sock_stream)
                return
            ssl_stream = TLSStream(stream, self.tls, server_side=True)
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    await ssl_stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, OSError) as exc:
                self.metrics.login_failures += 1
                log.warning("tunnel %r: TLS handshake with %s failed: %s", self.name, peer, error_text(exc))
                await _aclose(sock_stream)
                return
            stream = ssl_stream  # type: ignore[assignment]
        elif self.spec.tls_force:
            self.metrics.login_failures += 1
            log.warning("tunnel %r: refusing plain connection from %s: TLS is required", self.name, peer)
            await _refuse_plain(stream, "this node requires TLS: set transport.tls.enable = true")
            return
        conn = AgentConn(self, stream, peer, tls)
        self.conns.add(conn)
        await conn.run()

    def may_resume(self, run_id: str, conn: AgentConn) -> bool:
        """Whether `conn`, just authenticated, may take over `run_id`: no session holds it, or the
        one that does logged in with the same credential (so a run id alone replaces nothing)."""
        old = self.sessions.get(run_id)
        return old is None or old is conn or _credential(old) == _credential(conn)

    def attach(self, conn: AgentConn, *, reconnect: bool) -> None:
        """A login was accepted: replace an older connection of the same run id, assign mappings."""
        self.metrics.logins += 1
        old = self.sessions.get(conn.run_id)
        if old is not None and old is not conn and _credential(old) == _credential(conn):  # see may_resume
            log.info("tunnel agent %r: new login replaces its connection from %s", conn.name, old.peer)
            old.logged_in = False  # no longer listed (sessions, endpoints) while its link winds down
            self._release_all(old)
            old.link.close("replaced by a new login of the same agent")
        self.sessions[conn.run_id] = conn
        self._assign_mappings(conn)

    def detach(self, conn: AgentConn) -> None:
        self.conns.discard(conn)
        if self.sessions.get(conn.run_id) is conn:
            del self.sessions[conn.run_id]
        self._release_all(conn)
        self.nathole.forget(conn)

    def _release_all(self, conn: AgentConn) -> None:
        refs = list(conn.refs.values())
        conn.refs.clear()
        for ref in refs:
            self.release(ref)

    def agents(self) -> list[AgentConn]:
        return [c for c in self.conns if c.logged_in]

    # -- static mappings -------------------------------------------------------------------

    def _assign_mappings(self, conn: AgentConn) -> None:
        for m in self.spec.mappings:
            if m.agent == conn.name and m.name not in conn.refs:
                self._assign_one(conn, m)

    def _assign_one(self, conn: AgentConn, m: pb.TunnelMapping) -> None:
        options = ProxyOptions(remote_port=m.remote_port)
        ref = ProxyRef(conn, m.name, m.type or "tcp", options, since=time.time(), owner=conn.user)
        ref.static, ref.remote_port = True, m.remote_port
        ref.local_addr = f"{m.local_ip}:{m.local_port}"
        try:
            remote = self._claim_port_now(ref, m.remote_port)
        except ClaimError as exc:
            log.error("tunnel %r: static mapping %r for agent %r: %s", self.name, m.name, conn.name, exc)
            return
        conn.assign_static(ref, remote, m.local_ip, m.local_port)
        log.info("tunnel agent %r serves static mapping %r at %s -> %s", conn.name, m.name, remote, ref.local_addr)

    def _sync_mappings(self) -> None:
        wanted = {(m.agent, m.name): m for m in self.spec.mappings}
        for conn in self.agents():
            for name, ref in list(conn.refs.items()):
                if ref.static:
                    m = wanted.get((conn.name, name))
                    local = f"{m.local_ip}:{m.local_port}" if m is not None else ""
                    if m is None or m.remote_port != ref.remote_port or local != ref.local_addr:
                        conn.refs.pop(name)
                        self.release(ref)
            self._assign_mappings(conn)

    # -- claims ----------------------------------------------------------------------------

    def public_host(self) -> str:
        if self.spec.subdomain_host:
            return self.spec.subdomain_host
        return "127.0.0.1" if self.bind_address in ("0.0.0.0", "::") else self.bind_address

    async def claim(self, ref: ProxyRef) -> str:
        """Serve `ref`; returns the address users reach it at. ClaimError says why not."""
        await trio.lowlevel.checkpoint()
        self._check_allowed(ref)  # no await from here on: the counts it reads stay true
        t = ref.type
        if t in ("tcp", "udp"):
            port = ref.options.remote_port
            if port:
                return self._claim_port_now(ref, port)
            ranges = self.tenancy.allowance(ref.owner).ports if ref.owner else None
            for candidate in self.registry.free_port_candidates(t, ranges=ranges):
                try:
                    return self._claim_port_now(ref, candidate)
                except ClaimError:
                    continue
            whose = f"the allow_ports of user {ref.owner!r}" if ref.owner else "allow_ports"
            raise ClaimError(f"remote_port: no free port left in {whose} ({self.spec.allow_ports})")
        if t == "http":
            if not self.spec.vhost_http_port:
                raise ClaimError("custom_domains: this node serves no http tunnels (its vhost_http_port is 0)")
            keys = self.registry.keys_for(ref)
            self.registry.claim(ref, keys)
            self.on_http_change()
            domains = self.registry.domains_of(ref)
            return ",".join(f"http://{d}:{self.spec.vhost_http_port}" for d in domains)
        if t == "tcpmux":
            if not self.spec.tcpmux_httpconnect_port or self.tcpmux_port is None:
                why = "this node serves no tcpmux proxies (its tcpmux_httpconnect_port is 0)"
                raise ClaimError(f"custom_domains: {why}")
            self.registry.claim(ref, self.registry.keys_for(ref))
            return ",".join(f"{d}:{self.spec.tcpmux_httpconnect_port}" for d in self.registry.domains_of(ref))
        if t == "https":
            if not self.spec.vhost_https_port or self.https_port is None:
                raise ClaimError("custom_domains: this node serves no https tunnels (its vhost_https_port is 0)")
            self.registry.claim(ref, self.registry.keys_for(ref))
            return ",".join(f"https://{d}:{self.spec.vhost_https_port}" for d in self.registry.domains_of(ref))
        self.registry.claim(ref, self.registry.keys_for(ref))
        return ""

    def _check_allowed(self, ref: ProxyRef) -> None:
        """The allowances of `ref`'s owner (see ownership.py): name, port, max_proxies, domains, routes."""
        owner = ref.owner
        _refuse(self.tenancy.check_name(owner, ref.name))
        if ref.type in ("tcp", "udp") and ref.options.remote_port:
            _refuse(self.tenancy.check_port(owner, ref.options.remote_port))
        limit = self.tenancy.allowance(owner).max_proxies if owner else 0
        if limit:
            held = sum(1 for c in self.agents() if c.user == owner for r in c.refs.values() if not r.static)
            if held >= limit:
                raise ClaimError(f"max_proxies: user {owner!r} already has {held} proxies on this node (its limit)")
        if ref.type not in ("http", "https", "tcpmux"):
            return
        for domain in self.registry.domains_of(ref):
            _refuse(self.tenancy.check_domain(owner, domain))
            if ref.type == "http" and not self.spec.vhost_overrides_routes:
                route = shadowing_route(domain, self.gateway_hosts)
                if route is not None:
                    raise ClaimError(
                        f"custom_domains: {domain} belongs to gateway route {route!r} on the http listener this "
                        "tunnel shares (the tunnel's vhost_overrides_routes is false)"
                    )

    def user_limits(self, owner: str) -> tuple[Bandwidth, Bandwidth] | None:
        """The shared (up, down) limiters of a tunnel user with a bandwidth_limit, else None."""
        rate = self.tenancy.allowance(owner).bandwidth_limit if owner else 0
        if not rate:
            return None
        limits = self._user_limits.get(owner)
        if limits is None:
            now = trio.current_time()
            limits = self._user_limits[owner] = (Bandwidth(rate, now=now), Bandwidth(rate, now=now))
        return limits

    def _claim_port_now(self, ref: ProxyRef, port: int) -> str:
        self.registry.check_port(port)
        keys = self.registry.keys_for(ref, port)
        self.registry.can_claim(ref, keys)
        group = self.registry.groups.get(keys[0])
        if group is None or not group.members:
            new = Group(keys[0], ref.type, ref.group, ref.options.group_key)
            port_obj: _Port = TcpPort(self, new, port) if ref.type == "tcp" else UdpPort(self, new, port)
            try:
                port_obj.open()
            except OSError as exc:
                why = exc.strerror or exc
                raise ClaimError(f"remote_port: cannot listen on {ref.type} port {port}: {why}") from None
            created = self.registry.claim(ref, keys)
            port_obj.group = created[0] if created else self.registry.groups[keys[0]]  # type: ignore[attr-defined]
            self.ports[(ref.type, port)] = port_obj
        else:
            self.registry.claim(ref, keys)
        ref.remote_port = port
        if ref.type == "tcp":  # tcp proxies back clusters with `tunnel: NAME` too: refresh their endpoints
            self.on_http_change()
        return f"{self.public_host()}:{port}"

    def release(self, ref: ProxyRef) -> None:
        emptied = self.registry.release(ref)
        http_changed = ref.type in ("http", "tcp")  # both back clusters with `tunnel: NAME`
        for group in emptied:
            if group.key[0] in ("tcp", "udp"):
                port = self.ports.pop((group.key[0], int(group.key[1])), None)
                if port is not None:
                    port.close()
        if http_changed:
            self.on_http_change()

    # -- traffic ---------------------------------------------------------------------------

    async def relay(self, group: Group, user: trio.abc.HalfCloseableStream) -> None:
        """Carry one user connection to an agent of `group` (next member if one cannot connect)."""
        client, server_addr = peer_of(user), local_of(user)
        tried: set[int] = set()
        try:
            for _ in range(max(1, len(group.members))):
                ref = group.pick()
                if ref is None or id(ref) in tried:
                    break
                tried.add(id(ref))
                work = await self._open(ref, {"client": client, "server": server_addr})
                if work is None:
                    continue
                await self._splice(ref, user, work)
                return
            self.metrics.connect_failures += 1
        finally:
            await _aclose(user)

    async def _open(self, ref: ProxyRef, meta: dict[str, Any]) -> Any:
        conn: AgentConn = ref.session
        try:
            work = conn.open_work(ref, meta)
        except (trio.BrokenResourceError, Exception) as exc:  # StreamError: the session is going away
            log.debug("tunnel %r: cannot open a stream to %r: %s", self.name, conn.name, exc)
            return None
        try:
            with trio.fail_after(OPEN_TIMEOUT):
                await work.wait_accepted()
        except (trio.BrokenResourceError, trio.TooSlowError):
            reason = work.reset_reason or "no answer"
            log.info("tunnel proxy %r via agent %r: %s", ref.name, conn.name, reason)
            work.reset("timed out", ResetCode.CANCEL)
            return None
        return work

    async def _splice(self, ref: ProxyRef, user: trio.abc.HalfCloseableStream, work: Any) -> None:
        o = ref.options
        conn: AgentConn = ref.session
        inner = transformed(work, conn.token, encrypt=o.use_encryption, compress=o.use_compression)
        shared = self.user_limits(ref.owner)  # the user's rate over all its connections, on top of the proxy's
        up_limit, down_limit = bandwidth(o.bandwidth_limit), bandwidth(o.bandwidth_limit)
        if shared is not None:
            up_limit, down_limit = combined(up_limit, shared[0]), combined(down_limit, shared[1])
        ref.connections += 1
        ref.total_connections += 1
        self.metrics.connections += 1

        def count(up: int, down: int) -> None:
            ref.bytes_in += up
            ref.bytes_out += down

        try:
            await pipe(user, inner, up_limit=up_limit, down_limit=down_limit, on_bytes=count)
        finally:
            ref.connections -= 1

    def open_for_http(self, ref: ProxyRef, client: str, reactor: Reactor) -> ReactorEnd:
        """Start carrying a gateway upstream connection to `ref`: the proxy's (reactor) end of an
        in-memory stream whose trio end this spliced to a new work connection to the agent.
        When the agent cannot reach its service the stream just ends (the proxy answers 502)."""
        mine, theirs = bridge(reactor)

        async def carry() -> None:
            try:
                work = await self._open(ref, {"client": client})
                if work is None:
                    self.metrics.connect_failures += 1
                    return
                await self._splice(ref, theirs, work)
            finally:
                await _aclose(theirs)

        self.nursery.start_soon(carry)
        return mine

    # -- visitors (stcp, sudp, xtcp) -------------------------------------------------------

    def check_visitor(self, conn: AgentConn, event: VisitorRequested) -> str | None:
        group = self.registry.secret(event.proxy)
        if group is None or not group.members:
            self.metrics.visitor_refusals += 1
            return f"no secret proxy {event.proxy!r} on this node"
        ref = group.members[0]
        error = check_visitor(ref.options.secret_key, event, time.time(), replay_cache=self.visitor_replay)
        if error is None and event.user and event.user != conn.name:  # allowUsers trusts the login's name only
            error = f"visitor claims user {event.user!r} but logged in as {conn.name!r}"
        if error is None and ref.options.allow_users:
            allowed = ref.options.allow_users
            if "*" not in allowed and event.user not in allowed:
                error = f"user {event.user!r} may not visit {event.proxy!r}"
        if error is not None:
            self.metrics.visitor_refusals += 1
        return error

    async def relay_visitor(self, visitor: AgentConn, proxy: str, stream: Any) -> None:
        group = self.registry.secret(proxy)
        meta = stream.meta
        try:
            if group is None:
                stream.reset("the proxy is gone", ResetCode.REFUSED)
                return
            for _ in range(max(1, len(group.members))):
                ref = group.pick()
                if ref is None:
                    break
                work = await self._open(ref, {"client": f"visitor:{visitor.name}", "server": ""})
                if work is None:
                    continue
                stream.accept()
                outer = transformed(
                    stream, visitor.token, encrypt=bool(meta.get("use_encryption")),
                    compress=bool(meta.get("use_compression")),
                )  # fmt: skip
                await self._splice(ref, outer, work)
                return
            stream.reset("no agent could reach the local service", ResetCode.CONNECT_FAILED)
        finally:
            await _aclose(stream)

    def udp_from_agent(self, conn: AgentConn, packet: UdpPacket) -> None:
        """A datagram from an agent: the answer of a udp/sudp proxy, or a sudp visitor's packet."""
        ref = conn.refs.get(packet.proxy)
        if ref is not None and ref.type == "udp":
            port = self.ports.get(("udp", ref.remote_port))
            if isinstance(port, UdpPort):
                ref.bytes_out += len(packet.data)
                port.send_to(packet.peer, packet.data)
            return
        if ref is not None and ref.type == "sudp":  # an answer for a visitor: peer = "v<serial>/<peer>"
            head, _, rest = packet.peer.partition("/")
            for other in self.conns:
                if f"v{other.serial}" == head:
                    ref.bytes_out += len(packet.data)
                    other.send_udp_raw(packet.proxy, rest, packet.data)
                    return
            return
        if packet.proxy in conn.visiting:  # a visitor's datagram for a sudp provider
            group = self.registry.secret(packet.proxy)
            target = group.pick() if group is not None else None
            if target is not None and target.type == "sudp":
                target.bytes_in += len(packet.data)
                target.session.send_udp_raw(packet.proxy, f"v{conn.serial}/{packet.peer}"[:255], packet.data)

    # -- status ----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bind": f"{self.bind_address}:{self.port}",
            "listening": self.listening,
            "tls_force": self.spec.tls_force,
            "vhost_http_port": self.spec.vhost_http_port,
            "vhost_https_port": self.spec.vhost_https_port,
            "tcpmux_httpconnect_port": self.spec.tcpmux_httpconnect_port,
            "error": self.error,
            "sessions": [c.describe() for c in sorted(self.agents(), key=lambda c: (c.name, c.since))],
        }


class BindError(OSError):
    """A port of a tunnel server cannot be opened; the message names the setting and the port."""


def _take_or_bind(held: socket.socket | None, address: str, port: int, setting: str) -> socket.socket:
    """A duplicate of `held` (a running server's listening socket on this address and port), or a
    new listening socket; `BindError` names `setting` when the port cannot be had."""
    if held is not None:
        sock = held.dup()
        sock.setblocking(False)
        return sock
    try:
        return bind_stream(address, port)
    except OSError as exc:
        raise BindError(exc.errno, f"{setting}: cannot listen on {address}:{port}: {exc.strerror or exc}") from None


def _credential(conn: AgentConn) -> tuple[str, str, str]:
    """Whom a connection authenticated as (its session's: set before `may_resume` is asked)."""
    return (conn.session.name, conn.session.user, conn.session.token)


def _refuse(error: str | None) -> None:
    if error is not None:
        raise ClaimError(error)


async def _aclose(stream: trio.abc.AsyncResource) -> None:
    with trio.move_on_after(1):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def _refuse_plain(stream: trio.abc.HalfCloseableStream, message: str) -> None:
    """Answer a plain-text agent with LOGIN_ERROR so it shows the reason, then close."""
    mux = Mux("server")
    mux.send_control({"type": "login_error", "message": message})
    mux.go_away(message, ResetCode.REFUSED)
    with trio.move_on_after(2):
        try:
            await stream.send_all(mux.data_to_send())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await _aclose(stream)
