"""The tcpmux port of a tunnel server (frp's `tcpmuxHTTPConnectPort`, multiplexer "httpconnect").

Each connection starts with `CONNECT name:port HTTP/1.1` (see `httpconnect.py`). The name picks
a tcpmux proxy by `customDomains`/`subdomain` and, among proxies with `routeByHTTPUser`, by the
basic-auth user of `Proxy-Authorization` (that user's proxy first, then the one for every user).
A proxy with `httpUser`/`httpPassword` wants exactly those credentials: anything else gets 407
and never reaches an agent (frp answers 200 first and checks afterwards; here the check comes
first). Then the node answers `200 Connection established` and carries the bytes that follow to
the agent's local service, or with `tcpmux_passthrough` it answers nothing and passes the
CONNECT request itself on, for a local service that is an HTTP proxy. No proxy for the name: 404.
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING

import trio

from dataplane.tunnel.httpconnect import (
    ESTABLISHED,
    MAX_HEAD,
    NEED_MORE,
    ConnectRefusal,
    ConnectRequest,
    answer,
    parse_connect,
)
from dataplane.tunnel.ports import StreamPort, _close
from dataplane.tunnel.registry import Group
from fluxcommon.tunnel.transport.prefixed import PrefixedStream
from fluxcommon.tunnel.transport.sockstream import BulkSocketStream

if TYPE_CHECKING:
    from dataplane.tunnel.server import TunnelServer

log = logging.getLogger("flux.tunnel")

HEAD_TIMEOUT = 10.0


class TcpmuxPort(StreamPort):
    """Accepts CONNECT requests and relays each to the agent of the proxy it names."""

    kind = "tcpmux"

    def __init__(self, server: TunnelServer, port: int, passthrough: bool) -> None:
        super().__init__(server, port)
        self.passthrough = passthrough

    async def _route(self, stream: BulkSocketStream) -> None:
        data = b""
        request: object = NEED_MORE
        with trio.move_on_after(HEAD_TIMEOUT):
            while request is NEED_MORE and len(data) < MAX_HEAD:
                try:
                    chunk = await stream.receive_some(MAX_HEAD)
                except (trio.BrokenResourceError, OSError):
                    chunk = b""
                if not chunk:
                    break
                data += chunk
                request = parse_connect(data)
        if isinstance(request, ConnectRefusal):
            await _refuse(stream, request.status, request.reason)
            return
        if not isinstance(request, ConnectRequest):  # closed, too slow, or too long before a whole head
            await _close(stream)
            return
        group = self.server.registry.find_tcpmux(request.host, request.user)
        if group is None:
            self.server.metrics.vhost_misses += 1
            log.info("tcpmux: no tunnel proxy for %r (user %r)", request.host, request.user)
            await _refuse(stream, 404, f"no tunnel proxy for {request.host}")
            return
        if not _authorized(group, request.user, request.password):
            await _refuse(stream, 407, "proxy authentication required", realm=group.key[1])
            return
        prefix = request.head + request.rest if self.passthrough else request.rest
        if not self.passthrough:
            try:
                await stream.send_all(ESTABLISHED)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await _close(stream)
                return
        await self.server.relay(group, PrefixedStream(stream, prefix))


def _authorized(group: Group, user: str, password: str) -> bool:
    """The credentials of the group's proxies (its first member's: members agree), if it has any."""
    o = group.members[0].options
    if not o.http_user:
        return True
    user_ok = hmac.compare_digest(user.encode(), o.http_user.encode())
    return hmac.compare_digest(password.encode(), o.http_password.encode()) and user_ok


async def _refuse(stream: trio.abc.Stream, status: int, reason: str, realm: str = "") -> None:
    with trio.move_on_after(2):
        try:
            await stream.send_all(answer(status, reason, realm=realm))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await _close(stream)
