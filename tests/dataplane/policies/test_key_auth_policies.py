"""api_key and basic_auth policies, run the way the proxy runs them: a RequestContext from a
parsed request head, `on_request`, and awaitables driven on a real reactor."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest
import trio

from dataplane.http.request import RequestHead, RequestReader
from dataplane.policies.auth import ApiKeyPolicy, BasicAuthPolicy
from dataplane.policies.auth import keys as keys_mod
from dataplane.policies.base import ConsumerIndex, LocalResponse, PolicyEnv, RequestContext, SharedServices
from dataplane.reactor import Reactor
from flux.v1 import config_pb2 as pb
from fluxcommon.policy_config import ApiKeyConfig, BasicAuthConfig
from fluxcommon.secrets import hash_password

ALICE_KEY = "key-alice-0123456789"
BOB_KEY = "key-bob-0123456789"


def make_ctx(path: str = "/", headers: Iterable[tuple[str, str]] = ()) -> RequestContext:
    lines = [f"GET {path} HTTP/1.1", "Host: api.test", *(f"{k}: {v}" for k, v in headers)]
    reader = RequestReader()
    reader.feed(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = reader.events.popleft()
    assert isinstance(head, RequestHead)
    return RequestContext(head, "127.0.0.1", "main", "route", time.monotonic())


def run_node(consumers: list[pb.Consumer], body: Callable[[PolicyEnv], Awaitable[None]], limit: float = 20.0) -> None:
    """Run `body(env)` with a live reactor and services nursery (cancelled afterwards)."""

    async def main() -> None:
        reactor = Reactor()
        with trio.fail_after(limit):
            async with trio.open_nursery() as nursery:
                await nursery.start(reactor.run)
                env = PolicyEnv(consumers=ConsumerIndex(consumers), services=SharedServices(nursery), reactor=reactor)
                await body(env)
                nursery.cancel_scope.cancel()

    trio.run(main)


async def settle(env: PolicyEnv, result: Any) -> LocalResponse | None:
    """The policy's answer: as is, or (an awaitable) run to completion in a reactor task."""
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


def header(resp: LocalResponse, name: bytes) -> bytes | None:
    return next((v for n, v in resp.headers if n.lower() == name.lower()), None)


def upstream(ctx: RequestContext, name: str) -> str | None:
    return next((v.decode() for n, v in ctx.upstream_add if n.lower() == name.lower().encode()), None)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def consumers() -> list[pb.Consumer]:
    alice_hash = hash_password("s3cret", iterations=2000)
    bob_hash = hash_password("pässwörd", iterations=2000)
    return [
        pb.Consumer(
            name="alice",
            groups=["staff", "admins"],
            credentials=[
                pb.Credential(type="api_key", key_sha256=hashlib.sha256(ALICE_KEY.encode()).hexdigest()),
                pb.Credential(type="basic_auth", username="alice", password_hash=alice_hash),
            ],
        ),
        pb.Consumer(
            name="bob",
            credentials=[
                pb.Credential(type="api_key", key_sha256=hashlib.sha256(BOB_KEY.encode()).hexdigest()),
                pb.Credential(type="basic_auth", username="bob", password_hash=bob_hash),
            ],
        ),
    ]


def plain_env() -> PolicyEnv:
    return PolicyEnv(consumers=ConsumerIndex(consumers()))


# -- api_key ---------------------------------------------------------------------------------------


def test_api_key_from_default_header_sets_consumer_and_hides_it() -> None:
    policy = ApiKeyPolicy("keys", ApiKeyConfig(), plain_env())
    ctx = make_ctx(headers=[("apikey", ALICE_KEY), ("X-Consumer-Name", "mallory")])
    assert policy.on_request(ctx) is None
    assert ctx.consumer is not None and ctx.consumer.name == "alice"
    assert upstream(ctx, "X-Consumer-Name") == "alice"
    assert upstream(ctx, "X-Consumer-Groups") == "admins,staff"
    assert b"x-consumer-name" in ctx.upstream_remove  # the client's own value does not reach the upstream
    assert b"apikey" in ctx.upstream_remove
    assert ctx.vars["auth_method"] == "api_key"
    assert policy.allowed == 1


def test_api_key_custom_header_kept_when_not_hidden() -> None:
    policy = ApiKeyPolicy("keys", ApiKeyConfig(header="X-API-Key", hide_credentials=False), plain_env())
    ctx = make_ctx(headers=[("x-api-key", BOB_KEY)])
    assert policy.on_request(ctx) is None
    assert ctx.consumer is not None and ctx.consumer.name == "bob"
    assert b"x-api-key" not in ctx.upstream_remove
    assert b"x-consumer-groups" in ctx.upstream_remove  # bob has no groups: a client-sent value is dropped


