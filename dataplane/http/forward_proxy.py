"""Forward proxying on a `mode: forward` listener: `CONNECT host:port` tunnels and absolute-form
`http://host:port/...` requests, to the destinations the listener allows.

Per request: the destination is checked against `forward` (`dataplane.http.forward`), the
listener's policies run (global, then listener; a `basic_auth` policy reads
`Proxy-Authorization`, and every 401 becomes `407 Proxy Authentication Required` with
`Proxy-Authenticate`), the host is resolved and, with `deny_private`, every address checked,
then the node connects to the address it checked. CONNECT answers `200 Connection
Established` and pipes bytes both ways; an absolute-form request goes upstream in origin form
on a connection of its own (closed after the response). Each request and tunnel gets an
access-log line with its bytes both ways; refusals are 403, unreachable destinations 502,
slow ones 504.

Runs on the reactor, as a part of `HttpConnection` (it uses its socket, reader, deadlines and
replies).
"""

from __future__ import annotations

import json
import logging
import socket
from typing import TYPE_CHECKING

from dataplane.http.headers import LAST_CHUNK, chunk, client_response_head, upstream_request_head
from dataplane.http.request import MESSAGE_END, RequestHead
from dataplane.http.response import ResponseReader, UpstreamProtocolError
from dataplane.policies.base import LocalResponse, RequestContext
from dataplane.reactor import ConnectError, RSock, connect
from dataplane.upstream import h1
from dataplane.upstream.h1 import ClientGone

if TYPE_CHECKING:
    from dataplane.config.runtime import ListenerRuntime
    from dataplane.http.proxy import HttpConnection

log = logging.getLogger("flux.forward")

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


