"""The socks5 plugin: a SOCKS5 server (RFC 1928) on the proxy's remote port, CONNECT only.

With ``username``/``password`` clients must authenticate with them (RFC 1929); without, they use
no authentication. BIND and UDP ASSOCIATE are answered "command not supported", as frp's server
does. The protocol part (`Socks5Server`) is sans-IO: bytes in, bytes out, then the address to
connect to. Written here because the maintained Python SOCKS libraries (python-socks, socksio)
are clients only; flux-tunnel uses python-socks for transport.proxyURL.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

import trio

from fluxcommon.tunnel.transport.pipe import pipe
from fluxcommon.tunnel.transport.prefixed import PrefixedStream
from tunnelclient.plugin_config import PluginConfig

log = logging.getLogger("flux.tunnel.plugin")

VERSION, NO_AUTH, USER_PASS, NO_METHOD = 5, 0x00, 0x02, 0xFF
CONNECT = 1
SUCCEEDED, FAILURE, NOT_ALLOWED, NET_UNREACHABLE, HOST_UNREACHABLE, REFUSED, TTL, NO_COMMAND, NO_ATYPE = range(9)
HANDSHAKE_TIMEOUT = 10.0
DIAL_TIMEOUT = 10.0


class Socks5Error(Exception):
    """The client broke the protocol or failed to authenticate: close the connection."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int


class Socks5Server:
    """SOCKS5 server side, sans-IO: `receive(data)` -> bytes to send; `target` when a CONNECT came."""

    def __init__(self, username: str = "", password: str = "") -> None:
        self.username, self.password = username, password
        self.state = "greeting"  # greeting -> auth -> request -> done
        self.buffer = b""
        self.target: Target | None = None
        self.refusal: int | None = None  # a reply code sent instead of connecting

    def receive(self, data: bytes) -> bytes:
        self.buffer += data
        out = b""
        while True:
            step = {"greeting": self._greeting, "auth": self._auth, "request": self._request}.get(self.state)
            if step is None:
                return out
            answer = step()
            if answer is None:
                return out
            out += answer

    def _take(self, n: int) -> bytes | None:
        if len(self.buffer) < n:
            return None
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _greeting(self) -> bytes | None:
        if len(self.buffer) < 2 or len(self.buffer) < 2 + self.buffer[1]:
            return None
        if self.buffer[0] != VERSION:
            raise Socks5Error(f"not SOCKS5 (version {self.buffer[0]})")
        methods = set(self._take(2 + self.buffer[1])[2:])  # type: ignore[index]
        wanted = USER_PASS if self.username else NO_AUTH
        if wanted not in methods:
            self.state = "done"
            return bytes([VERSION, NO_METHOD])
        self.state = "auth" if self.username else "request"
        return bytes([VERSION, wanted])

    def _auth(self) -> bytes | None:
        b = self.buffer
        if len(b) < 2 or len(b) < 3 + b[1] or len(b) < 3 + b[1] + b[2 + b[1]]:
            return None
        ulen = b[1]
        plen = b[2 + ulen]
        raw = self._take(3 + ulen + plen)
        assert raw is not None
        user, password = raw[2 : 2 + ulen], raw[3 + ulen :]
        user_ok = hmac.compare_digest(user, self.username.encode())
        if hmac.compare_digest(password, self.password.encode()) and user_ok and raw[0] == 1:
            self.state = "request"
            return b"\x01\x00"
        self.state = "done"
        return b"\x01\x01"

    def _request(self) -> bytes | None:
        b = self.buffer
        if len(b) < 5:
            return None
        atype = b[3]
        size = {1: 4, 4: 16, 3: 1 + b[4]}.get(atype)
        if b[0] != VERSION:
            raise Socks5Error("bad request version")
        if size is None:
            self.state, self.refusal = "done", NO_ATYPE
            return reply(NO_ATYPE)
        if len(b) < 4 + size + 2:
            return None
        raw = self._take(4 + size + 2)
        assert raw is not None
        addr = raw[4 : 4 + size]
        host = addr[1:].decode("idna") if atype == 3 else str(ipaddress.ip_address(addr))
        port = int.from_bytes(raw[-2:], "big")
        self.state = "done"
        if raw[1] != CONNECT:
            self.refusal = NO_COMMAND
            return reply(NO_COMMAND)
        self.target = Target(host, port)
        return None


def reply(code: int, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
    """A reply to a request: `code`, and the address the server connected from."""
    ip = ipaddress.ip_address(bound[0])
    atype = 1 if ip.version == 4 else 4
    return bytes([VERSION, code, 0, atype]) + ip.packed + bound[1].to_bytes(2, "big")


def _code(exc: BaseException) -> int:
    if isinstance(exc, trio.TooSlowError):
        return TTL
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, socket.gaierror):
        return HOST_UNREACHABLE
    errno = getattr(exc, "errno", None)
    return {101: NET_UNREACHABLE, 113: HOST_UNREACHABLE, 111: REFUSED}.get(errno or 0, FAILURE)


class Socks5Plugin:
    def __init__(self, config: PluginConfig) -> None:
        self.username, self.password = config.user, config.password

    async def handle(self, stream: trio.abc.HalfCloseableStream, meta: dict[str, Any]) -> None:
        server = Socks5Server(self.username, self.password)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                while server.state != "done":
                    data = await stream.receive_some(4096)
                    if not data:
                        raise Socks5Error("closed during the handshake")
                    answer = server.receive(data)
                    if answer:
                        await stream.send_all(answer)
            target = server.target
            if target is None:
                raise Socks5Error("refused")
            try:
                with trio.fail_after(DIAL_TIMEOUT):
                    remote = await trio.open_tcp_stream(target.host, target.port)
            except (OSError, trio.TooSlowError) as exc:
                log.info("socks5 plugin: cannot connect to %s:%d: %s", target.host, target.port, exc)
                await stream.send_all(reply(_code(exc)))
                raise Socks5Error("cannot connect") from None
            host, port = remote.socket.getsockname()[:2]
            await stream.send_all(reply(SUCCEEDED, (host, port)))
        except (Socks5Error, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                UnicodeError, ValueError) as exc:  # fmt: skip
            log.debug("socks5 plugin: %s", exc)
            with trio.move_on_after(1):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            return
        await pipe(PrefixedStream(stream, server.buffer), remote)
