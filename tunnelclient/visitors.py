"""The visitor side of secret tunnels: stcp, sudp and xtcp visitors, and the xtcp provider.

A visitor listens on a local port (`bindAddr:bindPort`) and carries each local connection
to another agent's secret proxy (`serverName`, with the same `secretKey`). The node checks
the key once per session (`visit`: an HMAC with a timestamp and nonce, never the key
itself). stcp connections travel as visitor streams through the node; sudp datagrams as
UDP packets; xtcp first tries a direct connection to the providing agent (hole punching,
see p2p.py) and falls back to the node's relay when it cannot get one in
`fallbackTimeoutMs`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from fluxcommon.netaddr import parse_peer
from fluxcommon.tunnel.protocol.control import NatHoleAnswered, NatHoleInvited, VisitorAccepted, VisitorRejected
from fluxcommon.tunnel.protocol.mux import StreamError, UdpPacket
from fluxcommon.tunnel.transport.pipe import pipe, transformed
from tunnelclient import p2p
from tunnelclient.config import AgentConfig, VisitorConfig

if TYPE_CHECKING:
    from tunnelclient.agent import Agent

log = logging.getLogger("flux.tunnel.visitor")

ACCEPT_WAIT = 10.0
PUNCH_TIME = 3.0


@dataclass
class VisitorState:
    config: VisitorConfig
    target: str
    status: str = "waiting"  # waiting | visiting | ready | refused | bind_failed
    error: str = ""
    ready: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    udp: Any = None  # sudp: the local stdlib socket
    connections: int = 0
    direct: int = 0
    relayed: int = 0
    visited_at: float = 0.0  # monotonic time of the last visit request

    def describe(self) -> dict[str, Any]:
        c = self.config
        out = {
            "name": c.name,
            "type": c.type,
            "server_name": self.target,
            "bind": f"{c.bind_addr}:{c.bind_port}" if c.bind_port >= 0 else "",
            "status": self.status,
            "connections": self.connections,
        }
        if c.type == "xtcp":
            out["direct"], out["relayed"] = self.direct, self.relayed
        if self.error:
            out["error"] = self.error
        return out


class VisitorManager:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.visitors: dict[str, VisitorState] = {}
        self.nat_waiters: dict[str, list[Any]] = {}  # sid -> [Event, NatHoleAnswered | None]
        self._nursery: trio.Nursery | None = None
        self._add_all(agent.config)

    def _add_all(self, config: AgentConfig) -> None:
        for v in config.visitors:
            self.visitors[v.name] = VisitorState(v, v.target(config.user))

    # -- life cycle ------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        for state in self.visitors.values():
            await self._listen(state)

    async def _listen(self, state: VisitorState) -> None:
        assert self._nursery is not None
        c = state.config
        if c.bind_port < 0:
            return
        kind = socket.SOCK_DGRAM if c.type == "sudp" else socket.SOCK_STREAM
        std = socket.socket(socket.AF_INET6 if ":" in c.bind_addr else socket.AF_INET, kind)
        try:
            std.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            std.bind((c.bind_addr, c.bind_port))
            if kind == socket.SOCK_STREAM:
                std.listen(128)
            std.setblocking(False)
        except OSError as exc:
            std.close()
            state.status, state.error = "bind_failed", f"cannot listen on {c.bind_addr}:{c.bind_port}: {exc}"
            log.error("visitor %r: %s", c.name, state.error)
            return
        log.info("visitor %r (%s) listening on %s:%d for %r", c.name, c.type, c.bind_addr, c.bind_port, state.target)
        if kind == socket.SOCK_DGRAM:
            state.udp = std
            self._nursery.start_soon(self._udp_loop, state, trio.socket.from_stdlib_socket(std))
        else:
            self._nursery.start_soon(self._accept_loop, state, trio.socket.from_stdlib_socket(std))

    def reload(self, config: AgentConfig) -> None:
        wanted = {v.name: v for v in config.visitors}
        for name, state in list(self.visitors.items()):
            if wanted.get(name) != state.config:
                state.scope.cancel()
                if state.udp is not None:
                    state.udp.close()
                del self.visitors[name]
        for name, v in wanted.items():
            if name not in self.visitors:
                state = self.visitors[name] = VisitorState(v, v.target(config.user))
                if self._nursery is not None:
                    self._nursery.start_soon(self._listen, state)
        self.connected()

    def connected(self) -> None:
        """Logged in: ask the node for each visitor's target."""
        session = self.agent.session
        if session is None:
            return
        for state in self.visitors.values():
            if state.status in ("waiting", "refused") and not self._own_proxy_pending(state):
                self._visit(state)
        if self.agent.link is not None:
            self.agent.link.wake()

    def _own_proxy(self, state: VisitorState) -> str | None:
        """The name of this agent's own proxy that `state` visits (an agent may hold both the
        secret proxy and its visitor), or None."""
        return state.target if state.target in self.agent.proxies else None  # both node-side names

    def _own_proxy_pending(self, state: VisitorState) -> bool:
        """Whether `state` visits a proxy of this agent that the node has not accepted yet: the
        visit waits for `proxy_accepted`, instead of being refused ("no secret proxy") because
        the node is still registering it."""
        name = self._own_proxy(state)
        proxy = self.agent.proxies.get(name) if name is not None else None
        return proxy is not None and proxy.status in ("new", "pending")

    def proxy_accepted(self, name: str) -> None:
        """The node accepted this agent's proxy `name`: visit it where a visitor waited for it."""
        for state in self.visitors.values():
            if state.status in ("waiting", "refused") and self._own_proxy(state) == name:
                self._visit(state)

    def _visit(self, state: VisitorState, min_interval: float = 0.0) -> None:
        """Ask the node for `state.target` (again: a refused visitor retries when used, as the
        provider may have come online since; `min_interval` spaces out retries)."""
        session = self.agent.session
        if session is None or state.target in session.pending_visitors:
            return
        if time.monotonic() - state.visited_at < min_interval:
            return
        if state.ready.is_set():  # set by the last answer; waiters of an unset event keep theirs
            state.ready = trio.Event()
        try:
            session.visit(state.target, self.agent.config.user, state.config.secret_key, time.time())
        except StreamError:
            return
        state.status, state.visited_at = "visiting", time.monotonic()
        if self.agent.link is not None:
            self.agent.link.wake()

    def disconnected(self) -> None:
        for state in self.visitors.values():
            if state.status in ("visiting", "ready"):
                state.status = "waiting"
            state.ready = trio.Event()
        for waiter in self.nat_waiters.values():
            waiter[0].set()

    def answered(self, event: VisitorAccepted | VisitorRejected) -> None:
        for state in self.visitors.values():
            if state.target != event.proxy:
                continue
            if isinstance(event, VisitorAccepted):
                state.status, state.error = "ready", ""
                state.ready.set()
                log.info("visitor %r: the node accepted our key for %r", state.config.name, event.proxy)
            else:
                state.status, state.error = "refused", event.message
                state.ready.set()  # the connections waiting for the answer close now
                log.error("visitor %r refused: %s", state.config.name, event.message)

    def describe(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.visitors.values()]

    # -- stcp / xtcp ------------------------------------------------------------------------

    async def _accept_loop(self, state: VisitorState, tsock: trio.socket.SocketType) -> None:
        assert self._nursery is not None
        with state.scope:
            try:
                while True:
                    conn, _ = await tsock.accept()
                    self._nursery.start_soon(self._handle, state, trio.SocketStream(conn))
            finally:
                tsock.close()

    async def _wait_ready(self, state: VisitorState) -> bool:
        if state.status == "refused":
            self._visit(state)
        with trio.move_on_after(ACCEPT_WAIT):
            await state.ready.wait()
        return state.status == "ready" and self.agent.session is not None

    async def _handle(self, state: VisitorState, local: trio.SocketStream) -> None:
        state.connections += 1
        try:
            if not await self._wait_ready(state):
                log.warning("visitor %r: not connected to %r (%s)", state.config.name, state.target,
                            state.error or state.status)  # fmt: skip
                return
            if state.config.type == "xtcp":
                direct = await self._try_direct(state)
                if direct is not None:
                    state.direct += 1
                    await pipe(local, direct)
                    return
                state.relayed += 1
                fallback = self.visitors.get(state.config.fallback_to) if state.config.fallback_to else None
                if fallback is not None and await self._wait_ready(fallback):
                    state = fallback
            await self._relay(state, local)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("visitor %r: connection ended: %s", state.config.name, exc)
        finally:
            with trio.CancelScope(shield=True):
                await local.aclose()

    async def _relay(self, state: VisitorState, local: trio.SocketStream) -> None:
        agent = self.agent
        session, link = agent.session, agent.link
        if session is None or link is None:
            return
        c = state.config
        meta = {"use_encryption": c.use_encryption, "use_compression": c.use_compression}
        stream = link.open_stream(lambda: session.open_visitor_stream(state.target, meta), meta)
        with trio.fail_after(ACCEPT_WAIT):
            await stream.wait_accepted()
        inner = transformed(stream, agent.config.token, encrypt=c.use_encryption, compress=c.use_compression)
        await pipe(local, inner)

    async def _try_direct(self, state: VisitorState) -> trio.SocketStream | None:
        agent = self.agent
        session, link = agent.session, agent.link
        if session is None or link is None:
            return None
        sid = secrets.token_hex(8)
        listener, port = await p2p.bind_punch_socket()
        local_ip = _local_ip(link)
        waiter: list[Any] = [trio.Event(), None]
        self.nat_waiters[sid] = waiter
        budget = max(0.2, state.config.fallback_timeout_ms / 1000)  # then the relay (fallbackTimeoutMs)
        conn: trio.SocketStream | None = None
        message = ""
        try:
            session.request_nat_hole(sid, state.target, "visitor", [f"{local_ip}:{port}"])
            link.wake()
            with trio.move_on_after(budget) as scope:
                await waiter[0].wait()
                answer: NatHoleAnswered | None = waiter[1]
                if answer is None or answer.error:
                    message = answer.error if answer else "no answer"
                else:
                    peers = [answer.peer_addr, *answer.peer_local_addrs]
                    conn = await p2p.punch(listener, port, [p for p in peers if p], budget)
                    if conn is not None:
                        await conn.send_all(p2p.proof(state.config.secret_key, sid))
            if scope.cancelled_caught:
                message = "timed out"
        except (StreamError, OSError, trio.BrokenResourceError) as exc:
            message = str(exc)
            conn = None
        finally:
            self.nat_waiters.pop(sid, None)
            listener.close()
        if conn is None and not message:
            message = "no direct connection"
        session = agent.session
        if session is not None and session.state == "active":
            try:
                session.report_nat_hole(sid, conn is not None, message)
                if agent.link is not None:
                    agent.link.wake()
            except StreamError:
                pass
        if conn is None:
            log.info("xtcp visitor %r: %s; relaying through the node", state.config.name, message)
        return conn

    def nat_answered(self, event: NatHoleAnswered) -> None:
        waiter = self.nat_waiters.get(event.sid)
        if waiter is not None:
            waiter[1] = event
            waiter[0].set()

    # -- sudp -------------------------------------------------------------------------------

    async def _udp_loop(self, state: VisitorState, tsock: trio.socket.SocketType) -> None:
        with state.scope:
            try:
                while True:
                    data, addr = await tsock.recvfrom(65535)
                    agent = self.agent
                    if state.status == "refused":
                        self._visit(state, min_interval=1.0)
                    if state.status != "ready" or agent.link is None:
                        continue
                    host, port = addr[:2]
                    peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    try:
                        agent.link.mux.send_udp(state.target, peer, data)
                        agent.link.wake()
                    except StreamError:
                        pass
            finally:
                tsock.close()

    def udp_from_node(self, packet: UdpPacket) -> None:
        for state in self.visitors.values():
            if state.target == packet.proxy and state.udp is not None:
                addr = parse_peer(packet.peer)
                if addr is not None:
                    with contextlib.suppress(OSError):
                        state.udp.sendto(packet.data, addr)
                return


