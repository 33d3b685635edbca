"""API tokens with roles (issue 13, part 2) against real control plane processes.

Every /api/v1 call needs a token; `read` may GET, `registry` may manage the instances of its
services, `admin` everything; the bootstrap admin token stays an admin. Covered here: each role
against each endpoint family (a table), every route of the application walked (anonymous and
with a read token), tokens shown once and stored hashed, revocation at once (on one control
plane and across two sharing a MariaDB database), expiry, the heartbeat fast path, no secret
in any read (nor a guessing oracle in a reader's dry run), and fluxctl with tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import sqlite3
import subprocess
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from support.processes import ControlPlaneProcess, executable, mariadb_database, mariadb_unreachable, wait_until
from support.tls import self_signed

from controlplane.api.access import authorize
from controlplane.api.app import create_app
from controlplane.api.heartbeats import HeartbeatFastPath
from controlplane.api_tokens import ApiTokens, TokenSpec
from controlplane.auth import AdminToken
from controlplane.store.db import make_engine, migrate

TOKEN_SHAPE = re.compile(r"^flux_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")
ANY_TOKEN = re.compile(r"flux_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
CERT, KEY = self_signed("secret.example.com")

# Every secret planted below; no read of any role may show one.
SECRETS = {
    "api_key": "alice-api-key-SECRET-0001",
    "jwt": "alice-jwt-SECRET-0123456789",
    "password": "alice-password-SECRET",
    "tunnel": "tunnel-token-SECRET-1",
    "tunnel2": "tunnel-token-SECRET-2",
    "client_secret": "oauth-client-SECRET",
    "registry_password": "etcd-password-SECRET",
    "registry_token": "etcd-token-SECRET",
    "alert_header": "hook-header-SECRET",
    "key": KEY.strip().splitlines()[1],  # a line of the certificate's private key
}

ALICE = {
    "name": "alice",
    "groups": ["partners"],
    "credentials": [
        {"type": "api_key", "key": SECRETS["api_key"]},
        {"type": "jwt", "issuer": "idp", "algorithm": "HS256", "secret": SECRETS["jwt"]},
        {"type": "basic_auth", "username": "alice", "password": SECRETS["password"]},
    ],
}
CONFIG = {
    "clusters": [{"name": "base", "endpoints": [{"address": "127.0.0.1", "port": 9000}]}],
    "routes": [{"name": "base", "cluster": "base", "path": "/base"}],
    "consumers": [ALICE],
    "certificates": [{"name": "site", "snis": ["secret.example.com"], "cert": CERT, "key": KEY}],
    "tunnels": [
        {
            "name": "edge",
            "node_group": "edge",
            "bind_port": 17000,
            "token": SECRETS["tunnel"],
            "tokens": [SECRETS["tunnel2"]],
            "allow_ports": "6000-6999",
        }
    ],
    "policies": [
        {
            "name": "oauth",
            "type": "oauth2",
            "config": {
                "introspection_url": "https://idp.example/introspect",
                "client_id": "gw",
                "client_secret": SECRETS["client_secret"],
            },
        }
    ],
    "registries": [
        {
            "name": "etcd",
            "type": "etcd",
            "address": "127.0.0.1:9",
            "services": ["none"],
            "username": "u",
            "password": SECRETS["registry_password"],
            "token": SECRETS["registry_token"],
        }
    ],
    "alerts": [
        {
            "name": "few",
            "kind": "min_healthy",
            "threshold": 1,
            "service": "nothing",
            "webhook": "http://127.0.0.1:9/hook",
            "headers": {"X-Token": SECRETS["alert_header"]},
        }
    ],
}
NAMES = {plural: items[0]["name"] for plural, items in CONFIG.items()}

ROLES = ("anon", "read", "registry", "admin", "bootstrap")


@pytest.fixture(scope="module")
def cp(module_controlplane: ControlPlaneProcess) -> ControlPlaneProcess:
    with module_controlplane.client() as c:
        r = c.post("/api/v1/apply", json=CONFIG)
        assert r.status_code == 200 and r.json()["committed"], r.text
        for service, iid, address in (("orders", "o1", "10.0.0.1"), ("users", "u1", "10.0.0.2")):
            body = {"id": iid, "address": address, "port": 80, "ttl": "1h"}
            r = c.post(f"/api/v1/services/{service}/instances", json=body)
            assert r.status_code == 201, r.text
    return module_controlplane


@pytest.fixture(scope="module")
def tokens(cp: ControlPlaneProcess) -> dict[str, str]:
    """A token of every kind of caller ("anon": none)."""
    return {
        "anon": "",
        "read": cp.api_token("read", name="t-read"),
        "registry": cp.api_token("registry", services=("orders",), name="t-registry"),
        "admin": cp.api_token("admin", name="t-admin"),
        "bootstrap": cp.token,
    }


def as_(cp: ControlPlaneProcess, token: str) -> httpx.Client:
    return cp.client(token=token)


def assert_401(r: httpx.Response) -> None:
    assert r.status_code == 401, (r.request.method, r.request.url, r.status_code, r.text)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "unauthorized" and r.json()["message"]


def assert_403(r: httpx.Response) -> None:
    assert r.status_code == 403, (r.request.method, r.request.url, r.status_code, r.text)
    body = r.json()
    assert body["error"] == "forbidden" and "role" in body["message"], body


# -- each role against each endpoint family ------------------------------------------------

READ = {"anon": 401, "read": 200, "registry": 403, "admin": 200, "bootstrap": 200}
OWN_READ = {**READ, "registry": 200}
ADMIN = {"anon": 401, "read": 403, "registry": 403}
OWN_WRITE = {"anon": 401, "read": 403}


def _exp(base: dict[str, int], **rest: int) -> dict[str, int]:
    return {**base, **rest}


# (id, method, path, body ("{who}" and "{n}" filled per role), expected status per role)
FAMILIES: list[tuple[str, str, str, Any, dict[str, int]]] = [
    ("list a kind", "GET", "/api/v1/clusters", None, READ),
    ("one consumer", "GET", "/api/v1/consumers/alice", None, READ),
    ("config", "GET", "/api/v1/config", None, READ),
    ("config export", "GET", "/api/v1/config/export", None, READ),
    ("config history", "GET", "/api/v1/config/history", None, READ),
    ("nodes", "GET", "/api/v1/nodes", None, READ),
    ("tunnel sessions", "GET", "/api/v1/tunnels/sessions", None, READ),
    ("tunnel proxies", "GET", "/api/v1/tunnels/proxies", None, READ),
    ("registry sources", "GET", "/api/v1/registries/status", None, READ),
    ("alerts", "GET", "/api/v1/alerts/status", None, READ),
    ("all services", "GET", "/api/v1/services", None, READ),
    ("registry events", "GET", "/api/v1/events", None, READ),
    ("own service", "GET", "/api/v1/services/orders", None, OWN_READ),
    ("own instances", "GET", "/api/v1/services/orders/instances", None, OWN_READ),
    ("own instance", "GET", "/api/v1/services/orders/instances/o1", None, OWN_READ),
    ("other instances", "GET", "/api/v1/services/users/instances", None, READ),
    ("write a resource", "PUT", "/api/v1/clusters/c-{who}",
     {"name": "c-{who}", "endpoints": [{"address": "127.0.0.1", "port": 9}]}, _exp(ADMIN, admin=201, bootstrap=201)),
    ("delete a resource", "DELETE", "/api/v1/clusters/nothing", None, _exp(ADMIN, admin=404, bootstrap=404)),
    ("apply", "POST", "/api/v1/apply",
     {"clusters": [{"name": "a-{who}", "endpoints": [{"address": "127.0.0.1", "port": 9}]}]},
     _exp(ADMIN, admin=200, bootstrap=200)),
    ("apply dry run", "POST", "/api/v1/apply?dry_run=true",
     {"clusters": [{"name": "d-{who}", "endpoints": [{"address": "127.0.0.1", "port": 9}]}]},
     _exp(READ, read=200)),
    ("rollback", "POST", "/api/v1/config/rollback", {"version": 10**12}, _exp(ADMIN, admin=404, bootstrap=404)),
    ("consumer JWT", "POST", "/api/v1/auth/token", {"consumer": "nobody"}, _exp(ADMIN, admin=404, bootstrap=404)),
    ("write a service", "PUT", "/api/v1/services/orders", {}, _exp(ADMIN, admin=200, bootstrap=200)),
    ("import services", "POST", "/api/v1/services:import", {"services": []}, _exp(ADMIN, admin=200, bootstrap=200)),
    ("register own", "POST", "/api/v1/services/orders/instances", {"address": "10.1.0.{n}", "port": 80},
     _exp(OWN_WRITE, registry=201, admin=201, bootstrap=201)),
    ("register other", "POST", "/api/v1/services/users/instances", {"address": "10.2.0.{n}", "port": 80},
     _exp(ADMIN, admin=201, bootstrap=201)),
    ("heartbeat own", "PUT", "/api/v1/services/orders/instances/o1/heartbeat", None,
     _exp(OWN_WRITE, registry=200, admin=200, bootstrap=200)),
    ("heartbeat other", "PUT", "/api/v1/services/users/instances/u1/heartbeat", None,
     _exp(ADMIN, admin=200, bootstrap=200)),
    ("patch own", "PATCH", "/api/v1/services/orders/instances/o1", {"weight": 2},
     _exp(OWN_WRITE, registry=200, admin=200, bootstrap=200)),
    ("patch other", "PATCH", "/api/v1/services/users/instances/u1", {"weight": 2},
     _exp(ADMIN, admin=200, bootstrap=200)),
    ("deregister own", "DELETE", "/api/v1/services/orders/instances/gone", None,
     _exp(OWN_WRITE, registry=404, admin=404, bootstrap=404)),
    ("deregister other", "DELETE", "/api/v1/services/users/instances/gone", None,
     _exp(ADMIN, admin=404, bootstrap=404)),
    ("list tokens", "GET", "/api/v1/tokens", None, _exp(ADMIN, admin=200, bootstrap=200)),
    ("create a token", "POST", "/api/v1/tokens", {"name": "made-by-{who}", "role": "read"},
     _exp(ADMIN, admin=201, bootstrap=201)),
    ("revoke a token", "DELETE", "/api/v1/tokens/nothing", None, _exp(ADMIN, admin=404, bootstrap=404)),
]  # fmt: skip


def _fill(body: Any, who: str, n: int) -> Any:
    return None if body is None else json.loads(json.dumps(body).replace("{who}", who).replace("{n}", str(n)))


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), [f[1:] for f in FAMILIES], ids=[f[0] for f in FAMILIES]
)
def test_each_role_against_each_endpoint_family(
    cp: ControlPlaneProcess, tokens: dict[str, str], method: str, path: str, body: Any, expected: dict[str, int]
) -> None:
    for n, who in enumerate(ROLES, start=1):
        with as_(cp, tokens[who]) as c:
            r = c.request(method, path.replace("{who}", who), json=_fill(body, who, n))
        if expected[who] == 401:
            assert_401(r)
        elif expected[who] == 403:
            assert_403(r)
        else:
            assert r.status_code == expected[who], (who, r.status_code, r.text)


def test_a_refusal_names_the_role_needed(cp: ControlPlaneProcess, tokens: dict[str, str]) -> None:
    with as_(cp, tokens["read"]) as c:
        message = c.put("/api/v1/clusters/x", json={}).json()["message"]
    assert message == "this needs the admin role; token 't-read' (role read) has not"
    with as_(cp, tokens["registry"]) as c:
        message = c.put("/api/v1/services/users/instances/u1/heartbeat").json()["message"]
    assert "the registry role for service 'users'" in message and "limited to services orders" in message
    with as_(cp, "flux_000000000000_" + "A" * 43) as c:
        assert c.get("/api/v1/clusters").json()["message"] == "unknown or revoked API token"
    with as_(cp, "not-the-admin-token") as c:
        r = c.get("/api/v1/clusters")
    assert_401(r)
    assert r.json()["message"] == "wrong admin token" and "invalid_token" in r.headers["www-authenticate"]


# -- every route, walked ---------------------------------------------------------------------


ADMIN_ONLY_READS = ("/api/v1/tokens", "/api/v1/nodes/join-tokens")
READ_POSTS = ("/api/v1/auth/token/verify",)  # commit nothing: the read role may (issue 14)


def api_routes() -> list[RouteContext]:
    """The application's routes under /api/v1, as served: included routers' routes with their
    full path and dependencies (create_app only keeps `cp` for the handlers)."""
    app = create_app(SimpleNamespace(tracing=None))  # type: ignore[arg-type]
    api = [r for r in iter_route_contexts(app.routes) if (r.path or "").startswith("/api/v1")]
    assert all(isinstance(r.original_route, APIRoute) for r in api), "a route under /api/v1 not of FastAPI"
    return api


def _filled(template: str) -> str:
    """A concrete path for a route template, naming the planted resources."""
    parts = template.split("/")
    kind = parts[3] if len(parts) > 3 else ""  # "/api/v1" (the index) names no kind
    values = {"name": NAMES.get(kind, "orders"), "iid": "o1", "version": "1", "node_id": "none"}
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values.get(m.group(1), "x"), template)


def _call(c: httpx.Client, method: str, url: str) -> tuple[int, bytes, httpx.Headers]:
    """Status, the start of the body, headers; streams (watch) are left after the first chunk."""
    with c.stream(method, url, timeout=10) as r:
        first = b""
        for chunk in r.iter_bytes():
            first += chunk
            if len(first) > 1 << 20 or r.headers.get("content-type", "").startswith("text/event-stream"):
                break
        return r.status_code, first, r.headers


def test_every_api_route_is_protected(cp: ControlPlaneProcess, tokens: dict[str, str]) -> None:
    routes = api_routes()
    assert len(routes) > 40
    for route in routes:
        assert any(d.call is authorize for d in route.dependant.dependencies), f"{route.path}: no authorize"
    anon, reader = as_(cp, ""), as_(cp, tokens["read"])
    with anon, reader:
        for route in routes:
            url = _filled(route.path)
            for method in sorted(route.methods):
                status, body, headers = _call(anon, method, url)
                assert status == 401 and headers["www-authenticate"].startswith("Bearer"), (method, route.path)
                assert json.loads(body)["error"] == "unauthorized"
                status, body, _ = _call(reader, method, url)
                where = (method, route.path, status, body[:200])
                if (method == "GET" and not route.path.startswith(ADMIN_ONLY_READS)) or (
                    method == "POST" and route.path in READ_POSTS
                ):
                    assert status not in (401, 403), where
                else:
                    assert status == 403 and json.loads(body)["error"] == "forbidden", where
        assert _call(anon, "GET", "/api/v1")[0] == 401  # no route: 401 all the same
        assert _call(anon, "GET", "/api/v1/no/such/thing")[0] == 401
        for open_path in ("/healthz", "/metrics", "/docs", "/openapi.json"):
            assert _call(anon, "GET", open_path)[0] == 200, open_path


# -- no secret in any read --------------------------------------------------------------------


def _leaks(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


def test_no_read_shows_a_secret(cp: ControlPlaneProcess, tokens: dict[str, str]) -> None:
    with as_(cp, tokens["admin"]) as admin:
        history = admin.get("/api/v1/config/history", params={"limit": 1000}).json()["items"]
    versions = [str(h["version"]) for h in history]
    visited: set[str] = set()
    for who in ("read", "admin", "bootstrap"):
        with as_(cp, tokens[who]) as c:
            for route in api_routes():
                if "GET" not in route.methods:
                    continue
                visited.add(route.path)
                urls = [_filled(route.path)]
                if "{version}" in route.path:
                    urls = [route.path.replace("{version}", v) for v in versions]
                for url in urls:
                    status, body, _ = _call(c, "GET", url)
                    assert status in (200, 403, 404), (who, url, status, body[:300])
                    assert not _leaks(body.decode()), (who, url, _leaks(body.decode()))
                    assert not ANY_TOKEN.search(body.decode()), (who, url)
    # the configured resources were there to leak: each was read by name
    for plural, name in NAMES.items():
        with as_(cp, tokens["read"]) as c:
            assert c.get(f"/api/v1/{plural}/{name}").status_code == 200, plural
    assert {r.path for r in api_routes() if "GET" in r.methods} == visited
    with as_(cp, tokens["admin"]) as admin:  # every alert header reads masked, and written back is kept
        alert = admin.get("/api/v1/alerts/few").json()
        assert alert["headers"] == {"X-Token": "********"}
        before = admin.get("/api/v1/config").json()["version"]
        assert admin.put("/api/v1/alerts/few", json=alert).status_code == 200
        assert admin.get("/api/v1/config").json()["version"] == before


def test_a_readers_dry_run_is_no_oracle_for_secrets(cp: ControlPlaneProcess, tokens: dict[str, str]) -> None:
    """With a read token `apply --diff` compares no secret: a right and a wrong guess of
    alice's API key read the same; the admin's dry run does see the change."""
    right = {"consumers": [ALICE]}
    wrong = json.loads(json.dumps(right).replace(SECRETS["api_key"], "a-wrong-guess-0001"))
    answers = []
    with as_(cp, tokens["read"]) as c:
        for doc in (right, wrong):
            r = c.post("/api/v1/apply", params={"dry_run": "true"}, json=doc)
            assert r.status_code == 200, r.text
            answer = r.json()
            answer.pop("version")
            answers.append(answer)
            assert "fingerprint" not in r.text and not _leaks(r.text)
    assert answers[0] == answers[1]
    assert answers[0]["changes"] == [{"kind": "consumers", "name": "alice", "action": "unchanged"}]
    assert answers[0]["secrets_compared"] is False
    with as_(cp, tokens["admin"]) as c:
        r = c.post("/api/v1/apply", params={"dry_run": "true"}, json=wrong)
    assert r.json()["changes"][0]["action"] == "update"
    with as_(cp, tokens["read"]) as c:  # the value FastAPI reads is the last one: no commit by a reader
        assert_403(c.post("/api/v1/apply?dry_run=true&dry_run=false", json=wrong))
        assert_403(c.post("/api/v1/apply?dry_run=maybe", json=wrong))


# -- the token itself ------------------------------------------------------------------------


def _database_bytes(cp: ControlPlaneProcess) -> bytes:
    return b"".join(p.read_bytes() for p in cp.workdir.glob("flux.db*"))


def test_a_token_is_shown_once_and_stored_hashed(cp: ControlPlaneProcess) -> None:
    with cp.client() as admin:
        r = admin.post("/api/v1/tokens", json={"name": "ci", "role": "read", "ttl": "90d"})
        assert r.status_code == 201, r.text
        made = r.json()
        token = made["token"]
        assert TOKEN_SHAPE.match(token)
        assert made["name"] == "ci" and made["role"] == "read" and made["services"] == []
        assert made["created_by"].startswith("admin@")
        days = (_when(made["expires_at"]) - _when(made["created_at"])) / 86400
        assert abs(days - 90) < 0.001
        listed = admin.get("/api/v1/tokens")
        one = admin.get("/api/v1/tokens/ci")
        for text in (listed.text, one.text):
            assert token not in text and token.split("_", 2)[2] not in text and "flux_" not in text
        assert {"name", "role", "services", "created_at", "expires_at", "last_used_at"} <= set(one.json())
        again = admin.post("/api/v1/tokens", json={"name": "ci", "role": "admin"})
        assert again.status_code == 409 and again.json()["field"] == "name"
    secret_part = token.split("_", 2)[2].encode()
    stored = _database_bytes(cp)
    assert token.encode() not in stored and secret_part not in stored
    with sqlite3.connect(f"file:{cp.workdir / 'flux.db'}?mode=ro", uri=True) as db:
        (digest,) = db.execute("SELECT sha256 FROM api_tokens WHERE name = 'ci'").fetchone()
    assert digest == hashlib.sha256(token.encode()).hexdigest()


def _when(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "x", "role": "registry"}, "services"),
        ({"name": "x", "role": "read", "services": ["orders"]}, "services"),
        ({"name": "x", "role": "registry", "services": ["bad name"]}, "services[0]"),
        ({"name": "x", "role": "read", "ttl": "0s"}, "ttl"),
        ({"name": "x", "role": "read", "ttl": "400d"}, "ttl"),
        ({"name": "bad name", "role": "read"}, "name"),
        ({"name": "x", "role": "read", "extra": 1}, "extra"),
    ],
)
def test_bad_token_requests_name_the_field(cp: ControlPlaneProcess, body: dict[str, Any], field: str) -> None:
    with cp.client() as admin:
        r = admin.post("/api/v1/tokens", json=body)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_revocation_is_effective_at_once(cp: ControlPlaneProcess) -> None:
    token = cp.api_token("read", name="short-lived")
    with as_(cp, token) as c, cp.client() as admin:
        assert c.get("/api/v1/clusters").status_code == 200
        assert c.get("/api/v1/clusters").status_code == 200  # now cached
        assert admin.delete("/api/v1/tokens/short-lived").json() == {"deleted": "tokens/short-lived", "role": "read"}
        r = c.get("/api/v1/clusters")
        assert_401(r)
        assert r.json()["message"] == "unknown or revoked API token"
        assert "short-lived" not in admin.get("/api/v1/tokens").text
        assert admin.delete("/api/v1/tokens/short-lived").status_code == 404


def test_a_token_expires_and_its_last_use_is_kept(cp: ControlPlaneProcess) -> None:
    token = cp.api_token("registry", services=("orders",), name="brief", ttl="2s")
    with as_(cp, token) as c, cp.client() as admin:
        assert admin.get("/api/v1/tokens/brief").json()["last_used_at"] is None
        assert c.get("/api/v1/services/orders/instances").status_code == 200
        assert admin.get("/api/v1/tokens/brief").json()["last_used_at"] is not None
        r = wait_until(lambda: (r := c.get("/api/v1/services/orders/instances")).status_code == 401 and r, 5)
        assert "API token 'brief' expired at" in r.json()["message"]
        assert admin.get("/api/v1/tokens/brief").json()["expired"] is True


def test_the_generated_admin_token_is_the_bootstrap_admin(tmp_path: pathlib.Path) -> None:
    with ControlPlaneProcess(tmp_path / "cp", token="") as cp:  # no FLUX_ADMIN_TOKEN: admin.token is made
        generated = (tmp_path / "cp" / "admin.token").read_text().strip()
        with cp.client(token=generated) as admin:
            assert admin.get("/api/v1/clusters").status_code == 200
            assert admin.post("/api/v1/tokens", json={"name": "ops", "role": "admin"}).status_code == 201
        with cp.client(token="") as anon:
            assert_401(anon.get("/api/v1/clusters"))


# -- several control planes on one database -------------------------------------------------


@pytest.mark.mysql
def test_a_revocation_reaches_another_control_plane_within_a_second(tmp_path: pathlib.Path) -> None:
    reason = mariadb_unreachable()
    if reason:
        pytest.skip(reason)
    with mariadb_database() as url:
        a = ControlPlaneProcess(tmp_path / "a", url, token="shared-admin", cp_id="cp-a").start()
        try:
            b = ControlPlaneProcess(tmp_path / "b", url, token="shared-admin", cp_id="cp-b").start()
            try:
                token = a.api_token("read", name="shared")
                with as_(b, token) as on_b, a.client() as admin_a:
                    assert on_b.get("/api/v1/clusters").status_code == 200  # made on a, works on b
                    assert admin_a.delete("/api/v1/tokens/shared").status_code == 200
                    revoked = time.monotonic()
                    wait_until(lambda: on_b.get("/api/v1/clusters").status_code == 401, 3, interval=0.05)
                    assert time.monotonic() - revoked < 1.5
            finally:
                b.stop()
        finally:
            a.stop()


# -- the heartbeat fast path -----------------------------------------------------------------


class FakeRegistry:
    """A fake of RegistryStore.heartbeat alone: this test is about the middleware's checks."""

    def heartbeat(self, service: str, iid: str) -> Any:
        return SimpleNamespace(id=iid, status="up", last_heartbeat=1.0)


