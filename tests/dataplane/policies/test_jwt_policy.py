"""jwt policy: every algorithm family, claim checks, refusals (alg none, confusion), token
sources, the verified-token cache, and JWKS fetched from a real HTTP server with key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from dataplane.http.request import RequestHead, RequestReader
from dataplane.policies.auth import JwtPolicy
from dataplane.policies.auth import jwks as jwks_mod
from dataplane.policies.auth import jwt_policy as jwt_mod
from dataplane.policies.base import ConsumerIndex, LocalResponse, PolicyEnv, RequestContext, SharedServices
from dataplane.reactor import Reactor
from flux.v1 import config_pb2 as pb
from fluxcommon.policy_config import JwtConfig

# -- keys and consumers ----------------------------------------------------------------------------

SECRET = "s" * 64  # long enough for HS512 without key-length warnings
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC256 = ec.generate_private_key(ec.SECP256R1())
EC384 = ec.generate_private_key(ec.SECP384R1())
ED = ed25519.Ed25519PrivateKey.generate()
ALGS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"]


def pem(private: Any) -> str:
    return private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def signing_key(alg: str) -> Any:
    if alg.startswith("HS"):
        return SECRET
    if alg.startswith("RS"):
        return RSA_KEY
    return {"ES256": EC256, "ES384": EC384, "EdDSA": ED}[alg]


def credential(alg: str) -> pb.Credential:
    if alg.startswith("HS"):
        return pb.Credential(type="jwt", issuer=f"iss-{alg}", algorithm=alg, secret=SECRET)
    return pb.Credential(type="jwt", issuer=f"iss-{alg}", algorithm=alg, public_key=pem(signing_key(alg)))


CONSUMERS = [
    pb.Consumer(name="alice", groups=["staff"], credentials=[credential(a) for a in ALGS]),
    pb.Consumer(name="carol"),  # known, no credentials (named by JWKS tokens)
]


def sign(alg: str, claims: dict[str, Any] | None = None, key: Any = None, **headers: Any) -> str:
    body = {"iss": f"iss-{alg}", "sub": "alice", "exp": int(time.time()) + 300}
    body.update(claims or {})
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key if key is not None else signing_key(alg), algorithm=alg, headers=headers or None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(
    header: dict[str, Any], claims: dict[str, Any], secret: bytes | None, digest: Any = hashlib.sha256
) -> str:
    """A token signed by hand (PyJWT refuses to build the forgeries below)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


# -- running policies -------------------------------------------------------------------------------


