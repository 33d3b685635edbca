"""A small, fast HTTP/1.1 upstream for demos, tests and benchmarks (asyncio + httptools).

    python scripts/echo_upstream.py --port 9001 [--name a]

Prints "echo upstream NAME listening on HOST:PORT" once it listens (port 0
picks a free port). Endpoints:
  GET  /healthz            200 "ok"
  ANY  /echo, /anything    200 JSON: method, path, query, headers, body length, server name
  GET  /status/NNN         that status with a JSON body
  GET  /delay?ms=N         answers after N ms
  GET  /bytes?n=N          N bytes (Content-Length)
  GET  /stream?n=N&chunk=C N bytes, chunked, C bytes a chunk
  POST /sink               reads the whole body (any size), answers with its length and sha256
  GET  /close              answers then closes the connection
  POST /introspect         RFC 7662 token introspection for demos: token "demo-token" is active
                           (sub alice, scope "orders:read"), any other is not
  GET  (Upgrade: websocket) 101, a greeting line, then echoes every byte
  (with --fail-status N every request but /healthz gets status N)
  *    (anything else)     200 "hello from NAME" (plain text)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import http
import json
import time
import urllib.parse

import httptools


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


FAIL_STATUS = 0  # --fail-status: answer everything (but /healthz) with this status


class _Conn(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_len = 0
        self.sha = hashlib.sha256()
        self.sink = False
        self.body = b""  # kept for /introspect only
        self.method = "GET"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            if self.transport:
                self.transport.write(data)  # the switched protocol: echo raw bytes
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._switch(data[exc.args[0] :] if exc.args else b"")
        except httptools.HttpParserError:
            if self.transport:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.transport.close()

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.sink = self.url.startswith(b"/sink")

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)
        if self.sink:
            self.sha.update(body)
        elif self.url.startswith(b"/introspect") and len(self.body) < 65536:
            self.body += body

    def _switch(self, rest: bytes) -> None:
        """Answer an upgrade (WebSocket) with 101, a greeting, and echo every byte after."""
        key = dict((k.lower(), v) for k, v in self.headers).get(b"sec-websocket-key", b"")
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        if self.transport is None:
            return
        self.upgraded = True
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\nX-Upstream: " + self.name.encode() + b"\r\n\r\n"
            b"greeting-from-" + self.name.encode() + b"\n"
        )
        if rest:
            self.transport.write(rest)

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # answered in _switch
        keep = self.parser.should_keep_alive()
        method = self.method = self.parser.get_method().decode()
        parsed = urllib.parse.urlsplit(self.url.decode("latin-1"))
        path, query = parsed.path, urllib.parse.parse_qs(parsed.query)
        if path.startswith("/delay"):
            ms = int(query.get("ms", ["100"])[0])
            asyncio.get_running_loop().call_later(ms / 1000, self._answer, method, path, query, keep)
        else:
            self._answer(method, path, query, keep)

    def _send(self, status: int, body: bytes, ctype: bytes, keep: bool, extra: bytes = b"") -> None:
        if self.transport is None or self.transport.is_closing():
            return
        length = len(body)
        if self.method == "HEAD" or status in (204, 304):
            body = b""
        head = b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\n%bX-Upstream: %b\r\n%b" % (
            status, _reason(status), ctype, b"" if status in (204, 304) else b"Content-Length: %d\r\n" % length,
            self.name.encode(), extra,
        )  # fmt: skip
        if not keep:
            head += b"Connection: close\r\n"
        self.transport.write(head + b"\r\n" + body)
        if not keep:
            self.transport.close()

    def _answer(self, method: str, path: str, query: dict[str, list[str]], keep: bool) -> None:
        if FAIL_STATUS and path != "/healthz":
            self._send(FAIL_STATUS, b'{"error": "failing on purpose"}', b"application/json", keep)
        elif path == "/healthz":
            self._send(200, b"ok", b"text/plain", keep)
        elif path in ("/echo", "/anything") or path.startswith(("/echo/", "/anything/")):
            body = json.dumps(
                {
                    "server": self.name,
                    "method": method,
                    "path": path,
                    "url": self.url.decode("latin-1"),
                    "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers},
                    "body_length": self.body_len,
                }
            ).encode()
            self._send(200, body, b"application/json", keep)
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            self._send(status, json.dumps({"status": status, "server": self.name}).encode(), b"application/json", keep)
        elif path.startswith("/delay"):
            self._send(200, b"slow hello from " + self.name.encode(), b"text/plain", keep)
        elif path == "/bytes":
            n = int(query.get("n", ["1024"])[0])
            self._send(200, b"x" * n, b"application/octet-stream", keep)
        elif path == "/stream":
            n = int(query.get("n", ["65536"])[0])
            size = max(1, int(query.get("chunk", ["16384"])[0]))
            self._stream(n, size, keep)
        elif path == "/sink":
            body = json.dumps({"received": self.body_len, "sha256": self.sha.hexdigest(), "server": self.name})
            self._send(200, body.encode(), b"application/json", keep)
        elif path == "/close":
            self._send(200, b"bye", b"text/plain", False)
        elif path == "/introspect":
            self._send(200, _introspection(self.body), b"application/json", keep)
        else:
            self._send(200, b"hello from " + self.name.encode() + b"\n", b"text/plain", keep)

    def _stream(self, n: int, size: int, keep: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n"
            b"X-Upstream: %b\r\n%b\r\n" % (self.name.encode(), b"" if keep else b"Connection: close\r\n")
        )
        block = b"y" * size
        sent = 0
        while sent < n:
            piece = block[: min(size, n - sent)]
            self.transport.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            sent += len(piece)
        self.transport.write(b"0\r\n\r\n")
        if not keep:
            self.transport.close()


DEMO_TOKEN = "demo-token"


def _introspection(form: bytes) -> bytes:
    """An RFC 7662 answer: the demo token is active, anything else is not."""
    token = urllib.parse.parse_qs(form.decode("latin-1")).get("token", [""])[0]
    if token != DEMO_TOKEN:
        return b'{"active": false}'
    doc = {"active": True, "sub": "alice", "scope": "orders:read", "client_id": "demo", "exp": int(time.time()) + 3600}
    return json.dumps(doc).encode()


async def serve(host: str, port: int, name: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(name), host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()
    print(f"echo upstream {name} listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description="FLUX demo/test upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--name", default="upstream")
    p.add_argument("--fail-status", type=int, default=0, help="answer every request (but /healthz) with this status")
    args = p.parse_args()
    global FAIL_STATUS
    FAIL_STATUS = args.fail_status
    try:
        asyncio.run(serve(args.host, args.port, args.name))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