def test_the_heartbeat_fast_path_enforces_the_roles(tmp_path: pathlib.Path) -> None:
    """HeartbeatFastPath answers before FastAPI's routing: it checks token and role itself."""
    import asyncio

    engine = make_engine(f"sqlite:///{tmp_path / 'flux.db'}")
    migrate(engine)
    store = ApiTokens(engine)
    app_token, _ = store.create(TokenSpec(name="app", role="registry", services=["orders"]))
    read_token, _ = store.create(TokenSpec(name="r", role="read"))
    cp = SimpleNamespace(token=AdminToken("boot", "env"), api_tokens=store, registry=FakeRegistry())

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the heartbeat went past the fast path")

    async def heartbeat(service: str, token: str) -> tuple[int, dict[str, Any]]:
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        scope = {
            "type": "http",
            "method": "PUT",
            "path": f"/api/v1/services/{service}/instances/i1/heartbeat",
            "headers": headers,
            "app": SimpleNamespace(state=SimpleNamespace(flux=cp)),
        }
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await HeartbeatFastPath(inner)(scope, None, send)
        return sent[0]["status"], json.loads(sent[1]["body"])

    async def run() -> None:
        assert (await heartbeat("orders", app_token))[0] == 200
        status, body = await heartbeat("users", app_token)
        assert status == 403 and "registry role for service 'users'" in body["message"]
        assert (await heartbeat("orders", read_token))[0] == 403
        assert (await heartbeat("orders", ""))[0] == 401
        assert (await heartbeat("orders", "boot"))[0] == 200
        store.delete("app")
        status, body = await heartbeat("orders", app_token)
        assert status == 401 and body["message"] == "unknown or revoked API token"

    asyncio.run(run())
    engine.dispose()