def test_api_key_from_query_is_cut_out_of_the_query() -> None:
    policy = ApiKeyPolicy("keys", ApiKeyConfig(query="api_key"), plain_env())
    ctx = make_ctx(f"/items?a=1&api_key={ALICE_KEY}&b=two")
    assert policy.on_request(ctx) is None
    assert ctx.consumer is not None and ctx.consumer.name == "alice"
    assert ctx.query == b"a=1&b=two"


def test_api_key_query_percent_encoded_and_kept_when_not_hidden() -> None:
    policy = ApiKeyPolicy("keys", ApiKeyConfig(query="key", hide_credentials=False), plain_env())
    encoded = BOB_KEY.replace("-", "%2D")
    ctx = make_ctx(f"/items?key={encoded}")
    assert policy.on_request(ctx) is None
    assert ctx.consumer is not None and ctx.consumer.name == "bob"
    assert ctx.query is None


def test_api_key_header_wins_over_query() -> None:
    policy = ApiKeyPolicy("keys", ApiKeyConfig(query="api_key"), plain_env())
    ctx = make_ctx("/x?api_key=" + BOB_KEY, headers=[("apikey", ALICE_KEY)])
    assert policy.on_request(ctx) is None
    assert ctx.consumer is not None and ctx.consumer.name == "alice"
    assert ctx.query == b""  # hidden wherever it was


@pytest.mark.parametrize(
    ("path", "headers", "reason"),
    [
        ("/", [], "api_key_missing"),
        ("/", [("apikey", "")], "api_key_missing"),
        ("/", [("apikey", "not-a-known-key")], "api_key_invalid"),
        ("/?api_key=not-a-known-key", [], "api_key_invalid"),
    ],
)
def test_api_key_missing_or_unknown_is_401(path: str, headers: list[tuple[str, str]], reason: str) -> None:
    policy = ApiKeyPolicy("keys", ApiKeyConfig(query="api_key"), plain_env())
    ctx = make_ctx(path, headers)
    resp = policy.on_request(ctx)
    assert isinstance(resp, LocalResponse)
    assert resp.status == 401
    assert resp.reason == reason
    assert header(resp, b"www-authenticate") == b'ApiKey realm="flux"'
    assert ctx.consumer is None
    assert policy.denied == {reason.removeprefix("api_key_"): 1}


# -- basic_auth ------------------------------------------------------------------------------------


def test_basic_auth_right_password_then_cache_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[str] = []
    real = keys_mod.verify_password

    def counting(password: str, encoded: str) -> bool:
        checks.append(password)
        return real(password, encoded)

    monkeypatch.setattr(keys_mod, "verify_password", counting)

    async def body(env: PolicyEnv) -> None:
        policy = BasicAuthPolicy("basic", BasicAuthConfig(), env)
        ctx = make_ctx(headers=[("Authorization", basic("alice", "s3cret"))])
        pending = policy.on_request(ctx)
        assert pending is not None and not isinstance(pending, LocalResponse)  # PBKDF2 runs off the reactor
        assert await settle(env, pending) is None
        assert ctx.consumer is not None and ctx.consumer.name == "alice"
        assert upstream(ctx, "X-Consumer-Name") == "alice"
        assert b"authorization" in ctx.upstream_remove
        assert checks == ["s3cret"]

        again = make_ctx(headers=[("Authorization", basic("alice", "s3cret"))])
        assert policy.on_request(again) is None  # cached: answered at once, no PBKDF2
        assert again.consumer is not None and again.consumer.name == "alice"
        assert checks == ["s3cret"]

        utf8 = make_ctx(headers=[("Authorization", basic("bob", "pässwörd"))])
        assert await settle(env, policy.on_request(utf8)) is None
        assert utf8.consumer is not None and utf8.consumer.name == "bob"
        assert policy.allowed == 3

    run_node(consumers(), body)


