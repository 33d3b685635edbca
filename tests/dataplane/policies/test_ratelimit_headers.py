"""RateLimit-* header fields as the IETF draft has them, consistently (issue 14): Reset and
Retry-After name one moment on a refusal, Reset never exceeds a sliding window, admitted
answers carry the fields too, and the message says the duration as it was written."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dataplane.http.request import RequestHead
from dataplane.policies.base import LocalResponse, PolicyEnv, RequestContext
from dataplane.policies.ratelimit import RateLimitPolicy
from fluxcommon.policy_config import parse_policy_config


def _ctx(now: float) -> RequestContext:
    return RequestContext(RequestHead(), "10.0.0.1", "main", "orders", now)


def _policy(name: str = "rl", **kw: Any) -> RateLimitPolicy:
    return RateLimitPolicy(name, parse_policy_config("rate_limit", kw), PolicyEnv())  # type: ignore[arg-type]


def _fields(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in pairs if k.lower().startswith((b"ratelimit", b"retry-after"))}


def _admit(p: RateLimitPolicy, now: float) -> dict[str, str]:
    ctx = _ctx(now)
    assert p.on_request(ctx) is None
    return _fields(ctx.response_add)


def _refuse(p: RateLimitPolicy, now: float) -> tuple[LocalResponse, dict[str, str]]:
    ctx = _ctx(now)
    resp = p.on_request(ctx)
    assert isinstance(resp, LocalResponse)
    return resp, _fields([*resp.headers, *ctx.response_add])


def test_token_bucket_refusal_reset_is_retry_after() -> None:
    p = _policy(algorithm="token_bucket", rate=5, per="1m")
    for i in range(5):
        assert _admit(p, 100.0)["RateLimit-Remaining"] == str(4 - i)
    resp, h = _refuse(p, 100.0)
    assert h["Retry-After"] == "12" and h["RateLimit-Reset"] == "12"
    assert h["RateLimit-Remaining"] == "0" and h["RateLimit-Limit"] == "5" and h["RateLimit-Policy"] == "5;w=60"
    assert json.loads(resp.body)["message"] == "rate limit exceeded: 5 per 1m"


@pytest.mark.parametrize("mode", ["counter", "log"])
def test_sliding_window_reset_never_exceeds_the_window(mode: str) -> None:
    p = _policy(algorithm="sliding_window", sliding_mode=mode, rate=100, per="1m")
    resets = [int(_admit(p, 61.0 + i * 0.01)["RateLimit-Reset"]) for i in range(100)]
    assert max(resets) <= 60
    _, h = _refuse(p, 62.0)
    assert 1 <= int(h["RateLimit-Reset"]) <= 60 and h["RateLimit-Reset"] == h["Retry-After"]


def test_admitted_answers_carry_the_fields() -> None:
    p = _policy(algorithm="fixed_window", rate=3, per="10s")
    first = _admit(p, 21.0)
    assert first == {
        "RateLimit-Limit": "3", "RateLimit-Remaining": "2", "RateLimit-Reset": "9", "RateLimit-Policy": "3;w=10",
    }  # fmt: skip
    assert _admit(p, 25.5)["RateLimit-Reset"] == "5"


def test_the_policy_with_the_fewest_remaining_is_shown_and_a_refusal_wins() -> None:
    wide, narrow = _policy("wide", rate=100, per="1m"), _policy("narrow", rate=2, per="1m")
    ctx = _ctx(10.0)
    assert narrow.on_request(ctx) is None and wide.on_request(ctx) is None
    h = _fields(ctx.response_add)
    assert (h["RateLimit-Limit"], h["RateLimit-Remaining"]) == ("2", "1")
    assert len(ctx.response_add) == 4  # one set of fields, not two

    narrow.on_request(_ctx(10.0))  # its last one
    ctx = _ctx(10.0)
    assert wide.on_request(ctx) is None
    resp = narrow.on_request(ctx)
    assert isinstance(resp, LocalResponse)
    fields = [*resp.headers, *ctx.response_add]  # what the node sends for a refusal
    assert [k for k, _ in fields].count(b"RateLimit-Remaining") == 1
    assert _fields(fields)["RateLimit-Limit"] == "2"


def test_headers_false_keeps_admitted_answers_bare() -> None:
    p = _policy(rate=1, per="1s", headers=False)
    assert _admit(p, 1.0) == {}
    _, h = _refuse(p, 1.0)
    assert h == {"Retry-After": "1"}


def test_a_window_of_no_whole_seconds_is_given_per_second() -> None:
    assert _admit(_policy(rate=5, per="500ms"), 1.0)["RateLimit-Policy"] == "10;w=1"
    assert _admit(_policy(rate=10, per="1s", burst=20), 1.0)["RateLimit-Policy"] == "10;w=1;burst=20"