def _local_ip(link: Any) -> str:
    stream = link.transport
    while stream is not None and not hasattr(stream, "socket"):
        stream = getattr(stream, "transport_stream", None)
    try:
        return stream.socket.getsockname()[0] if stream is not None else "0.0.0.0"
    except OSError:
        return "0.0.0.0"


async def provide_xtcp(agent: Agent, event: NatHoleInvited) -> None:
    """The providing side of an xtcp attempt: bind, tell the node, punch, check the proof, serve."""
    state = agent.proxies.get(event.proxy)
    session, link = agent.session, agent.link
    if state is None or state.config is None or session is None or link is None:
        return
    secret = state.config.options.secret_key
    listener, port = await p2p.bind_punch_socket()
    waiter: list[Any] = [trio.Event(), None]
    agent.visitors.nat_waiters[event.sid] = waiter
    conn: trio.SocketStream | None = None
    try:
        session.request_nat_hole(event.sid, event.proxy, "provider", [f"{_local_ip(link)}:{port}"])
        link.wake()
        with trio.move_on_after(PUNCH_TIME + 2):
            await waiter[0].wait()
        answer: NatHoleAnswered | None = waiter[1]
        if answer is None or answer.error:
            return
        conn = await p2p.punch(listener, port, [p for p in (answer.peer_addr, *answer.peer_local_addrs) if p],
                               PUNCH_TIME)  # fmt: skip
        if conn is None:
            return
        with trio.fail_after(5):
            got = b""
            while len(got) < p2p.PROOF_SIZE:
                chunk = await conn.receive_some(p2p.PROOF_SIZE - len(got))
                if not chunk:
                    raise OSError("peer closed before proving its key")
                got += chunk
        if not hmac.compare_digest(got, p2p.proof(secret, event.sid)):
            log.warning("xtcp %r: direct peer did not prove the secret key", event.proxy)
            return
        local = await trio.open_tcp_stream(state.local_ip, state.local_port)
        state.connections += 1
        state.total_connections += 1
        try:
            await pipe(conn, local)
        finally:
            state.connections -= 1
        conn = None
    except (StreamError, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
        log.info("xtcp %r: direct connection not made: %s", event.proxy, exc)
    finally:
        agent.visitors.nat_waiters.pop(event.sid, None)
        listener.close()
        if conn is not None:
            with trio.CancelScope(shield=True):
                await conn.aclose()
