"""The HTTP bridge plugins: http2http, http2https, https2http, https2https.

Each work stream is an HTTP/1.1 client connection (TLS ended here first for https2*); every
request on it goes to ``localAddr`` over HTTP (or HTTPS, not verified, as frp does for a local
service) with ``hostHeaderRewrite`` and ``requestHeaders.set`` applied. https2* add
X-Forwarded-For/-Host/-Proto from the user's address (frp's SetXForwarded) and answer 421 when
the TLS server name and the Host differ. One upstream connection per client connection, kept
while both sides keep theirs.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import h11
import trio

from fluxcommon.netaddr import host_of, parse_peer
from tunnelclient.plugin_config import PluginConfig
from tunnelclient.plugins.h11conn import H11Stream, end_to_end, forward, header, replace
from tunnelclient.plugins.tls import client_context, serve_tls

log = logging.getLogger("flux.tunnel.plugin")

DIAL_TIMEOUT = 10.0


class HttpBridge:
    """One plugin instance (made once per proxy; `handle` runs per work stream)."""

    def __init__(self, config: PluginConfig, server_tls: ssl.SSLContext | None) -> None:
        self.config = config
        self.server_tls = server_tls  # https2*: the context TLS ends with
        self.upstream_tls = client_context() if config.type.endswith("2https") else None

    async def handle(self, stream: trio.abc.Stream, meta: dict[str, Any]) -> None:
        sni = ""
        if self.server_tls is not None:
            tls = await serve_tls(stream, self.server_tls)
            if tls is None:
                return
            stream, sni = tls
        client = H11Stream(stream, h11.SERVER)
        upstream: H11Stream | None = None
        try:
            while True:
                event = await client.next_event()
                if not isinstance(event, h11.Request):
                    return
                if sni and _host_of(header(event.headers, b"host") or b"") != sni:
                    await client.respond(421, [(b"connection", b"close")], b"misdirected request\n")
                    return
                if upstream is None:
                    upstream = await self._dial()
                    if upstream is None:
                        await client.respond(502, [(b"connection", b"close")], b"cannot reach the local service\n")
                        return
                headers = self._headers(event, meta)
                if not await forward(client, event, upstream, headers, event.target):
                    return
                if not upstream.reusable():
                    await upstream.aclose()
                    upstream = None
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("%s plugin: %s", self.config.type, exc)
            if client.conn.our_state is h11.SEND_RESPONSE:
                try:
                    await client.respond(502, [(b"connection", b"close")], b"bad answer from the local service\n")
                except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        finally:
            if upstream is not None:
                await upstream.aclose()
            await client.aclose()

    def _headers(self, request: h11.Request, meta: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        c = self.config
        headers = end_to_end(request.headers)
        if self.server_tls is not None:  # https2*: where the request came from
            peer = parse_peer(str(meta.get("client") or ""))
            client = peer[0] if peer is not None else ""
            forwarded = header(request.headers, b"x-forwarded-for")
            if client:
                value = f"{forwarded.decode('latin-1')}, {client}" if forwarded else client
                headers = replace(headers, b"X-Forwarded-For", value.encode("latin-1"))
            headers = replace(headers, b"X-Forwarded-Host", header(request.headers, b"host") or b"")
            headers = replace(headers, b"X-Forwarded-Proto", b"https")
        if c.host_header_rewrite:
            headers = replace(headers, b"Host", c.host_header_rewrite.encode("idna"))
        for name, value in c.request_headers:
            headers = replace(headers, name.encode("latin-1"), value.encode("latin-1"))
        return headers

    async def _dial(self) -> H11Stream | None:
        c = self.config
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                stream: trio.abc.Stream = await trio.open_tcp_stream(c.local_host, c.local_port)
                if self.upstream_tls is not None:
                    tls = trio.SSLStream(stream, self.upstream_tls, server_hostname=c.local_host)
                    await tls.do_handshake()
                    stream = tls
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError) as exc:
            log.warning("%s plugin: cannot reach %s:%d: %s", c.type, c.local_host, c.local_port, exc)
            return None
        return H11Stream(stream, h11.CLIENT)


def _host_of(value: bytes) -> str:
    """A Host header's name, lower case, without port or brackets."""
    return host_of(value.decode("latin-1").strip().lower())
