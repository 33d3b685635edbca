"""TLS for the plugins that end it (https2http, https2https, tls2raw) and dial it (*2https).

The server context comes from ``crtPath``/``keyPath``, or a self-signed certificate made at start
when neither is given (as frp does); ALPN offers http/1.1 to HTTP plugins. `serve_tls` runs the
handshake on a work stream and tells the server name the client asked for.
"""

from __future__ import annotations

import logging
import ssl

import trio

from fluxcommon.tlsutil import load_chain, self_signed
from tunnelclient.plugin_config import PluginConfig

log = logging.getLogger("flux.tunnel.plugin")

HANDSHAKE_TIMEOUT = 10.0


def server_context(config: PluginConfig, *, http: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.crt_path and config.key_path:
        ctx.load_cert_chain(config.crt_path, config.key_path)
    else:
        cert, key = self_signed("flux-tunnel-plugin")
        load_chain(ctx, cert, key)
    if http:
        ctx.set_alpn_protocols(["http/1.1"])

    def remember_sni(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
        obj.flux_sni = (name or "").lower()  # type: ignore[union-attr]

    ctx.sni_callback = remember_sni
    return ctx


def client_context() -> ssl.SSLContext:
    """TLS to a local service, not verified (frp's *2https plugins do not verify it either)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def serve_tls(stream: trio.abc.Stream, ctx: ssl.SSLContext) -> tuple[trio.SSLStream[trio.abc.Stream], str] | None:
    """The TLS stream after a server handshake on `stream`, and the SNI asked for; None if it failed."""
    tls = trio.SSLStream(stream, ctx, server_side=True)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await tls.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, OSError) as exc:
        log.info("plugin TLS handshake failed: %s", exc)
        with trio.move_on_after(1):
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        return None
    # the name the sni_callback saw, kept on the SSLObject (trio.SSLStream forwards no such attribute)
    return tls, str(getattr(tls._ssl_object, "flux_sni", "") or "")