# -- fluxctl ---------------------------------------------------------------------------------


def fluxctl(cp: ControlPlaneProcess, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FLUX_TOKEN", "FLUX_ADMIN_TOKEN")}
    env.update({"FLUX_SERVER": cp.url, "FLUX_TOKEN": token})
    return subprocess.run([executable("fluxctl"), *args], env=env, capture_output=True, text=True, timeout=60)


def test_fluxctl_tokens_and_reads_with_a_read_token(cp: ControlPlaneProcess, tmp_path: pathlib.Path) -> None:
    made = fluxctl(cp, cp.token, "tokens", "create", "dashboards", "--role", "read", "--ttl", "30d")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert TOKEN_SHAPE.match(token) and "shown this once" in made.stderr
    app = fluxctl(cp, cp.token, "tokens", "create", "shop", "--role", "registry", "--services", "orders,users")
    assert app.returncode == 0, app.stderr

    listed = fluxctl(cp, cp.token, "tokens", "list")
    assert listed.returncode == 0 and "flux_" not in listed.stdout
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ROLE", "SERVICES", "CREATED", "EXPIRES", "LAST", "USED"]
    assert any(r.split()[:3] == ["shop", "registry", "orders,users"] for r in rows), listed.stdout
    assert any(r.split()[:2] == ["dashboards", "read"] for r in rows), listed.stdout
    assert fluxctl(cp, token, "tokens", "list").returncode == 1  # listing tokens is the admin's

    for args in (("get", "clusters"), ("get", "all"), ("nodes",), ("history",), ("version",)):
        result = fluxctl(cp, token, *args)
        assert result.returncode == 0, (args, result.stderr)
    assert SECRETS["api_key"] not in fluxctl(cp, token, "get", "all").stdout

    path = tmp_path / "flux.yaml"
    path.write_text(json.dumps({"clusters": [{"name": "diffed", "endpoints": [{"address": "127.0.0.1", "port": 9}]}]}))
    diff = fluxctl(cp, token, "apply", "-f", str(path), "--diff")
    assert diff.returncode == 0, diff.stderr
    assert "+ clusters/diffed create (dry run)" in diff.stdout and "nothing committed" in diff.stdout
    commit = fluxctl(cp, token, "apply", "-f", str(path))
    assert commit.returncode == 1 and "403" in commit.stderr and "admin role" in commit.stderr

    gone = fluxctl(cp, cp.token, "tokens", "delete", "dashboards")
    assert gone.returncode == 0 and "revoked token dashboards" in gone.stdout
    refused = fluxctl(cp, token, "get", "clusters")
    assert refused.returncode == 1 and "401" in refused.stderr and "FLUX_TOKEN" in refused.stderr