def test_basic_auth_wrong_password_and_unknown_user_look_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[str] = []
    real = keys_mod.verify_password
    monkeypatch.setattr(keys_mod, "verify_password", lambda p, e: checks.append(p) or real(p, e))

    async def body(env: PolicyEnv) -> None:
        policy = BasicAuthPolicy("basic", BasicAuthConfig(realm="internal"), env)
        answers = []
        for user, password in [("alice", "wrong"), ("alice", "wrong"), ("nobody", "s3cret")]:
            ctx = make_ctx(headers=[("Authorization", basic(user, password))])
            resp = await settle(env, policy.on_request(ctx))
            assert isinstance(resp, LocalResponse)
            assert ctx.consumer is None
            answers.append((resp.status, resp.body, header(resp, b"www-authenticate"), resp.reason))
        assert answers[0] == answers[1] == answers[2]
        assert answers[0][0] == 401
        assert answers[0][2] == b'Basic realm="internal", charset="UTF-8"'
        assert answers[0][3] == "basic_auth_invalid"
        assert checks == ["wrong", "wrong", "s3cret"]  # failures are never cached; unknown users cost a check too
        # the right password still works after failures
        ctx = make_ctx(headers=[("Authorization", basic("alice", "s3cret"))])
        assert await settle(env, policy.on_request(ctx)) is None
        assert policy.denied == {"invalid": 3}

    run_node(consumers(), body)


def test_basic_auth_cache_misses_after_password_change() -> None:
    async def body(env: PolicyEnv) -> None:
        policy = BasicAuthPolicy("basic", BasicAuthConfig(), env)
        ctx = make_ctx(headers=[("Authorization", basic("alice", "s3cret"))])
        assert await settle(env, policy.on_request(ctx)) is None
        # a new snapshot: alice's password changed; the shared cache must not let the old one in
        changed = consumers()
        changed[0].credentials[1].password_hash = hash_password("n3w-secret", iterations=2000)
        env2 = PolicyEnv(consumers=ConsumerIndex(changed), services=env.services, reactor=env.reactor)
        policy2 = BasicAuthPolicy("basic", BasicAuthConfig(), env2)
        assert policy2.verifier is policy.verifier
        old = make_ctx(headers=[("Authorization", basic("alice", "s3cret"))])
        resp = await settle(env2, policy2.on_request(old))
        assert isinstance(resp, LocalResponse) and resp.status == 401
        new = make_ctx(headers=[("Authorization", basic("alice", "n3w-secret"))])
        assert await settle(env2, policy2.on_request(new)) is None

    run_node(consumers(), body)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "basic_auth_missing"),
        ("Bearer abc.def.ghi", "basic_auth_missing"),
        ("Basic", "basic_auth_malformed"),
        ("Basic !!!not-base64!!!", "basic_auth_malformed"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "basic_auth_malformed"),
        ("Basic " + base64.b64encode(b":empty-user").decode(), "basic_auth_malformed"),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "basic_auth_malformed"),
    ],
)
def test_basic_auth_missing_or_malformed_is_401_without_hashing(value: str | None, reason: str) -> None:
    policy = BasicAuthPolicy("basic", BasicAuthConfig(), plain_env())
    ctx = make_ctx(headers=[("Authorization", value)] if value is not None else [])
    resp = policy.on_request(ctx)
    assert isinstance(resp, LocalResponse)  # answered synchronously
    assert resp.status == 401 and resp.reason == reason
    assert header(resp, b"www-authenticate") == b'Basic realm="flux", charset="UTF-8"'
    assert policy.verifier.checks == 0


def test_basic_auth_without_reactor_checks_inline() -> None:
    policy = BasicAuthPolicy("basic", BasicAuthConfig(hide_credentials=False), plain_env())
    ctx = make_ctx(headers=[("Authorization", basic("bob", "pässwörd"))])
    assert policy.on_request(ctx) is None
    assert ctx.consumer is not None and ctx.consumer.name == "bob"
    assert b"authorization" not in ctx.upstream_remove
    bad = make_ctx(headers=[("Authorization", basic("bob", "nope"))])
    resp = policy.on_request(bad)
    assert isinstance(resp, LocalResponse) and resp.status == 401


def test_basic_auth_realm_cannot_inject_header_lines() -> None:
    with pytest.raises(ValueError, match="control character"):  # refused at write time...
        BasicAuthConfig(realm='a"b\r\nSet-Cookie: x=1')
    # ... and quoted safely by the policy all the same (a config that skipped validation)
    config = BasicAuthConfig.model_construct(**{**BasicAuthConfig().model_dump(), "realm": 'a"b\r\nSet-Cookie: x=1'})
    policy = BasicAuthPolicy("basic", config, plain_env())
    resp = policy.on_request(make_ctx())
    assert isinstance(resp, LocalResponse)
    assert header(resp, b"www-authenticate") == b'Basic realm="a\\"bSet-Cookie: x=1", charset="UTF-8"'
