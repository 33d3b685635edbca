"""Byte-relay plugins: unix_domain_socket, tls2raw, and virtual_net (which flux-tunnel lacks).

- unix_domain_socket: each work stream is piped to a new connection to ``unixPath``;
- tls2raw: TLS ends here (``crtPath``/``keyPath``, or self-signed), then the plain bytes go to
  ``localAddr`` (a PROXY protocol header first when the proxy asks for one);
- virtual_net: frp's virtual network is not there, so the stream is closed (as frp does without
  ``virtualNet.address``).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import trio

from fluxcommon.tunnel.transport.pipe import pipe
from tunnelclient.plugin_config import PluginConfig
from tunnelclient.plugins.tls import serve_tls

log = logging.getLogger("flux.tunnel.plugin")

DIAL_TIMEOUT = 10.0


async def _close(stream: trio.abc.AsyncResource) -> None:
    with trio.move_on_after(1):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


class UnixSocketPlugin:
    def __init__(self, config: PluginConfig) -> None:
        self.path = config.unix_path

    async def handle(self, stream: trio.abc.HalfCloseableStream, meta: dict[str, Any]) -> None:
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                local = await trio.open_unix_socket(self.path)
        except (OSError, trio.TooSlowError) as exc:
            log.warning("unix_domain_socket plugin: cannot connect to %s: %s", self.path, exc)
            await _close(stream)
            return
        await pipe(stream, local)


class Tls2RawPlugin:
    def __init__(self, config: PluginConfig, server_tls: ssl.SSLContext, proxy_header: Any = None) -> None:
        self.config = config
        self.server_tls = server_tls
        self.proxy_header = proxy_header  # meta -> bytes of a PROXY protocol header, or None

    async def handle(self, stream: trio.abc.HalfCloseableStream, meta: dict[str, Any]) -> None:
        tls = await serve_tls(stream, self.server_tls)
        if tls is None:
            return
        inner, _sni = tls
        c = self.config
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                local = await trio.open_tcp_stream(c.local_host, c.local_port)
            if self.proxy_header is not None:
                await local.send_all(self.proxy_header(meta))
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            log.warning("tls2raw plugin: cannot reach %s:%d: %s", c.local_host, c.local_port, exc)
            await _close(inner)
            return
        await pipe(inner, local)  # type: ignore[arg-type]  # an SSLStream ends with aclose (see pipe._copy)


class VirtualNetPlugin:
    async def handle(self, stream: trio.abc.HalfCloseableStream, meta: dict[str, Any]) -> None:
        log.debug("virtual_net plugin: no virtual network here, closing the connection")
        await _close(stream)
