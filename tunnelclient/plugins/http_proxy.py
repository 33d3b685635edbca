"""The http_proxy plugin: an HTTP forward proxy served on the proxy's remote port.

`CONNECT host:port` opens a TCP connection from the agent's host and, after ``200``, carries
bytes both ways; a request with an absolute URL (``GET http://host/path``) is passed on to that
host over HTTP with the proxy headers removed. With ``httpUser``/``httpPassword`` every request
needs ``Proxy-Authorization: Basic`` with them, else ``407`` (after a short delay, as frp).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from fluxcommon.tunnel.transport.pipe import pipe
from fluxcommon.tunnel.transport.prefixed import PrefixedStream
from tunnelclient.plugin_config import PluginConfig
from tunnelclient.plugins.h11conn import H11Stream, basic_auth_ok, end_to_end, forward, header, replace

log = logging.getLogger("flux.tunnel.plugin")

DIAL_TIMEOUT = 10.0
AUTH_FAIL_DELAY = 0.2
CHALLENGE = [(b"proxy-authenticate", b'Basic realm="flux-tunnel"'), (b"connection", b"close")]


class HttpProxyPlugin:
    def __init__(self, config: PluginConfig) -> None:
        self.user, self.password = config.user, config.password

    def _authorized(self, request: h11.Request) -> bool:
        return basic_auth_ok(header(request.headers, b"proxy-authorization"), self.user, self.password)

    async def handle(self, stream: trio.abc.HalfCloseableStream, meta: dict[str, Any]) -> None:
        client = H11Stream(stream, h11.SERVER)
        try:
            while True:
                request = await client.next_event()
                if not isinstance(request, h11.Request):
                    return
                if not self._authorized(request):
                    await trio.sleep(AUTH_FAIL_DELAY)
                    await client.respond(407, CHALLENGE, b"proxy authentication required\n")
                    return
                if request.method == b"CONNECT":
                    await self._connect(client, request)
                    return
                if not await self._forward(client, request):
                    return
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("http_proxy plugin: %s", exc)
        finally:
            await client.aclose()

    async def _connect(self, client: H11Stream, request: h11.Request) -> None:
        host, _, port = request.target.decode("latin-1").rpartition(":")
        remote = await _dial(host.strip("[]"), port)
        if remote is None:
            await client.respond(502, [(b"connection", b"close")], b"cannot connect\n")
            return
        await client.send(h11.Response(status_code=200, headers=[], reason=b"Connection established"))
        rest, _closed = client.conn.trailing_data
        await pipe(PrefixedStream(client.stream, bytes(rest)), remote)  # type: ignore[arg-type]

    async def _forward(self, client: H11Stream, request: h11.Request) -> bool:
        url = urlsplit(request.target.decode("latin-1"))
        if url.scheme != "http" or not url.hostname:
            await client.respond(400, [(b"connection", b"close")], b"a proxy request needs an http:// URL\n")
            return False
        remote = await _dial(url.hostname, str(url.port or 80))
        if remote is None:
            await client.respond(502, [(b"connection", b"close")], b"cannot connect\n")
            return False
        upstream = H11Stream(remote, h11.CLIENT)
        try:
            target = (url.path or "/") + (f"?{url.query}" if url.query else "")
            headers = replace(end_to_end(request.headers), b"Host", url.netloc.encode("idna"))
            return await forward(client, request, upstream, headers, target.encode("latin-1"))
        finally:
            await upstream.aclose()


async def _dial(host: str, port: str) -> trio.SocketStream | None:
    if not host or not port.isdigit():
        return None
    try:
        with trio.fail_after(DIAL_TIMEOUT):
            return await trio.open_tcp_stream(host, int(port))
    except (OSError, trio.TooSlowError) as exc:
        log.info("http_proxy plugin: cannot connect to %s:%s: %s", host, port, exc)
        return None
