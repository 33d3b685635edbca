"""xtcp hole punching, coordinated by the node.

1. The visitor agent binds a local TCP port P and sends `nat_hole_request(sid, proxy,
   role=visitor, local_addrs=[ip:P, ...])`.
2. The node invites an agent serving the xtcp proxy (`nat_hole_invite`); that agent binds
   its own port Q and answers `nat_hole_request(role=provider, local_addrs=[ip:Q, ...])`.
3. The node tells each side where to find the other: the public address it sees the peer's
   control connection come from, with the port the peer bound (NATs that keep ports, like
   Linux MASQUERADE when the port is free, map it unchanged), plus the peer's local
   addresses for peers behind the same NAT. Both sides then connect to each other at once
   (TCP simultaneous open) from their bound ports.
4. Each reports `nat_hole_result`; a visitor that could not get through carries the user
   connection over the node instead (the stcp path), so xtcp always works.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fluxcommon.tunnel.protocol.control import NatHoleReported, NatHoleRequested
from fluxcommon.tunnel.protocol.mux import StreamError

if TYPE_CHECKING:
    from dataplane.tunnel.agentconn import AgentConn
    from dataplane.tunnel.server import TunnelServer

log = logging.getLogger("flux.tunnel.nathole")

PENDING_TTL = 30.0


@dataclass
class _Attempt:
    sid: str
    proxy: str
    visitor: AgentConn
    visitor_addrs: list[str]
    since: float  # the coordinator's clock when the visitor asked
    provider: AgentConn | None = None


def _public(conn: AgentConn, local_addrs: list[str]) -> str:
    """The peer's observed IP with the port it bound for punching."""
    host = conn.peer.rpartition(":")[0]
    port = local_addrs[0].rpartition(":")[2] if local_addrs else ""
    return f"{host}:{port}" if host and port else ""


class NatHoleCoordinator:
    def __init__(self, server: TunnelServer, clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self.clock = clock  # monotonic seconds: pending attempts expire after PENDING_TTL
        self.pending: dict[str, _Attempt] = {}
        self.succeeded = 0
        self.failed = 0

    def _expire(self) -> None:
        now = self.clock()
        for sid in [s for s, a in self.pending.items() if now - a.since > PENDING_TTL]:
            del self.pending[sid]

    def request(self, conn: AgentConn, event: NatHoleRequested) -> None:
        self._expire()
        if event.role == "visitor":
            group = self.server.registry.secret(event.proxy)
            ref = group.pick() if group is not None else None
            if ref is None or ref.type != "xtcp":
                self._answer(conn, event.sid, "", [], f"no xtcp proxy {event.proxy!r} on this node")
                return
            attempt = _Attempt(event.sid, event.proxy, conn, list(event.local_addrs), self.clock())
            self.pending[event.sid] = attempt
            provider: AgentConn = ref.session
            attempt.provider = provider
            try:
                provider.session.invite_nat_hole(event.sid, event.proxy)
                provider.link.wake()
            except StreamError as exc:
                self.pending.pop(event.sid, None)
                self._answer(conn, event.sid, "", [], f"the provider cannot be reached: {exc}")
            return
        attempt = self.pending.get(event.sid)
        if attempt is None or attempt.provider is not conn:
            log.info("nat hole %s: provider answer for an unknown attempt", event.sid)
            return
        visitor = attempt.visitor
        self._answer(visitor, event.sid, _public(conn, list(event.local_addrs)), list(event.local_addrs))
        self._answer(conn, event.sid, _public(visitor, attempt.visitor_addrs), attempt.visitor_addrs)

    def _answer(self, conn: AgentConn, sid: str, peer: str, peer_locals: list[str], error: str = "") -> None:
        try:
            conn.session.answer_nat_hole(sid, peer, peer_locals, error)
            conn.link.wake()
        except (StreamError, ValueError) as exc:
            log.debug("nat hole %s: cannot answer %r: %s", sid, conn.name, exc)

    def report(self, conn: AgentConn, event: NatHoleReported) -> None:
        attempt = self.pending.get(event.sid)
        if attempt is not None and conn is attempt.visitor:
            del self.pending[event.sid]
            if event.success:
                self.succeeded += 1
            else:
                self.failed += 1
            log.info(
                "xtcp %r: %s for visitor %r%s", attempt.proxy, "direct connection made" if event.success
                else "direct connection failed, relaying through the node", conn.name,
                f" ({event.message})" if event.message else "",
            )  # fmt: skip

    def forget(self, conn: AgentConn) -> None:
        for sid in [s for s, a in self.pending.items() if a.visitor is conn or a.provider is conn]:
            del self.pending[sid]

    def describe(self) -> dict[str, Any]:
        return {"pending": len(self.pending), "succeeded": self.succeeded, "failed": self.failed}
