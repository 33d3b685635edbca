"""frp's client plugins: a proxy whose connections the agent serves itself (``[proxies.plugin]``).

`make_plugin(proxy)` builds one plugin per proxy when the agent loads it (TLS contexts and
self-signed certificates are made once); the agent then hands each accepted work stream (after
its encryption and compression) to `Plugin.handle(stream, meta)`, `meta` holding the user's
address (``client``). The plugin types and their fields: tunnelclient/plugin_config.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import trio

from tunnelclient.plugin_config import PluginConfig

__all__ = ["Plugin", "make_plugin"]


class Plugin(Protocol):
    async def handle(self, stream: trio.abc.HalfCloseableStream, meta: dict[str, Any]) -> None:
        """Serve one work stream until it ends; close it."""


def make_plugin(config: PluginConfig, proxy_header: Callable[[dict[str, Any]], bytes] | None = None) -> Plugin:
    """The plugin `config` asks for; `proxy_header(meta)` gives a PROXY protocol header for
    tls2raw when the proxy sets transport.proxyProtocolVersion."""
    from tunnelclient.plugins import bridge, http_proxy, raw, socks5, static_file, tls

    t = config.type
    if t in ("http2http", "http2https"):
        return bridge.HttpBridge(config, None)
    if t in ("https2http", "https2https"):
        return bridge.HttpBridge(config, tls.server_context(config, http=True))
    if t == "tls2raw":
        return raw.Tls2RawPlugin(config, tls.server_context(config, http=False), proxy_header)
    if t == "unix_domain_socket":
        return raw.UnixSocketPlugin(config)
    if t == "http_proxy":
        return http_proxy.HttpProxyPlugin(config)
    if t == "socks5":
        return socks5.Socks5Plugin(config)
    if t == "static_file":
        return static_file.StaticFilePlugin(config)
    if t == "virtual_net":
        return raw.VirtualNetPlugin()
    raise ValueError(f"unknown plugin type {t!r}")
