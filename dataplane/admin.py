"""The node's admin endpoint: /ready, /healthz, /metrics, /config_dump, /clusters, /stats.

A tiny HTTP/1.1 server on its own port (never the traffic listeners), one
request per connection. /config_dump shows the applied snapshot with every
secret masked (JWT secrets, password hashes, API key hashes, certificate keys,
tunnel tokens, secret-looking policy settings).
"""

from __future__ import annotations

import inspect
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from google.protobuf.json_format import MessageToDict

from dataplane import net
from dataplane.http.headers import reason
from dataplane.http.request import HttpError, RequestHead, RequestReader
from flux.v1 import config_pb2 as pb

log = logging.getLogger("flux.admin")

MASK = "********"
_SECRET_POLICY_KEYS = {"client_secret", "secret", "password"}

Reply = tuple[int, str, bytes]
Handler = Callable[[RequestHead], Reply | Awaitable[Reply]]


def masked_snapshot(snap: pb.Snapshot) -> dict[str, Any]:
    copy = pb.Snapshot()
    copy.CopyFrom(snap)
    for consumer in copy.consumers:
        for cred in consumer.credentials:
            for field in ("secret", "password_hash", "key_sha256"):
                if getattr(cred, field):
                    setattr(cred, field, MASK)
    for cert in copy.certificates:
        if cert.key_pem:
            cert.key_pem = MASK
    for tunnel in copy.tunnels:
        for i in range(len(tunnel.tokens)):
            tunnel.tokens[i] = MASK
    for policy in copy.policies:
        for key in list(policy.config.keys()):
            if key in _SECRET_POLICY_KEYS:
                policy.config[key] = MASK
    return MessageToDict(copy, preserving_proto_field_name=True)


def json_body(data: Any) -> bytes:
    return json.dumps(data, indent=2, default=str).encode() + b"\n"


class AdminServer:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.port = 0

    async def serve(self, address: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sock = net.listen_socket(address, port, reuse_port=False, backlog=128)
        self.port = sock.getsockname()[1]
        task_status.started(self.port)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    conn, _peer = await net.accept(sock)
                    nursery.start_soon(self._handle, conn)
        finally:
            net.close(sock)

    async def _handle(self, conn: socket.socket) -> None:
        try:
            with trio.move_on_after(10):
                reader = RequestReader()
                while not reader.events:
                    data = await net.recv(conn)
                    if not data:
                        return
                    reader.feed(data)
                head = reader.events.popleft()
                assert isinstance(head, RequestHead)
                status, ctype, body = await self._dispatch(head)
                out = b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
                    status,
                    reason(status),
                    ctype.encode(),
                    len(body),
                )
                await net.send_all(conn, out + (body if head.method != "HEAD" else b""))
        except HttpError as exc:
            try:
                await net.send_all(
                    conn, b"HTTP/1.1 %d %b\r\nConnection: close\r\n\r\n" % (exc.status, reason(exc.status))
                )
            except OSError:
                pass
        except OSError:
            pass
        finally:
            net.close(conn)

    async def _dispatch(self, head: RequestHead) -> Reply:
        if head.method not in ("GET", "HEAD"):
            return 405, "application/json", json_body({"error": "method_not_allowed"})
        handler = self.routes.get(head.path.rstrip("/") or "/")
        if handler is None:
            return 404, "application/json", json_body({"error": "not_found", "paths": sorted(self.routes)})
        try:
            result = handler(head)
            if inspect.isawaitable(result):
                result = await result
            return result  # type: ignore[return-value]
        except Exception as exc:
            log.exception("admin handler %s failed", head.path)
            return 500, "application/json", json_body({"error": "internal_error", "message": str(exc)})
