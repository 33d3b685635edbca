"""oauth2 policy against a small real RFC 7662 introspection server: active, inactive, scopes,
caching, single-flight, and an endpoint that is down, slow or refuses the node's credentials."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
import trio

from dataplane.http.request import RequestHead, RequestReader
from dataplane.policies.auth import OAuth2Policy
from dataplane.policies.base import ConsumerIndex, LocalResponse, PolicyEnv, RequestContext, SharedServices
from dataplane.reactor import Reactor
from flux.v1 import config_pb2 as pb
from fluxcommon.policy_config import OAuth2Config

CLIENT_ID = "gateway"
CLIENT_SECRET = "gw secret/ü"


def tokens() -> dict[str, dict[str, Any]]:
    now = int(time.time())
    return {
        "good": {"active": True, "scope": "read write", "username": "alice", "exp": now + 3600},
        "reader": {"active": True, "scope": "read", "client_id": "svc-reports", "exp": now + 3600},
        "noexp": {"active": True, "scope": "read write", "sub": "someone"},
        "stale": {"active": True, "scope": "read write", "username": "alice", "exp": now - 5},
        "revoked": {"active": False},
        "slow": {"active": True, "scope": "read write", "username": "alice", "sleep": 1.5},
    }


class IntrospectionServer:
    def __init__(self) -> None:
        self.tokens = tokens()
        self.calls: dict[str, int] = {}
        self.bad_auth = 0
        self.lock = threading.Lock()
        server = self
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:gw%20secret%2F%C3%BC".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                if self.headers.get("Authorization") != expected:
                    server.bad_auth += 1
                    return self._send(401, {"error": "invalid_client"})
                if self.headers.get("Content-Type") != "application/x-www-form-urlencoded":
                    return self._send(400, {"error": "invalid_request"})
                assert form.get("token_type_hint") == ["access_token"]
                token = form.get("token", [""])[0]
                with server.lock:
                    server.calls[token] = server.calls.get(token, 0) + 1
                answer = dict(server.tokens.get(token, {"active": False}))
                if "sleep" in answer:
                    time.sleep(answer.pop("sleep"))
                self._send(200, answer)

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the node gave up waiting (the slow token)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/introspect"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[IntrospectionServer]:
    s = IntrospectionServer()
    yield s
    s.close()


CONSUMERS = [pb.Consumer(name="alice", groups=["staff"])]


def closed_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_ctx(path: str = "/", headers: Iterable[tuple[str, str]] = (), now: float | None = None) -> RequestContext:
    lines = [f"GET {path} HTTP/1.1", "Host: api.test", *(f"{k}: {v}" for k, v in headers)]
    reader = RequestReader()
    reader.feed(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = reader.events.popleft()
    assert isinstance(head, RequestHead)
    return RequestContext(head, "127.0.0.1", "main", "route", time.monotonic() if now is None else now)


def bearer(token: str, now: float | None = None) -> RequestContext:
    return make_ctx(headers=[("Authorization", f"Bearer {token}")], now=now)


def run_node(
    body: Callable[[PolicyEnv], Awaitable[None]], limit: float = 20.0, clock: Callable[[], float] = time.monotonic
) -> None:
    async def main() -> None:
        reactor = Reactor()
        with trio.fail_after(limit):
            async with trio.open_nursery() as nursery:
                await nursery.start(reactor.run)
                services = SharedServices(nursery)
                env = PolicyEnv(consumers=ConsumerIndex(CONSUMERS), services=services, reactor=reactor, clock=clock)
                await body(env)
                nursery.cancel_scope.cancel()

    trio.run(main)


async def settle(env: PolicyEnv, result: Any) -> LocalResponse | None:
    if result is None or isinstance(result, LocalResponse):
        return result
    assert env.reactor is not None
    box: dict[str, Any] = {}
    done = trio.Event()

    async def wait() -> None:
        try:
            box["value"] = await result
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    env.reactor.spawn(wait())
    with trio.fail_after(10):
        await done.wait()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def policy(env: PolicyEnv, url: str, **config: Any) -> OAuth2Policy:
    base = {"introspection_url": url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    return OAuth2Policy("oauth", OAuth2Config.model_validate({**base, **config}), env)


def header(resp: LocalResponse, name: bytes) -> bytes | None:
    return next((v for n, v in resp.headers if n.lower() == name.lower()), None)


def upstream(ctx: RequestContext, name: str) -> str | None:
    return next((v.decode() for n, v in ctx.upstream_add if n.lower() == name.lower().encode()), None)


def test_active_token_passes_and_is_cached(server: IntrospectionServer) -> None:
    async def body(env: PolicyEnv) -> None:
        p = policy(env, server.url, required_scopes=["read"])
        ctx = bearer("good")
        pending = p.on_request(ctx)
        assert pending is not None and not isinstance(pending, LocalResponse)  # introspection needs I/O
        assert await settle(env, pending) is None
        assert ctx.consumer is env.consumers.consumers["alice"]
        assert upstream(ctx, "X-Consumer-Name") == "alice"
        assert upstream(ctx, "X-Consumer-Groups") == "staff"
        assert ctx.vars["oauth2"]["scope"] == "read write"
        assert server.calls == {"good": 1}

        again = bearer("good")
        assert p.on_request(again) is None  # cached: synchronous, no second call
        assert again.consumer is env.consumers.consumers["alice"]
        assert server.calls == {"good": 1}

        # another policy on the same endpoint and client shares the cache
        other = policy(env, server.url, required_scopes=["write"])
        assert other.introspector is p.introspector
        assert other.on_request(bearer("good")) is None
        assert server.calls == {"good": 1}
        assert p.allowed == 2 and other.allowed == 1

    run_node(body)


def test_client_id_and_sub_name_anonymous_consumers(server: IntrospectionServer) -> None:
    async def body(env: PolicyEnv) -> None:
        p = policy(env, server.url)
        ctx = bearer("reader")
        assert await settle(env, p.on_request(ctx)) is None
        assert ctx.consumer is not None and ctx.consumer.name == "svc-reports"
        assert ctx.consumer.metadata == {"anonymous": "true"}
        ctx = bearer("noexp")
        assert await settle(env, p.on_request(ctx)) is None
        assert ctx.consumer is not None and ctx.consumer.name == "someone"

    run_node(body)


def test_inactive_and_stale_tokens_are_401_and_cached_briefly(server: IntrospectionServer) -> None:
    async def body(env: PolicyEnv) -> None:
        p = policy(env, server.url)
        for token in ("revoked", "stale", "never-issued"):
            resp = await settle(env, p.on_request(bearer(token)))
            assert isinstance(resp, LocalResponse) and resp.status == 401
            assert resp.reason == "oauth2_inactive"
            assert header(resp, b"www-authenticate") == (
                b'Bearer realm="flux", error="invalid_token", error_description="invalid token"'
            )
        resp = p.on_request(bearer("revoked"))  # the negative answer is cached too (briefly)
        assert isinstance(resp, LocalResponse) and resp.status == 401
        assert server.calls == {"revoked": 1, "stale": 1, "never-issued": 1}
        assert p.denied == {"inactive": 4}

    run_node(body)


def test_cached_answers_expire_on_the_node_clock(server: IntrospectionServer) -> None:
    now = [500.0]  # the node's monotonic clock (PolicyEnv.clock), moved by hand

    async def body(env: PolicyEnv) -> None:
        p = policy(env, server.url, cache_ttl="30s")
        assert await settle(env, p.on_request(bearer("good", now[0]))) is None
        resp = await settle(env, p.on_request(bearer("revoked", now[0])))
        assert isinstance(resp, LocalResponse) and resp.reason == "oauth2_inactive"
        assert server.calls == {"good": 1, "revoked": 1}

        now[0] += 9.9  # both answers still cached
        assert p.on_request(bearer("good", now[0])) is None
        assert isinstance(p.on_request(bearer("revoked", now[0])), LocalResponse)
        assert server.calls == {"good": 1, "revoked": 1}

        now[0] += 0.2  # past INACTIVE_TTL (10 s): the negative answer is asked again
        resp = await settle(env, p.on_request(bearer("revoked", now[0])))
        assert isinstance(resp, LocalResponse) and resp.reason == "oauth2_inactive"
        assert p.on_request(bearer("good", now[0])) is None
        assert server.calls == {"good": 1, "revoked": 2}

        now[0] += 20  # past cache_ttl (30 s): the active token is introspected again
        pending = p.on_request(bearer("good", now[0]))
        assert pending is not None and not isinstance(pending, LocalResponse)
        assert await settle(env, pending) is None
        assert server.calls == {"good": 2, "revoked": 2}

    run_node(body, clock=lambda: now[0])


def test_missing_scope_is_403(server: IntrospectionServer) -> None:
    async def body(env: PolicyEnv) -> None:
        p = policy(env, server.url, required_scopes=["read", "write"])
        ctx = bearer("reader")
        resp = await settle(env, p.on_request(ctx))
        assert isinstance(resp, LocalResponse)
        assert resp.status == 403 and resp.reason == "oauth2_insufficient_scope"
        assert json.loads(resp.body)["error"] == "insufficient_scope"
        assert header(resp, b"www-authenticate") == (
            b'Bearer realm="flux", error="insufficient_scope", '
            b'error_description="the token lacks a required scope", scope="read write"'
        )
        assert ctx.consumer is None
        resp = p.on_request(bearer("reader"))  # cached answer, same decision
        assert isinstance(resp, LocalResponse) and resp.status == 403
        assert server.calls == {"reader": 1}

    run_node(body)


def test_missing_token_is_401_without_a_call(server: IntrospectionServer) -> None:
    async def body(env: PolicyEnv) -> None:
        p = policy(env, server.url, **{"from": "query:access_token"})
        resp = p.on_request(make_ctx("/?other=1"))
        assert isinstance(resp, LocalResponse) and resp.status == 401 and resp.reason == "oauth2_missing"
        assert header(resp, b"www-authenticate") == b'Bearer realm="flux"'
        ctx = make_ctx("/?access_token=good")
        assert await settle(env, p.on_request(ctx)) is None
        assert server.calls == {"good": 1}

    run_node(body)


def test_concurrent_requests_share_one_introspection(server: IntrospectionServer) -> None:
    async def body(env: PolicyEnv) -> None:
        p = policy(env, server.url)
        ctxs = [bearer("good") for _ in range(5)]
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            for ctx in ctxs:
                pending = p.on_request(ctx)

                async def one(pending: Any = pending) -> None:
                    results.append(await settle(env, pending))

                nursery.start_soon(one)
        assert results == [None] * 5
        assert all(c.consumer is not None and c.consumer.name == "alice" for c in ctxs)
        assert server.calls == {"good": 1}

    run_node(body)


def test_endpoint_down_is_503_quickly() -> None:
    async def body(env: PolicyEnv) -> None:
        p = policy(env, f"http://127.0.0.1:{closed_port()}/introspect")  # nothing listens there
        started = trio.current_time()
        resp = await settle(env, p.on_request(bearer("good")))
        assert isinstance(resp, LocalResponse)
        assert resp.status == 503 and resp.reason == "oauth2_introspection_error"
        assert json.loads(resp.body)["error"] == "auth_unavailable"
        assert trio.current_time() - started < 1.5
        # failures are not cached: the next request tries again
        resp = await settle(env, p.on_request(bearer("good")))
        assert isinstance(resp, LocalResponse) and resp.status == 503
        assert p.introspector.errors == 2

    run_node(body)


def test_slow_endpoint_is_503_within_the_timeout(server: IntrospectionServer) -> None:
    async def body(env: PolicyEnv) -> None:
        p = policy(env, server.url, timeout="300ms")
        started = trio.current_time()
        resp = await settle(env, p.on_request(bearer("slow")))
        assert isinstance(resp, LocalResponse) and resp.status == 503
        assert trio.current_time() - started < 1.0

    run_node(body)


def test_wrong_client_credentials_is_503(server: IntrospectionServer) -> None:
    async def body(env: PolicyEnv) -> None:
        p = policy(env, server.url, client_secret="wrong")
        resp = await settle(env, p.on_request(bearer("good")))
        assert isinstance(resp, LocalResponse) and resp.status == 503
        assert server.bad_auth == 1 and server.calls == {}

    run_node(body)


def test_bad_introspection_url_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="introspection_url"):
        policy(PolicyEnv(), "ftp://idp.test/introspect")