def closed_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_ctx(path: str = "/", headers: Iterable[tuple[str, str]] = ()) -> RequestContext:
    lines = [f"GET {path} HTTP/1.1", "Host: api.test", *(f"{k}: {v}" for k, v in headers)]
    reader = RequestReader()
    reader.feed(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = reader.events.popleft()
    assert isinstance(head, RequestHead)
    return RequestContext(head, "127.0.0.1", "main", "route", time.monotonic())


def bearer(token: str) -> RequestContext:
    return make_ctx(headers=[("Authorization", f"Bearer {token}")])


def run_node(
    consumers: list[pb.Consumer],
    body: Callable[[PolicyEnv], Awaitable[None]],
    limit: float = 20.0,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    async def main() -> None:
        reactor = Reactor()
        with trio.fail_after(limit):
            async with trio.open_nursery() as nursery:
                await nursery.start(reactor.run)
                services = SharedServices(nursery)
                env = PolicyEnv(consumers=ConsumerIndex(consumers), services=services, reactor=reactor, clock=clock)
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


def policy(env: PolicyEnv | None = None, **config: Any) -> JwtPolicy:
    return JwtPolicy("jwt", JwtConfig.model_validate(config), env or PolicyEnv(consumers=ConsumerIndex(CONSUMERS)))


def header(resp: LocalResponse, name: bytes) -> bytes | None:
    return next((v for n, v in resp.headers if n.lower() == name.lower()), None)


def upstream(ctx: RequestContext, name: str) -> str | None:
    return next((v.decode() for n, v in ctx.upstream_add if n.lower() == name.lower().encode()), None)


def refused(p: JwtPolicy, ctx: RequestContext, reason: str) -> LocalResponse:
    resp = p.on_request(ctx)
    assert isinstance(resp, LocalResponse), resp
    assert resp.status == 401
    assert resp.reason == f"jwt_{reason}"
    assert ctx.consumer is None
    assert not ctx.upstream_add
    return resp


# -- algorithms and consumers ---------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGS)
def test_every_algorithm_family_verifies(alg: str) -> None:
    p = policy()
    ctx = bearer(sign(alg))
    assert p.on_request(ctx) is None
    assert ctx.consumer is not None and ctx.consumer.name == "alice"
    assert upstream(ctx, "X-Consumer-Name") == "alice"
    assert upstream(ctx, "X-Consumer-Groups") == "staff"
    assert ctx.vars["jwt_claims"]["iss"] == f"iss-{alg}"
    assert p.allowed == 1 and p.denied == {}


def test_wrong_key_and_tampered_token_are_refused() -> None:
    p = policy()
    refused(p, bearer(sign("RS256", key=RSA_OTHER)), "bad_signature")
    refused(p, bearer(sign("HS256", key="x" * 64)), "bad_signature")
    head, _payload, sig = sign("ES256").split(".")
    forged = b64(json.dumps({"iss": "iss-ES256", "sub": "alice", "admin": True}).encode())
    refused(p, bearer(f"{head}.{forged}.{sig}"), "bad_signature")
    assert p.denied == {"bad_signature": 3}


def test_algorithm_confusion_public_key_as_hmac_secret_is_refused() -> None:
    public_pem = pem(RSA_KEY).encode()
    claims = {"iss": "iss-RS256", "sub": "alice", "exp": int(time.time()) + 300}
    forged = hand_made({"alg": "HS256", "typ": "JWT"}, claims, public_pem)
    # allowed algorithms from the credential (RS256 only)
    refused(policy(), bearer(forged), "bad_algorithm")
    # even when the config lists both families, an HMAC alg never meets a public key
    p = policy(algorithms=["HS256", "RS256"])
    refused(p, bearer(forged), "bad_algorithm")
    assert p.on_request(bearer(sign("RS256"))) is None  # the real RS256 token still passes


def test_alg_none_is_refused_in_every_spelling() -> None:
    p = policy()
    claims = {"iss": "iss-HS256", "sub": "alice", "exp": int(time.time()) + 300}
    for alg in ("none", "None", "NONE", "nOnE"):
        refused(p, bearer(hand_made({"alg": alg}, claims, None)), "bad_algorithm")
    # a none token that still carries an HS256 signature
    refused(p, bearer(hand_made({"alg": "none"}, claims, SECRET.encode())), "bad_algorithm")
    # unsupported algorithm names
    refused(p, bearer(hand_made({"alg": "HS1"}, claims, SECRET.encode())), "bad_algorithm")


def test_alg_not_in_allowed_list_is_refused() -> None:
    p = policy(algorithms=["RS256", "ES256"])
    refused(p, bearer(sign("HS256")), "bad_algorithm")
    refused(p, bearer(sign("RS512")), "bad_algorithm")
    assert p.on_request(bearer(sign("ES256"))) is None
    # the credential says RS256; a token signed RS384 with the same key is not that credential's
    refused(policy(), bearer(sign("RS384", {"iss": "iss-RS256"})), "bad_algorithm")
    # but the config may allow it explicitly for the same RSA key
    assert policy(algorithms=["RS384"]).on_request(bearer(sign("RS384", {"iss": "iss-RS256"}))) is None


# -- claims ----------------------------------------------------------------------------------------


def test_expired_token_is_401_with_bearer_error() -> None:
    p = policy()
    resp = refused(p, bearer(sign("HS256", {"exp": int(time.time()) - 10})), "expired")
    assert header(resp, b"www-authenticate") == (
        b'Bearer realm="flux", error="invalid_token", error_description="token expired"'
    )
    assert json.loads(resp.body) == {"error": "invalid_token", "message": "token expired", "status": 401}


def test_leeway_accepts_slightly_expired_and_early_tokens() -> None:
    now = int(time.time())
    p = policy(leeway="30s")
    assert p.on_request(bearer(sign("HS256", {"exp": now - 10}))) is None
    assert p.on_request(bearer(sign("HS256", {"nbf": now + 10}))) is None
    refused(p, bearer(sign("HS256", {"exp": now - 60})), "expired")
    refused(p, bearer(sign("HS256", {"nbf": now + 60})), "not_yet_valid")


def test_not_yet_valid_token_is_refused() -> None:
    resp = refused(policy(), bearer(sign("ES384", {"nbf": int(time.time()) + 120})), "not_yet_valid")
    assert b'error_description="token not yet valid"' in (header(resp, b"www-authenticate") or b"")


def test_malformed_exp_and_nbf_are_refused() -> None:
    p = policy()
    refused(p, bearer(sign("HS256", {"exp": "tomorrow"})), "malformed")
    refused(p, bearer(sign("HS256", {"nbf": [1]})), "malformed")


def test_audience_checked_when_configured() -> None:
    p = policy(audience=["api", "api2"])
    refused(p, bearer(sign("HS256", {"aud": "other"})), "bad_audience")
    refused(p, bearer(sign("HS256", {"aud": ["x", "y"]})), "bad_audience")
    refused(p, bearer(sign("HS256")), "bad_audience")  # no aud at all
    assert p.on_request(bearer(sign("HS256", {"aud": "api"}))) is None
    assert p.on_request(bearer(sign("HS256", {"aud": ["x", "api2"]}))) is None
    # without an audience in the config, aud is not checked
    assert policy().on_request(bearer(sign("HS256", {"aud": "anything"}))) is None


def test_issuer_checked_when_configured() -> None:
    p = policy(issuer="iss-HS256")
    refused(p, bearer(sign("RS256")), "bad_issuer")  # signed right, by another issuer
    assert p.on_request(bearer(sign("HS256"))) is None


def test_unknown_issuer_without_jwks_is_refused() -> None:
    refused(policy(), bearer(sign("HS256", {"iss": "https://elsewhere"})), "unknown_issuer")
    refused(policy(), bearer(sign("HS256", {"iss": None})), "unknown_issuer")


def test_malformed_tokens_are_refused() -> None:
    p = policy()
    for token in ("abc", "a.b", "a.b.c.d", "####.$$$$.%%%%", b64(b"{") + "." + b64(b"{}") + ".x", "x" * 9000):
        refused(p, make_ctx(headers=[("Authorization", f"Bearer {token}")]), "malformed")
    crit = hand_made({"alg": "HS256", "crit": ["exp"]}, {"iss": "iss-HS256"}, SECRET.encode())
    refused(p, bearer(crit), "malformed")


# -- where the token comes from -------------------------------------------------------------------


def test_missing_token_is_401_with_plain_challenge() -> None:
    p = policy()
    for ctx in (
        make_ctx(),
        make_ctx(headers=[("Authorization", "Basic dXNlcjpwdw==")]),
        make_ctx(headers=[("Authorization", "Bearer")]),
        make_ctx(headers=[("Authorization", "Bearer  ")]),
    ):
        resp = refused(p, ctx, "missing")
        assert header(resp, b"www-authenticate") == b'Bearer realm="flux"'
        assert json.loads(resp.body)["error"] == "unauthorized"
    assert p.denied == {"missing": 4}


def test_token_from_query_cookie_and_custom_header() -> None:
    token = sign("HS256")
    q = policy(**{"from": "query:access_token"})
    ctx = make_ctx(f"/x?a=1&access_token={token}")
    assert q.on_request(ctx) is None and ctx.consumer is not None
    refused(q, bearer(token), "missing")  # the header is not looked at

    c = policy(**{"from": "cookie:session"})
    ctx = make_ctx(headers=[("Cookie", f"theme=dark; session={token}; other=1")])
    assert c.on_request(ctx) is None and ctx.consumer is not None
    refused(c, make_ctx(headers=[("Cookie", "theme=dark")]), "missing")

    h = policy(**{"from": "header:X-Token"})
    for value in (token, f"Bearer {token}", f"bearer   {token}"):
        ctx = make_ctx(headers=[("X-Token", value)])
        assert h.on_request(ctx) is None and ctx.consumer is not None

    a = policy()
    ctx = make_ctx(headers=[("Authorization", token)])  # a bare token, no scheme
    assert a.on_request(ctx) is None


# -- cache and forwarding ---------------------------------------------------------------------------


def test_cache_hit_skips_verification_but_never_outlives_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [time.time()]
    env = PolicyEnv(consumers=ConsumerIndex(CONSUMERS))
    p = JwtPolicy("jwt", JwtConfig(), env, clock=lambda: clock[0])
    token = sign("RS256", {"exp": int(clock[0]) + 30})
    assert p.on_request(bearer(token)) is None

    calls: list[str] = []
    real = jwt_mod._verify
    monkeypatch.setattr(jwt_mod, "_verify", lambda parsed, key: calls.append(parsed.alg) or real(parsed, key))
    ctx = bearer(token)
    assert p.on_request(ctx) is None  # from the cache
    assert calls == []
    assert ctx.consumer is not None and ctx.consumer.name == "alice"
    assert upstream(ctx, "X-Consumer-Name") == "alice"

    clock[0] += 31  # past exp: the cache entry is gone and the token is checked again
    refused(p, bearer(token), "expired")
    assert calls == ["RS256"]


def test_forward_header_carries_claims() -> None:
    p = policy(forward_header="X-JWT-Claims")
    token = sign("EdDSA", {"scope": "read", "name": "Älice"})
    for _ in range(2):  # verified, then cached
        ctx = bearer(token)
        assert p.on_request(ctx) is None
        value = upstream(ctx, "X-JWT-Claims")
        assert value is not None
        claims = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        assert claims["scope"] == "read" and claims["name"] == "Älice" and claims["sub"] == "alice"
        assert b"x-jwt-claims" in ctx.upstream_remove  # a client-sent copy is replaced


def test_client_sent_consumer_headers_are_replaced() -> None:
    ctx = make_ctx(headers=[("Authorization", f"Bearer {sign('HS384')}"), ("X-Consumer-Name", "root")])
    assert policy().on_request(ctx) is None
    assert {b"x-consumer-name", b"x-consumer-groups"} <= ctx.upstream_remove
    assert [v for n, v in ctx.upstream_add if n.lower() == b"x-consumer-name"] == [b"alice"]


def test_pem_public_key_configured_as_hmac_secret_is_unusable() -> None:
    """An admin pasting a public key as an HS256 secret must not let anyone sign with it."""
    public_pem = pem(RSA_KEY)
    cred = pb.Credential(type="jwt", issuer="iss-bad", algorithm="HS256", secret=public_pem)
    env = PolicyEnv(consumers=ConsumerIndex([pb.Consumer(name="eve", credentials=[cred])]))
    forged = hand_made({"alg": "HS256"}, {"iss": "iss-bad", "sub": "eve"}, public_pem.encode())
    refused(JwtPolicy("jwt", JwtConfig(), env), bearer(forged), "bad_algorithm")


# -- JWKS from a real HTTP server -------------------------------------------------------------------


class JwksServer:
    """Serves `doc` (or `status`) at /jwks on 127.0.0.1 from a thread, counting fetches."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {"keys": []}
        self.status = 200
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps(server.doc).encode() if server.status == 200 else b"oops"
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


def jwk(private: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        d = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        d = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        d = OKPAlgorithm.to_jwk(public, as_dict=True)
    d["kid"] = kid
    d["use"] = "sig"
    if alg:
        d["alg"] = alg
    return d


IDP = "https://idp.test"


def idp_token(private: Any, alg: str, kid: str | None, sub: str = "carol", **claims: Any) -> str:
    body = {"iss": IDP, "aud": "api", "sub": sub, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, private, algorithm=alg, headers={"kid": kid} if kid else None)


def test_jwks_keys_rotation_refetch_and_rate_limit(jwks_server: JwksServer) -> None:
    now = [1000.0]  # the node's monotonic clock, moved by hand past the refetch interval
    key_a = RSA_OTHER
    key_b = EC256
    jwks_server.doc = {"keys": [jwk(key_a, "a", "RS256"), {"kty": "oct", "kid": "s", "k": b64(SECRET.encode())}]}

    async def body(env: PolicyEnv) -> None:
        p = policy(env, jwks_url=jwks_server.url, issuer=IDP, audience="api")
        assert p.jwks is not None
        # the first token may arrive before the key set: it waits for the fetch in flight
        ctx = bearer(idp_token(key_a, "RS256", "a"))
        assert await settle(env, p.on_request(ctx)) is None
        assert ctx.consumer is env.consumers.consumers["carol"]  # a known consumer named by sub
        assert jwks_server.fetches == 1

        # known kid: answered synchronously; an unknown sub becomes an anonymous consumer
        ctx = bearer(idp_token(key_a, "RS256", "a", sub="dave"))
        assert p.on_request(ctx) is None
        assert ctx.consumer is not None and ctx.consumer.name == "dave"
        assert ctx.consumer.metadata.get("anonymous") == "true"
        assert upstream(ctx, "X-Consumer-Name") == "dave"

        # the published shared secret ("oct") is ignored: an HS256 token with it is not accepted
        hs = hand_made({"alg": "HS256", "kid": "s"}, {"iss": IDP, "aud": "api", "sub": "carol"}, SECRET.encode())
        resp = await settle(env, p.on_request(bearer(hs)))
        assert isinstance(resp, LocalResponse) and resp.status == 401
        # the RSA key's PEM as an HMAC secret under kid "a": algorithm confusion
        forged = hand_made(
            {"alg": "HS256", "kid": "a"}, {"iss": IDP, "aud": "api", "sub": "carol"}, pem(key_a).encode()
        )
        resp = p.on_request(bearer(forged))
        assert isinstance(resp, LocalResponse) and resp.reason == "jwt_bad_algorithm"

        # rotation: the set now holds only kid "b"; a token signed by b triggers a refetch
        jwks_server.doc = {"keys": [jwk(key_b, "b")]}  # no "alg": ES256 from the P-256 curve
        now[0] += jwks_mod.MIN_REFETCH_INTERVAL
        fetched = jwks_server.fetches
        ctx = bearer(idp_token(key_b, "ES256", "b"))
        pending = p.on_request(ctx)
        assert not isinstance(pending, LocalResponse) and pending is not None
        assert await settle(env, pending) is None
        assert jwks_server.fetches == fetched + 1
        assert ctx.consumer is not None and ctx.consumer.name == "carol"

        # unknown kids right after a fetch: refused at once, no new fetch (rate limit)
        for kid in ("c", "d", "e"):
            resp = p.on_request(bearer(idp_token(key_b, "ES256", kid)))
            assert isinstance(resp, LocalResponse) and resp.reason == "jwt_unknown_key"
        assert jwks_server.fetches == fetched + 1
        # a new token with the rotated-out kid "a" is refused too
        resp = await settle(env, p.on_request(bearer(idp_token(key_a, "RS256", "a", jti="new"))))
        assert isinstance(resp, LocalResponse) and resp.reason == "jwt_unknown_key"

        # once the interval has passed, an unknown kid may fetch again (and is still unknown)
        now[0] += jwks_mod.MIN_REFETCH_INTERVAL
        resp = await settle(env, p.on_request(bearer(idp_token(key_b, "ES256", "zz"))))
        assert isinstance(resp, LocalResponse) and resp.reason == "jwt_unknown_key"
        assert jwks_server.fetches == fetched + 2

        # a failing refresh keeps the last good key set
        jwks_server.status = 500
        now[0] += jwks_mod.MIN_REFETCH_INTERVAL
        resp = await settle(env, p.on_request(bearer(idp_token(key_b, "ES256", "yy"))))
        assert isinstance(resp, LocalResponse) and resp.reason == "jwt_unknown_key"
        assert jwks_server.fetches == fetched + 3
        assert p.jwks.last_error == "HTTP 500"
        ctx = bearer(idp_token(key_b, "ES256", "b", jti="after-failure"))
        assert p.on_request(ctx) is None

        # a token from another issuer does not even look for a key
        resp = p.on_request(bearer(idp_token(key_b, "ES256", "unknown-kid", iss="https://other")))
        assert isinstance(resp, LocalResponse) and resp.reason == "jwt_bad_issuer"

        # claims are still checked for JWKS tokens
        resp = p.on_request(bearer(idp_token(key_b, "ES256", "b", aud="other")))
        assert isinstance(resp, LocalResponse) and resp.reason == "jwt_bad_audience"
        resp = p.on_request(bearer(idp_token(key_b, "ES256", "b", sub=None)))
        assert isinstance(resp, LocalResponse) and resp.reason == "jwt_no_consumer"

    run_node(CONSUMERS, body, clock=lambda: now[0])


def test_jwks_background_refresh_picks_up_new_keys(jwks_server: JwksServer) -> None:
    jwks_server.doc = {"keys": [jwk(ED, "ed-1", "EdDSA")]}

    async def body(env: PolicyEnv) -> None:
        p = policy(env, jwks_url=jwks_server.url, jwks_refresh="1s", consumer_claim="client_id")
        ctx = bearer(idp_token(ED, "EdDSA", "ed-1", client_id="carol"))
        assert await settle(env, p.on_request(ctx)) is None
        assert ctx.consumer is env.consumers.consumers["carol"]
        jwks_server.doc = {"keys": [jwk(ED, "ed-1", "EdDSA"), jwk(EC384, "ec-2")]}
        with trio.fail_after(5):
            while p.jwks is None or p.jwks.get("ec-2") is None:  # noqa: ASYNC110 - polls another thread's effect
                await trio.sleep(0.05)  # poll interval of a condition loop (another thread's effect)
        assert jwks_server.fetches >= 2
        ctx = bearer(idp_token(EC384, "ES384", "ec-2", client_id="erin"))
        assert p.on_request(ctx) is None  # no waiting: the key arrived with the scheduled refresh
        assert ctx.consumer is not None and ctx.consumer.name == "erin"
        # a token without kid is tried against the keys of the set
        assert p.on_request(bearer(idp_token(EC384, "ES384", None, client_id="erin", jti="x"))) is None

        # the cache is shared per URL and closed when no snapshot uses it any more
        cache = p.jwks
        assert policy(env, jwks_url=jwks_server.url).jwks is cache
        env.services.begin()
        env.services.retain()
        assert not cache.may_refetch()

    run_node(CONSUMERS, body)


def test_jwks_unreachable_gives_503_quickly() -> None:
    async def body(env: PolicyEnv) -> None:
        p = policy(env, jwks_url=f"http://127.0.0.1:{closed_port()}/jwks")  # refused
        started = trio.current_time()
        resp = await settle(env, p.on_request(bearer(idp_token(RSA_KEY, "RS256", "a"))))
        assert isinstance(resp, LocalResponse)
        assert resp.status == 503 and resp.reason == "jwt_jwks_unavailable"
        assert trio.current_time() - started < 4
        assert p.jwks is not None and p.jwks.last_error

    run_node(CONSUMERS, body)


def test_bad_jwks_url_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="jwks_url"):
        policy(jwks_url="file:///etc/passwd")