def _split(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default_port
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return authority, default_port


def _as_proxy_auth(answer: LocalResponse) -> LocalResponse:
    """A policy's 401 as a forward proxy says it: 407 with Proxy-Authenticate (RFC 9110 15.5.8)."""
    if answer.status != 401:
        return answer
    headers = [(b"Proxy-Authenticate" if n.lower() == b"www-authenticate" else n, v) for n, v in answer.headers]
    try:
        message = json.loads(answer.body).get("message", "proxy authentication required")
    except (ValueError, AttributeError):
        message = "proxy authentication required"
    out = LocalResponse.error(407, "proxy_auth_required", str(message), headers)
    out.reason = answer.reason
    return out


async def _resolve(conn: HttpConnection, host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = await conn.svc.reactor.to_trio(_lookup, host, port)
    return [str(info[4][0]) for info in infos]


async def _lookup(host: str, port: int) -> list[object]:
    import trio

    try:
        return await trio.to_thread.run_sync(
            lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), abandon_on_cancel=True
        )
    except socket.gaierror:
        return []


async def serve_forward(conn: HttpConnection, head: RequestHead, listener: ListenerRuntime) -> bool:
    """Serve one request of a forward-proxy listener; True to keep the client connection."""
    ex = conn.ex
    assert ex is not None and listener.forward is not None
    svc = conn.svc
    connect_method = head.method == "CONNECT"
    host, port = _split(head.host, 443 if connect_method else 80)
    ex.route = "forward"
    ex.cluster = "forward"
    why = listener.forward.refusal(host, port)
    if why is not None:
        svc.metrics.count("forward_refused")
        return await conn._reply_error(403, f"destination refused: {why}", close=connect_method)
    chain = listener.chain
    if chain.policies:
        ctx = ex.ctx = RequestContext(head, conn.client_ip, conn.listener, "forward", conn.now())
        ctx.forward = True
        ex.chain = chain
        answer = chain.run(ctx, svc.metrics.policy)
        if answer is not None and type(answer) is not LocalResponse:
            answer = await answer
        if answer is not None:
            return await conn._reply_local(_as_proxy_auth(answer))
    conn.conn.deadline = conn.now() + CONNECT_TIMEOUT
    addresses = await _resolve(conn, host, port)
    if not addresses:
        return await conn._reply_error(502, f"cannot resolve {host}", close=connect_method)
    why = listener.forward.addresses_refusal(host, addresses)
    if why is not None:
        svc.metrics.count("forward_refused")
        return await conn._reply_error(403, f"destination refused: {why}", close=connect_method)
    ex.upstream = f"{host}:{port}"
    try:
        up = await connect(svc.reactor, addresses[0], port, CONNECT_TIMEOUT)
    except (ConnectError, OSError) as exc:
        svc.metrics.upstream_error("forward", "connect_failure")
        return await conn._reply_error(502, f"{host}:{port} unreachable: {exc.strerror or exc}", close=connect_method)
    if connect_method:
        return await _tunnel(conn, head, up)
    return await _relay_request(conn, head, up)


async def _tunnel(conn: HttpConnection, head: RequestHead, up: RSock) -> bool:
    from dataplane.http.proxy import splice

    ex = conn.ex
    assert ex is not None
    ex.response_started = True
    await conn.sock.send_all(ESTABLISHED)
    conn.conn.deadline = float("inf")
    counts = await splice(conn.svc.reactor, conn.sock, up, conn.reader.tail)
    ex.record(200, counts[0], counts[1])
    return False


async def _relay_request(conn: HttpConnection, head: RequestHead, up: RSock) -> bool:
    """An absolute-form request: sent upstream in origin form on its own connection."""
    ex = conn.ex
    assert ex is not None
    ctx = ex.ctx
    framing = b"" if not head.has_body else (b"chunked" if head.chunked else str(head.content_length).encode())
    head_bytes = upstream_request_head(
        head, head.target, conn.client_ip, conn.proto, ex.rid, framing, None,
        [*(ctx.upstream_add if ctx is not None else ()), (b"Connection", b"close")],
        frozenset(ctx.upstream_remove) if ctx is not None else frozenset(),
    )  # fmt: skip
    try:
        try:
            if head.has_body:
                chunked = head.chunked or head.content_length is None
                body_sent = await h1.send_body(up, head_bytes, ex, conn.body, conn.conn, chunked, False, READ_TIMEOUT)
            else:
                conn.body.take()
                body_sent = 0
                await up.send_all(head_bytes)
        except ClientGone:
            raise
        except OSError as exc:
            return await conn._reply_error(502, f"{ex.upstream} reset the connection: {exc}", close=True)
        reader = ResponseReader(head_request=head.method == "HEAD")
        conn.conn.deadline = conn.now() + READ_TIMEOUT
        try:
            while reader.head is None:
                data = await up.recv()
                if not data:
                    if reader.eof() and reader.head is not None:
                        break
                    return await conn._reply_error(502, f"{ex.upstream} closed before responding", close=True)
                reader.feed(data)
        except (OSError, UpstreamProtocolError) as exc:
            conn.svc.metrics.upstream_error("forward", "protocol")
            return await conn._reply_error(502, f"{ex.upstream} sent a bad response: {exc}", close=True)
        resp = reader.head
        ex.response_started = True
        chunked = resp.content_length is None and head.version == "1.1"
        close = not head.keep_alive or conn.svc.draining or (resp.content_length is None and not chunked)
        out = [client_response_head(resp, chunked=chunked, close=close, add=((b"X-Request-Id", ex.rid),))]
        bytes_out = 0
        done = False
        while True:
            for ev in reader.events:
                if ev is MESSAGE_END:
                    if chunked:
                        out.append(LAST_CHUNK)
                    done = True
                elif isinstance(ev, bytes):
                    out.append(chunk(ev) if chunked else ev)
            reader.events.clear()
            if out:
                data = b"".join(out)
                bytes_out += len(data)
                await conn.sock.send_all(data)
                out = []
            if done:
                break
            conn.conn.deadline = conn.now() + READ_TIMEOUT
            data = await up.recv()
            if not data:
                if not reader.eof():
                    raise ConnectionResetError("upstream closed mid-response")
                continue
            reader.feed(data)
        ex.record(resp.status, body_sent, bytes_out)
        return not close
    finally:
        up.close()
