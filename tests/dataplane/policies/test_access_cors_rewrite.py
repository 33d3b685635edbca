"""Access control, CORS, rewrite and circuit-breaker policies, and the chain that runs them."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.http.request import RequestHead, RequestReader
from dataplane.policies.access import ApiAclPolicy, DomainAclPolicy, IpAclPolicy, UaFilterPolicy
from dataplane.policies.base import Consumer, LocalResponse, PolicyEnv, RequestContext, SharedServices
from dataplane.policies.breaker import CircuitBreakerPolicy
from dataplane.policies.build import PolicyBuildError, build_policies
from dataplane.policies.chain import PolicyChain
from dataplane.policies.cors import CorsPolicy
from dataplane.policies.rewrite import RedirectPolicy, RequestRewritePolicy, ResponseRewritePolicy
from flux.v1 import config_pb2 as pb
from fluxcommon.policy_config import parse_policy_config


def request(raw: str) -> RequestHead:
    reader = RequestReader()
    reader.feed(raw.replace("\n", "\r\n").encode() + b"\r\n")
    head = reader.events[0]
    assert isinstance(head, RequestHead)
    return head


def ctx_for(
    headers: dict[str, str] | None = None, *, method: str = "GET", path: str = "/x", ip: str = "10.0.0.1"
) -> RequestContext:
    lines = [f"{method} {path} HTTP/1.1", "Host: api.example.com"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return RequestContext(request("\n".join(lines) + "\n"), ip, "web", "r", 100.0)


def build(kind: str, config: dict[str, Any], env: PolicyEnv | None = None) -> Any:
    classes = {
        "ip_acl": IpAclPolicy, "ua_filter": UaFilterPolicy, "domain_acl": DomainAclPolicy, "api_acl": ApiAclPolicy,
        "cors": CorsPolicy, "request_rewrite": RequestRewritePolicy, "response_rewrite": ResponseRewritePolicy,
        "redirect": RedirectPolicy, "circuit_breaker": CircuitBreakerPolicy,
    }  # fmt: skip
    return classes[kind]("p", parse_policy_config(kind, config), env or PolicyEnv())


# -- ip_acl -----------------------------------------------------------------------------------


def test_ip_acl_allow_and_deny_lists() -> None:
    policy = build("ip_acl", {"allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.9.0.0/16"]})
    assert policy.on_request(ctx_for(ip="10.1.2.3")) is None
    assert policy.on_request(ctx_for(ip="2001:db8::1")) is None
    denied = policy.on_request(ctx_for(ip="10.9.1.1"))
    assert isinstance(denied, LocalResponse) and denied.status == 403
    assert policy.on_request(ctx_for(ip="192.168.1.1")).status == 403
    assert policy.on_request(ctx_for(ip="::ffff:10.1.1.1")) is None  # v4-mapped v6 peer


def test_ip_acl_uses_forwarded_for_only_behind_trusted_proxies() -> None:
    policy = build("ip_acl", {"deny": ["203.0.113.0/24"], "trusted_proxies": ["10.0.0.0/8"]})
    # behind a trusted proxy: the rightmost untrusted hop decides
    ctx = ctx_for({"X-Forwarded-For": "203.0.113.7, 10.2.2.2"}, ip="10.1.1.1")
    assert policy.on_request(ctx).status == 403
    ctx = ctx_for({"X-Forwarded-For": "198.51.100.9"}, ip="10.1.1.1")
    assert policy.on_request(ctx) is None and ctx.vars["client_ip"] == "198.51.100.9"
    # a spoofed header from an untrusted peer is ignored
    ctx = ctx_for({"X-Forwarded-For": "198.51.100.9"}, ip="203.0.113.5")
    assert policy.on_request(ctx).status == 403


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4), st.integers(8, 30))
def test_ip_acl_matches_ipaddress_semantics(addr: ipaddress.IPv4Address, prefix: int) -> None:
    net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    policy = build("ip_acl", {"allow": [str(net)]})
    inside = policy.on_request(ctx_for(ip=str(addr)))
    assert inside is None
    outside = net.broadcast_address + 1 if int(net.broadcast_address) < 2**32 - 1 else net.network_address - 1
    assert policy.on_request(ctx_for(ip=str(outside))).status == 403


# -- ua_filter, domain_acl, api_acl -------------------------------------------------------------


def test_ua_filter() -> None:
    policy = build("ua_filter", {"deny": ["(?i)curl", "bot"]})
    assert policy.on_request(ctx_for({"User-Agent": "Mozilla/5.0"})) is None
    assert policy.on_request(ctx_for({"User-Agent": "curl/8.0"})).status == 403
    allow = build("ua_filter", {"allow": ["^MyApp/"]})
    assert allow.on_request(ctx_for({"User-Agent": "MyApp/2.1"})) is None
    assert allow.on_request(ctx_for({"User-Agent": "Other"})).status == 403
    assert allow.on_request(ctx_for()).status == 403  # no User-Agent at all


def test_domain_acl_hosts_and_referers() -> None:
    policy = build(
        "domain_acl", {"allow_hosts": ["api.example.com", "*.internal.example"], "allow_referers": ["*.example.com"]}
    )
    assert policy.on_request(ctx_for()) is None
    assert policy.on_request(ctx_for({"Referer": "https://www.example.com/page"})) is None
    assert policy.on_request(ctx_for({"Origin": "https://evil.test"})).status == 403
    other = RequestContext(request("GET / HTTP/1.1\nHost: other.test:8080\n"), "1.1.1.1", "web", "r", 0.0)
    assert policy.on_request(other).status == 403
    inner = RequestContext(request("GET / HTTP/1.1\nHost: a.internal.example\n"), "1.1.1.1", "web", "r", 0.0)
    assert policy.on_request(inner) is None


def test_api_acl_consumers_groups_methods() -> None:
    policy = build("api_acl", {"allow_groups": ["partners"], "deny_consumers": ["mallory"], "methods": ["GET"]})
    ctx = ctx_for()
    assert policy.on_request(ctx).status == 401  # no consumer: an auth policy must come first
    ctx.consumer = Consumer("alice", frozenset({"partners"}))
    assert policy.on_request(ctx) is None
    ctx.consumer = Consumer("bob", frozenset({"staff"}))
    assert policy.on_request(ctx).status == 403
    ctx.consumer = Consumer("mallory", frozenset({"partners"}))
    assert policy.on_request(ctx).status == 403
    post = ctx_for(method="POST")
    post.consumer = Consumer("alice", frozenset({"partners"}))
    assert policy.on_request(post).status == 403


# -- CORS --------------------------------------------------------------------------------------


def test_cors_preflight_answered_at_the_node() -> None:
    policy = build(
        "cors",
        {"allow_origins": ["https://app.example.com", "https://*.example.org", "~^https://[a-z]+\\.test$"],
         "allow_methods": ["GET", "POST"], "allow_credentials": True, "max_age": "10m",
         "expose_headers": ["X-Total"]},
    )  # fmt: skip
    pre = ctx_for({"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "content-type"}, method="OPTIONS")  # fmt: skip
    answer = policy.on_request(pre)
    assert isinstance(answer, LocalResponse) and answer.status == 204
    headers = dict(answer.headers)
    assert headers[b"Access-Control-Allow-Origin"] == b"https://app.example.com"
    assert headers[b"Access-Control-Allow-Methods"] == b"GET, POST"
    assert headers[b"Access-Control-Allow-Headers"] == b"content-type"
    assert headers[b"Access-Control-Allow-Credentials"] == b"true"
    assert headers[b"Access-Control-Max-Age"] == b"600"
    assert b"Origin" in headers[b"Vary"]
    bad_method = ctx_for(
        {"Origin": "https://app.example.com", "Access-Control-Request-Method": "DELETE"}, method="OPTIONS"
    )
    assert policy.on_request(bad_method).status == 403
    bad_origin = ctx_for({"Origin": "https://evil.test.com", "Access-Control-Request-Method": "GET"}, method="OPTIONS")
    assert policy.on_request(bad_origin).status == 403
    for origin in ("https://x.example.org", "https://abc.test"):
        ok = ctx_for({"Origin": origin, "Access-Control-Request-Method": "GET"}, method="OPTIONS")
        assert policy.on_request(ok).status == 204, origin


def test_cors_actual_request_headers_and_vary() -> None:
    policy = build("cors", {"allow_origins": ["https://app.example.com"], "expose_headers": ["X-Total"]})
    ctx = ctx_for({"Origin": "https://app.example.com"})
    assert policy.on_request(ctx) is None
    added = dict(ctx.response_add)
    assert added[b"Access-Control-Allow-Origin"] == b"https://app.example.com"
    assert added[b"Access-Control-Expose-Headers"] == b"X-Total"
    assert added[b"Vary"] == b"Origin"
    other = ctx_for({"Origin": "https://other.test"})
    assert policy.on_request(other) is None  # not blocked server-side, just not labelled
    assert b"Access-Control-Allow-Origin" not in dict(other.response_add)
    plain = ctx_for()
    assert policy.on_request(plain) is None and not plain.response_add
    star = build("cors", {"allow_origins": ["*"]})
    ctx = ctx_for({"Origin": "https://any.test"})
    star.on_request(ctx)
    assert dict(ctx.response_add)[b"Access-Control-Allow-Origin"] == b"*"


# -- rewrites ----------------------------------------------------------------------------------


def test_request_rewrite_headers_path_host() -> None:
    policy = build(
        "request_rewrite",
        {"headers": {"add": {"X-Added": "1"}, "set": {"X-Env": "prod"}, "remove": ["Cookie"]},
         "path_regex": ["^/v1/(.*)$", "/api/\\1"], "host": "internal.svc"},
    )  # fmt: skip
    ctx = ctx_for({"X-Env": "dev", "Cookie": "a=b"}, path="/v1/orders")
    assert policy.on_request(ctx) is None
    assert ctx.path == "/api/orders" and ctx.host == b"internal.svc"
    assert {b"cookie", b"x-env"} <= ctx.upstream_remove
    assert (b"X-Added", b"1") in ctx.upstream_add and (b"X-Env", b"prod") in ctx.upstream_add


def test_response_rewrite_and_redirect() -> None:
    rewrite = build(
        "response_rewrite", {"headers": {"set": {"Server": "flux"}, "remove": ["X-Powered-By"]}, "status": 200}
    )
    ctx = ctx_for()
    rewrite.on_request(ctx)
    assert b"x-powered-by" in ctx.response_remove and (b"Server", b"flux") in ctx.response_add
    assert ctx.vars["status"] == 200
    redirect = build("redirect", {"to": "https://new.example.com", "status": 301, "keep_path": True})
    answer = redirect.on_request(ctx_for(path="/a/b?c=1"))
    assert answer.status == 301 and dict(answer.headers)[b"Location"] == b"https://new.example.com/a/b?c=1"


# -- circuit breaker policy --------------------------------------------------------------------


def test_circuit_breaker_policy_fails_fast_then_recovers() -> None:
    env = PolicyEnv(services=SharedServices())
    fallback = {"status": 503, "body": "degraded", "headers": {"Content-Type": "text/plain"}}
    base = build(
        "circuit_breaker",
        {"failure_threshold": 2, "open_for": "50ms", "half_open_requests": 1, "fallback": fallback},
        env,
    )
    policy = base.scoped("route:r")
    for _ in range(2):
        ctx = ctx_for()
        assert policy.on_request(ctx) is None
        policy.on_response(ctx, 502)
    answer = policy.on_request(ctx_for())
    assert isinstance(answer, LocalResponse) and answer.status == 503 and answer.body == b"degraded"
    assert answer.content_type == b"text/plain"
    # the same scope from a rebuilt policy shares the breaker (state survives config pushes)
    assert base.scoped("route:r").breaker is policy.breaker
    assert base.scoped("route:other").breaker is not policy.breaker


def test_circuit_breaker_fallback_cluster_and_abort() -> None:
    env = PolicyEnv(services=SharedServices())
    policy = build("circuit_breaker", {"failure_threshold": 1, "open_for": "10s", "fallback": {"cluster": "backup"}},
                   env).scoped("cluster:app")  # fmt: skip
    ctx = ctx_for()
    assert policy.on_request(ctx) is None
    policy.on_abort(ctx)  # client went away: no outcome, permit released
    ctx = ctx_for()
    policy.on_request(ctx)
    policy.on_response(ctx, 500)
    moved = ctx_for()
    assert policy.on_request(moved) is None and moved.vars["cluster"] == "backup"


# -- the chain ---------------------------------------------------------------------------------


def test_chain_runs_in_order_and_stops_at_the_first_answer() -> None:
    seen: list[str] = []
    counts: dict[tuple[str, str, str, str], int] = {}

    class Recorder(RequestRewritePolicy):
        def on_request(self, ctx: RequestContext) -> Any:
            seen.append(self.name)
            return None

    config = parse_policy_config("request_rewrite", {})
    first, second = Recorder("first", config, PolicyEnv()), Recorder("second", config, PolicyEnv())
    deny = build("ua_filter", {"deny": ["x"]})
    chain = PolicyChain([first, deny, second])
    answer = chain.run(ctx_for({"User-Agent": "x"}), lambda k: counts.__setitem__(k, counts.get(k, 0) + 1))
    assert isinstance(answer, LocalResponse) and seen == ["first"]
    assert counts == {("p", "ua_filter", "denied", "user_agent_denied"): 1}
    assert chain.run(ctx_for({"User-Agent": "y"}), lambda k: counts.__setitem__(k, counts.get(k, 0) + 1)) is None
    assert seen == ["first", "first", "second"]
    assert counts[("first", "request_rewrite", "allowed", "")] == 1


def test_build_policies_names_the_policy_at_fault() -> None:
    good = pb.Policy(name="cors", type="cors")
    bad = pb.Policy(name="rl", type="rate_limit")
    bad.config.update({"rate": -1})
    with pytest.raises(PolicyBuildError, match=r"policy .rl.*rate"):
        build_policies([good, bad], PolicyEnv())
    unknown = pb.Policy(name="x", type="nope")
    with pytest.raises(PolicyBuildError, match="unknown type"):
        build_policies([unknown], PolicyEnv())
    built = build_policies([good], PolicyEnv())
    assert isinstance(built["cors"], CorsPolicy)


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        # control characters are refused by the text rule of every config string (fluxcommon.textfields)
        ({"headers": {"set": {"X-A\n": "v"}}}, "headers.set", "control character \\(LF\\)"),
        ({"headers": {"set": {"X-A:": "v"}}}, "headers.set", "not a header name"),
        ({"headers": {"add": {"X-A": "5 €"}}}, "headers.add", "printable latin-1"),
        ({"headers": {"set": {"X-A": "a\r\nX-Injected: 1"}}}, "headers.set", "control character \\(CR\\)"),
        ({"headers": {"remove": ["bad name"]}}, "headers.remove", "not a header name"),
        ({"host": "a..b"}, "host", "not a host name"),
        ({"host": "api.internal\r\nX: 1"}, "host", "control character"),
        ({"host": "api.internal X"}, "host", "not a host"),
    ],
)
def test_rewrite_config_refuses_what_could_not_be_sent(config: dict[str, Any], field: str, message: str) -> None:
    """A header or host the node could not put on the wire is refused at write time, field named,
    instead of failing every request on the route."""
    with pytest.raises(ValueError, match=message) as info:
        parse_policy_config("request_rewrite", config)
    assert field in str(info.value)


def test_rate_limit_header_key_is_matched_whole() -> None:
    with pytest.raises(ValueError, match="key"):
        parse_policy_config("rate_limit", {"rate": 10, "per": "1s", "key": "header:X\n"})
