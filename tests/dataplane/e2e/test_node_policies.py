"""End-to-end: policies created through REST and enforced by two flux-node processes.

Real control plane, two nodes, echo upstreams, the real Redis at 127.0.0.1:6379
for shared limits, a private redis-server started and stopped by the test for
on_redis_error, and small real HTTP servers for OAuth2 introspection and JWKS.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.node import NodeProcess, UpstreamProcess
from support.processes import ControlPlaneProcess, free_port, wait_until

pytestmark = pytest.mark.slow

KINDS = ("listeners", "clusters", "routes", "policies", "consumers", "certificates", "tunnels")
SECRET = "jwt-shared-secret-for-alice-0123456789"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("policies")
    ups = [UpstreamProcess("a").start(), UpstreamProcess("b").start(), UpstreamProcess("bad", fail_status=503).start()]
    cp = ControlPlaneProcess(base / "cp").start()
    nodes = [NodeProcess(base / f"n{i}", cp.grpc_addr, node_id=f"pnode-{i}") for i in (1, 2)]
    for node in nodes:
        node.start(wait_ready=False)
    try:
        yield {"cp": cp, "nodes": nodes, "ups": ups}
    finally:
        for node in nodes:
            node.stop()
        cp.stop()
        for up in ups:
            up.stop()


def apply(stack: dict[str, Any], doc: dict[str, Any]) -> int:
    body = {kind: doc.get(kind, []) for kind in KINDS}
    with stack["cp"].client() as c:
        r = c.post("/api/v1/apply", json=body, params={"prune": True})
    assert r.status_code == 200, r.text
    version = int(r.json()["version"])
    for node in stack["nodes"]:
        node.wait_version(version, timeout=10)
    return version


def config(port: int, ups: list[UpstreamProcess], policies: list[dict[str, Any]], **route: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "protocol": "http", "address": "127.0.0.1", "port": port}],
        "clusters": [{"name": "app", "endpoints": [u.endpoint() for u in ups]}],
        "routes": [
            {
                "name": "api",
                "listener": "web",
                "path": "/",
                "cluster": "app",
                "policies": [p["name"] for p in policies if not p.get("global")],
                **route,
            }
        ],
        "policies": policies,
    }


def both(port_a: int) -> list[str]:
    return [f"http://127.0.0.1:{port_a}"]


def test_jwt_from_the_token_endpoint_is_enforced_by_both_nodes(stack: dict[str, Any]) -> None:
    port = free_port()
    doc = config(port, stack["ups"][:1], [{"name": "auth", "type": "jwt", "config": {"issuer": "flux"}}])
    doc["consumers"] = [
        {"name": "alice", "groups": ["partners"], "credentials": [{"type": "jwt", "issuer": "flux", "secret": SECRET}]}
    ]
    apply(stack, doc)
    with stack["cp"].client() as c:
        token = c.post("/api/v1/auth/token", json={"consumer": "alice"}).json()["token"]
    url = f"http://127.0.0.1:{port}/echo"
    for _ in stack["nodes"]:  # both nodes share the port; each request lands on one of them
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}", "X-Consumer-Name": "mallory"})
        assert r.status_code == 200, r.text
        seen = r.json()["headers"]
        assert seen["X-Consumer-Name"] == "alice" and seen["X-Consumer-Groups"] == "partners"
    r = httpx.get(url)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    bad = jwt.encode(
        {"iss": "flux", "sub": "alice", "exp": int(time.time()) + 60}, "wrong-secret-wrong-secret-!!", "HS256"
    )
    assert httpx.get(url, headers={"Authorization": f"Bearer {bad}"}).status_code == 401
    expired = jwt.encode({"iss": "flux", "sub": "alice", "exp": int(time.time()) - 120}, SECRET, "HS256")
    r = httpx.get(url, headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.headers["www-authenticate"]
    # the consumer shows in the access log of the node that served it (written every 0.1 s)
    wait_until(
        lambda: [e for n in stack["nodes"] for e in n.access_log() if e.get("consumer") == "alice"],
        message="an access log line with consumer alice",
    )


def test_api_key_ip_acl_and_global_policy_order(stack: dict[str, Any]) -> None:
    port = free_port()
    policies = [
        {"name": "keys", "type": "api_key", "config": {"header": "x-api-key"}},
        {"name": "block", "type": "ip_acl", "config": {"deny": ["10.66.0.0/16"]}},
        {"name": "partners-only", "type": "api_acl", "config": {"allow_groups": ["partners"]}},
        {
            "name": "tag",
            "type": "request_rewrite",
            "global": True,
            "config": {"headers": {"set": {"X-Gateway": "flux"}}},
        },
    ]
    doc = config(port, stack["ups"][:1], policies)
    doc["consumers"] = [
        {"name": "carol", "groups": ["partners"], "credentials": [{"type": "api_key", "key": "carol-key-123"}]},
        {"name": "dave", "groups": ["staff"], "credentials": [{"type": "api_key", "key": "dave-key-4567"}]},
    ]
    apply(stack, doc)
    url = f"http://127.0.0.1:{port}/echo"
    r = httpx.get(url, headers={"x-api-key": "carol-key-123"})
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert (
        seen["X-Consumer-Name"] == "carol"
        and seen["X-Gateway"] == "flux"
        and "x-api-key" not in {k.lower() for k in seen}
    )
    assert httpx.get(url, headers={"x-api-key": "dave-key-4567"}).status_code == 403  # api_acl
    r = httpx.get(url, headers={"x-api-key": "nope-nope-nope"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("ApiKey")
    metrics = stack["nodes"][0].get("/metrics").text + stack["nodes"][1].get("/metrics").text
    assert 'flux_policy_decisions_total{policy="partners-only",reason="api_acl' in metrics or (
        'policy="partners-only"' in metrics and 'result="denied"' in metrics
    )


def test_cors_preflight_never_reaches_the_upstream(stack: dict[str, Any]) -> None:
    port = free_port()
    dead = {"address": "127.0.0.1", "port": free_port()}
    doc = config(port, [], [{"name": "cors", "type": "cors", "config": {"allow_origins": ["https://app.example.com"]}}])
    doc["clusters"][0]["endpoints"] = [dead]
    apply(stack, doc)
    r = httpx.options(
        f"http://127.0.0.1:{port}/orders",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "POST" in r.headers["access-control-allow-methods"] and "Origin" in r.headers["vary"]
    r = httpx.options(
        f"http://127.0.0.1:{port}/orders",
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 403


def test_local_rate_limit_answers_429_with_headers(stack: dict[str, Any]) -> None:
    port = free_port()
    policy = {"name": "rl", "type": "rate_limit",
              "config": {"algorithm": "fixed_window", "rate": 6, "per": "10s", "key": "header:x-client"}}  # fmt: skip
    apply(stack, config(port, stack["ups"][:1], [policy]))
    url = f"http://127.0.0.1:{port}/echo"
    statuses = Counter()
    limited = None
    with httpx.Client() as c:
        for _ in range(30):
            r = c.get(url, headers={"x-client": "k1"})
            statuses[r.status_code] += 1
            if r.status_code == 429:
                limited = r
    # local scope: each of the two nodes allows its own 6 per window
    assert 6 <= statuses[200] <= 12, statuses
    assert limited is not None
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-limit"] == "6" and limited.headers["ratelimit-remaining"] == "0"
    assert "ratelimit-reset" in limited.headers
    assert httpx.get(url, headers={"x-client": "k2"}).status_code == 200  # keys are independent


def _redis_up(port: int = 6379) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def test_redis_limit_is_shared_by_both_nodes(stack: dict[str, Any]) -> None:
    if not _redis_up():
        pytest.skip("Redis at 127.0.0.1:6379 does not answer")
    port = free_port()
    prefix = f"flux:test:{time.time_ns()}"
    policy = {"name": "shared", "type": "rate_limit",
              "config": {"algorithm": "sliding_window", "sliding_mode": "log", "rate": 10, "per": "20s",
                         "key": "route", "scope": "redis", "redis": "redis://127.0.0.1:6379/0", "prefix": prefix,
                         "on_redis_error": "deny"}}  # fmt: skip
    apply(stack, config(port, stack["ups"][:1], [policy]))
    url = f"http://127.0.0.1:{port}/echo"
    codes = Counter()
    with httpx.Client() as c:
        for _ in range(40):  # new connections spread over both nodes (SO_REUSEPORT)
            codes[c.get(url, headers={"Connection": "close"}).status_code] += 1
    assert codes[200] == 10, codes  # one budget for the whole fleet
    assert codes[429] == 30


def test_on_redis_error_follows_the_policy(stack: dict[str, Any], tmp_path: Any) -> None:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    rport = free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _redis_up(rport), 5, message="private redis-server")
        port = free_port()
        policies = [
            {
                "name": f"rl-{mode}",
                "type": "rate_limit",
                "config": {
                    "rate": 1000,
                    "per": "1s",
                    "key": "ip",
                    "scope": "redis",
                    "redis": f"redis://127.0.0.1:{rport}/0",
                    "on_redis_error": mode,
                },
            }
            for mode in ("allow", "deny")
        ]
        doc = config(port, stack["ups"][:1], [])
        doc["policies"] = policies
        doc["routes"] = [
            {"name": f"r-{mode}", "listener": "web", "path": f"/{mode}", "cluster": "app", "policies": [f"rl-{mode}"]}
            for mode in ("allow", "deny")
        ]
        apply(stack, doc)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/allow").status_code == 200
        assert httpx.get(f"{base}/deny").status_code == 200
        proc.terminate()
        proc.wait(5)
        t0 = time.monotonic()
        wait_until(lambda: httpx.get(f"{base}/deny", timeout=5).status_code in (429, 503), 10)
        assert httpx.get(f"{base}/allow", timeout=5).status_code == 200
        assert time.monotonic() - t0 < 10
        # ... and says so in metrics
        metrics = "".join(n.get("/metrics").text for n in stack["nodes"])
        assert 'flux_ratelimit_fallbacks_total{policy="rl-allow"}' in metrics
        assert f'flux_ratelimit_redis_up{{redis="redis://127.0.0.1:{rport}/0"}} 0.0' in metrics
    finally:
        if proc.poll() is None:
            proc.kill()


class _Introspection(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self) -> None:
        type(self).calls += 1
        length = int(self.headers.get("Content-Length", "0"))
        form = parse_qs(self.rfile.read(length).decode())
        auth = self.headers.get("Authorization", "")
        ok_client = auth == "Basic " + base64.b64encode(b"gateway:gw-secret").decode()
        token = form.get("token", [""])[0]
        if not ok_client:
            body = {"error": "invalid_client"}
            self.send_response(401)
        elif token == "good-token":
            body = {"active": True, "scope": "orders:read", "username": "erin", "exp": int(time.time()) + 300}
            self.send_response(200)
        else:
            body = {"active": False}
            self.send_response(200)
        data = json.dumps(body).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_oauth2_introspection_with_a_real_endpoint(stack: dict[str, Any]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Introspection)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = free_port()
        introspect = f"http://127.0.0.1:{server.server_port}/introspect"
        policy = {
            "name": "oauth",
            "type": "oauth2",
            "config": {"introspection_url": introspect, "client_id": "gateway", "client_secret": "gw-secret",
                       "required_scopes": ["orders:read"]},
        }  # fmt: skip
        apply(stack, config(port, stack["ups"][:1], [policy]))
        url = f"http://127.0.0.1:{port}/echo"
        r = httpx.get(url, headers={"Authorization": "Bearer good-token"})
        assert r.status_code == 200, r.text
        assert r.json()["headers"]["X-Consumer-Name"] == "erin"
        calls = _Introspection.calls
        for _ in range(5):
            assert httpx.get(url, headers={"Authorization": "Bearer good-token"}).status_code == 200
        assert _Introspection.calls <= calls + 2  # cached (once per node at most)
        assert httpx.get(url, headers={"Authorization": "Bearer other"}).status_code == 401
        # the policy's client secret never leaves the control plane unmasked
        with stack["cp"].client() as c:
            assert c.get("/api/v1/policies/oauth").json()["config"]["client_secret"] == "********"
    finally:
        server.shutdown()


class _Jwks(BaseHTTPRequestHandler):
    document: dict[str, Any] = {"keys": []}
    fetches = 0

    def do_GET(self) -> None:
        type(self).fetches += 1
        data = json.dumps(type(self).document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def _rsa_jwk(kid: str) -> tuple[Any, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return key, jwk


def test_jwks_rotation_is_picked_up(stack: dict[str, Any]) -> None:
    key_a, jwk_a = _rsa_jwk("key-a")
    key_b, jwk_b = _rsa_jwk("key-b")
    _Jwks.document = {"keys": [jwk_a]}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = free_port()
        policy = {"name": "idp", "type": "jwt",
                  "config": {"jwks_url": f"http://127.0.0.1:{server.server_port}/jwks", "issuer": "https://idp.test",
                             "algorithms": ["RS256"]}}  # fmt: skip
        apply(stack, config(port, stack["ups"][:1], [policy]))
        url = f"http://127.0.0.1:{port}/echo"

        def token(key: Any, kid: str) -> str:
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())  # fmt: skip
            claims = {"iss": "https://idp.test", "sub": "svc-1", "exp": int(time.time()) + 300}
            return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})

        wait_until(
            lambda: httpx.get(url, headers={"Authorization": f"Bearer {token(key_a, 'key-a')}"}).status_code == 200, 10
        )
        _Jwks.document = {"keys": [jwk_b]}  # the identity provider rotates its key
        new_token = token(key_b, "key-b")
        # a node refetches on an unknown kid (at most every 10 s), so both nodes follow within that
        for _ in stack["nodes"]:
            r = wait_until(
                lambda: (
                    (r := httpx.get(url, headers={"Authorization": f"Bearer {new_token}"})).status_code == 200 and r
                ),
                15,
                interval=0.5,
                message="a key-b token accepted",
            )
            assert r.json()["headers"]["X-Consumer-Name"] == "svc-1"
        assert all(
            httpx.get(url, headers={"Authorization": f"Bearer {new_token}", "Connection": "close"}).status_code == 200
            for _ in range(6)
        )
    finally:
        server.shutdown()


def test_circuit_breaker_degrades_and_state_is_visible(stack: dict[str, Any]) -> None:
    port = free_port()
    bad = stack["ups"][2]
    policy = {"name": "cb", "type": "circuit_breaker",
              "config": {"failure_threshold": 3, "open_for": "30s",
                         "fallback": {"status": 503, "body": "{\"degraded\": true}",
                                      "headers": {"Content-Type": "application/json"}}}}  # fmt: skip
    apply(stack, config(port, [bad], [policy]))
    url = f"http://127.0.0.1:{port}/echo"
    # new connections spread over both nodes; each node trips its own breaker after 3 failures
    codes = [httpx.get(url, headers={"Connection": "close"}).status_code for _ in range(20)]
    assert codes.count(503) == 20

    def tripped_everywhere() -> bool:
        answers = [httpx.get(url, headers={"Connection": "close"}).json() for _ in range(6)]
        return all(a == {"degraded": True} for a in answers)

    wait_until(tripped_everywhere, 5, message="both nodes answer with the degradation response")
    states = [b for n in stack["nodes"] for b in n.get("/circuit_breakers").json()["circuit_breakers"]]
    assert any(b["state"] == "open" and b["scope"] == "route:api" for b in states), states
    # the admin page shows wall-clock times (ISO 8601, UTC), as the README says, not monotonic seconds
    for b in states:
        since = datetime.fromisoformat(b["since"])
        assert since.tzinfo is not None and abs(since.timestamp() - time.time()) < 120, b
        if b["next_probe_at"] is not None:
            assert datetime.fromisoformat(b["next_probe_at"]).timestamp() >= since.timestamp(), b


def test_retry_on_5xx_goes_to_another_endpoint(stack: dict[str, Any]) -> None:
    port = free_port()
    good, bad = stack["ups"][0], stack["ups"][2]
    doc = config(port, [good, bad], [], retry={"attempts": 1, "retry_on": ["5xx"]})
    doc["clusters"][0]["outlier_detection"] = {"consecutive_failures": 1000}  # keep `bad` in rotation
    apply(stack, doc)
    with httpx.Client() as c:
        codes = Counter(c.get(f"http://127.0.0.1:{port}/echo").status_code for _ in range(20))
    assert codes == {200: 20}
    del doc["routes"][0]["retry"]
    doc["clusters"][0]["outlier_detection"] = {"consecutive_failures": 999}
    apply(stack, doc)  # without the retry policy the 503s reach the client
    with httpx.Client() as c:
        codes = Counter(c.get(f"http://127.0.0.1:{port}/echo").status_code for _ in range(20))
    assert codes[503] > 0


def test_bad_policy_config_is_refused_with_the_field(stack: dict[str, Any]) -> None:
    with stack["cp"].client() as c:
        r = c.post("/api/v1/policies", json={"name": "broken", "type": "rate_limit", "config": {"rate": 0}})
        assert r.status_code == 422 and "config.rate" in r.json()["message"]
        r = c.post("/api/v1/policies", json={"name": "broken", "type": "jwt", "config": {"jwks_url": "file:///x"}})
        assert r.status_code == 422 and "jwks_url" in r.json()["message"]
