"""Playbook tests of the exchange core (dataplane.exchange.core): canned events in, commands out,
no sockets. Each test drives `Exchange.run()` step by step and checks what it asks for."""

from __future__ import annotations

import ast
import pathlib
from typing import Any

import pytest

from controlplane.snapshot import render_snapshot
from controlplane.spec import ConfigSet
from dataplane.config.compiler import EndpointRegistry, compile_snapshot
from dataplane.exchange import core as core_module
from dataplane.exchange.commands import (
    Attempt,
    Await,
    Drop,
    Failure,
    Replied,
    Reply,
    ReplyLocal,
    SendContinue,
    Sleep,
    Stream,
    Streamed,
)
from dataplane.exchange.core import Exchange
from dataplane.http.request import RequestReader
from dataplane.http.response import ResponseHead
from dataplane.metrics import Metrics


class Lines:
    """The access log, as lines kept in a list (no file)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def log(self, *args: Any, **kw: Any) -> None:
        self.lines.append({"status": args[8], "route": args[5], **kw})


class Services:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.access_log = Lines()
        self.tracer: Any = None  # tracing off (tests/dataplane/exchange/test_exchange_trace.py turns it on)
        self.health: list[tuple[Any, ...]] = []

    def passive_health(self, cluster: Any, ep: Any, ok: bool, status: int = 0) -> None:
        self.health.append((cluster.name, ep.key, ok, status) if status else (cluster.name, ep.key, ok))


class FakeResponse:
    """What an upstream codec hands back: a head, and a flag when it was dropped."""

    def __init__(self, status: int) -> None:
        self.head = ResponseHead()
        self.head.status = status
        self.head.block = b"Content-Type: text/plain"
        self.dropped = False

    def discard(self) -> None:
        self.dropped = True


def config(doc: dict[str, Any]) -> Any:
    cfg = ConfigSet.from_document(doc)
    stored = [(plural, spec.keep_secrets_from(None)) for plural, spec in cfg.iter_all()]
    snap = render_snapshot(ConfigSet().with_changes(stored, []), 1, "default")
    return compile_snapshot(snap, EndpointRegistry(), lambda *a, **k: object()).config  # type: ignore[arg-type]


def request(raw: bytes) -> Any:
    reader = RequestReader()
    reader.feed(raw)
    return reader.events[0]


TWO_ENDPOINTS = [{"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.2", "port": 80}]
RETRY = {"attempts": 1, "retry_on": ["5xx", "connect_failure"]}
BASE = {
    "listeners": [{"name": "web", "protocol": "http", "port": 8080}],
    "clusters": [{"name": "app", "endpoints": TWO_ENDPOINTS}],
    "routes": [{"name": "app", "path": "/app", "cluster": "app", "retry": RETRY}],
}


class Playbook:
    def __init__(self, doc: dict[str, Any], raw: bytes) -> None:
        self.svc = Services()
        self.clock = [100.0]
        self.x = Exchange(self.svc, request(raw), b"rid-1", "web", "192.0.2.7", b"http",
                          monotonic=lambda: self.clock[0], perf=lambda: self.clock[0])  # fmt: skip
        self.gen = self.x.run(config(doc))
        self.result: bool | None = None

    def start(self) -> Any:
        return next(self.gen)

    def send(self, event: Any) -> Any:
        try:
            return self.gen.send(event)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def past_backoff(self, event: Any) -> Any:
        """`send`, and past the retry back-off's Sleep if one comes."""
        command = self.send(event)
        return self.send(None) if type(command) is Sleep else command


def test_no_route_is_a_404_recorded_once() -> None:
    p = Playbook(BASE, b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n")
    reply = p.start()
    assert type(reply) is Reply and reply.status == 404 and "no route" in reply.message
    assert p.send(Replied(120, True)) is None and p.result is True
    assert p.svc.metrics.requests == {("web", "", "", 404): 1}
    assert [line["status"] for line in p.svc.access_log.lines] == [404]


def test_a_plain_request_attempts_then_streams() -> None:
    p = Playbook(BASE, b"GET /app/x HTTP/1.1\r\nHost: h\r\n\r\n")
    attempt = p.start()
    assert type(attempt) is Attempt and attempt.cluster.name == "app" and not attempt.fresh
    assert attempt.request.target == b"/app/x" and attempt.retry_on == frozenset({"5xx", "connect_failure"})
    assert attempt.ep.active == 1 and attempt.cluster.state.in_flight == 1  # counted while in flight
    stream = p.send(FakeResponse(200))
    assert type(stream) is Stream and stream.head.status == 200 and not stream.upgrade
    assert stream.add[0] == (b"X-Request-Id", b"rid-1")
    assert p.send(Streamed(200, 0, 42, True)) is None and p.result is True
    assert attempt.ep.active == 0 and attempt.cluster.state.in_flight == 0
    assert p.svc.metrics.requests == {("web", "app", "app", 200): 1}
    assert p.svc.health == []  # a success with no failure streak: not worth a call


def test_a_connect_failure_is_retried_on_another_endpoint() -> None:
    p = Playbook(BASE, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
    first = p.start()
    again = p.past_backoff(Failure("connect_failure", 502, "refused", retryable=True))
    assert type(again) is Attempt and again.fresh and again.ep is not first.ep
    assert again.retry_on == ()  # the last attempt: no 5xx is dropped
    assert p.svc.health == [("app", first.ep.key, False)]
    assert p.svc.metrics.upstream_errors == {("app", "connect_failure"): 1}
    assert p.svc.metrics.counters["retries"] == 1
    stream = p.send(FakeResponse(200))
    assert type(stream) is Stream


def test_a_5xx_the_route_retries_is_dropped_then_the_last_answer_passes() -> None:
    p = Playbook(BASE, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
    p.start()
    first = FakeResponse(503)
    drop = p.send(first)
    assert type(drop) is Drop and drop.response is first
    second = p.past_backoff(None)
    assert type(second) is Attempt
    stream = p.send(FakeResponse(503))  # the last attempt's answer goes to the client as it is
    assert type(stream) is Stream and stream.head.status == 503


def test_every_attempt_failing_answers_the_last_failure() -> None:
    p = Playbook(BASE, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
    p.start()
    p.past_backoff(Failure("connect_failure", 502, "refused 1", retryable=True))
    reply = p.send(Failure("reset", 502, "reset 2", retryable=True))
    assert type(reply) is Reply and reply.status == 502 and reply.message == "reset 2"
    p.send(Replied(10, False))
    assert p.result is False


def test_a_failure_that_is_not_retryable_is_answered_at_once() -> None:
    p = Playbook(BASE, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
    p.start()
    reply = p.send(Failure("protocol", 502, "bad response", retryable=False))
    assert type(reply) is Reply and reply.status == 502


def test_pool_saturation_is_503_and_never_an_ejection() -> None:
    p = Playbook(BASE, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
    p.start()
    reply = p.send(Failure("overflow", 503, "all busy", retryable=True))
    assert type(reply) is Reply and reply.status == 503  # overflow is not in retry_on
    assert p.svc.health == []


def test_an_unsolicited_101_is_dropped_and_502() -> None:
    p = Playbook(BASE, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
    p.start()
    response = FakeResponse(101)
    assert type(p.send(response)) is Drop
    reply = p.send(None)
    assert type(reply) is Reply and reply.status == 502 and "unasked" in reply.message


def test_an_asked_for_upgrade_streams_as_an_upgrade() -> None:
    raw = b"GET /app HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    p = Playbook(BASE, raw)
    attempt = p.start()
    assert attempt.request.upgrade == "websocket"
    assert (b"Upgrade", b"websocket") in attempt.request.add
    stream = p.send(FakeResponse(101))
    assert type(stream) is Stream and stream.upgrade


def test_an_h2c_upgrade_is_declined_not_sent_upstream() -> None:
    """`curl --http2 http://...` asks `Upgrade: h2c`; sent upstream, a lax server's 101 (websocket)
    went back to a client that wanted HTTP/2. The node serves it as HTTP/1.1 (RFC 9110 7.8: a
    server may ignore Upgrade), as nginx does."""
    raw = (b"GET /app HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")  # fmt: skip
    p = Playbook(BASE, raw)
    attempt = p.start()
    assert attempt.request.upgrade is None
    assert not any(name.lower() == b"upgrade" for name, _ in attempt.request.add)
    assert type(p.send(FakeResponse(200))) is Stream


def test_an_h2c_upgrade_with_a_body_is_declined_too() -> None:
    """The reader reads an h2c upgrade's body itself (tests/dataplane/http/test_request_reader.py);
    the exchange never sends `Upgrade: h2c` upstream, where an h2c backend would take the rest of
    the connection past routing and policies."""
    raw = b"POST /app HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\r\nabc"
    p = Playbook(BASE, raw)
    attempt = p.start()
    assert attempt.request.upgrade is None
    assert not any(name.lower() == b"upgrade" for name, _ in attempt.request.add)


def test_expect_100_continue_is_asked_before_the_attempt() -> None:
    p = Playbook(BASE, b"POST /app HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert type(p.start()) is SendContinue
    assert type(p.send(None)) is Attempt


def test_backoff_sleeps_between_attempts() -> None:
    retry = {"attempts": 1, "retry_on": ["connect_failure"], "backoff": "50ms"}
    doc = {**BASE, "routes": [{"name": "app", "path": "/app", "cluster": "app", "retry": retry}]}
    p = Playbook(doc, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
    p.start()
    sleep = p.send(Failure("connect_failure", 502, "refused", retryable=True))
    assert type(sleep) is Sleep and sleep.seconds == pytest.approx(0.05)
    assert type(p.send(None)) is Attempt


def test_per_try_timeout_sets_the_attempt_deadline() -> None:
    doc = {**BASE, "routes": [{"name": "app", "path": "/app", "cluster": "app", "timeout": "10s",
                               "retry": {"attempts": 1, "per_try_timeout": "2s"}}]}  # fmt: skip
    p = Playbook(doc, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
    attempt = p.start()
    assert attempt.deadline == pytest.approx(102.0) and p.x.deadline == pytest.approx(110.0)


def test_a_policy_answer_is_a_local_reply() -> None:
    doc = {**BASE, "policies": [{"name": "deny", "type": "ip_acl", "config": {"deny": ["192.0.2.0/24"]}}]}
    doc["routes"] = [{**BASE["routes"][0], "policies": ["deny"]}]
    p = Playbook(doc, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
    local = p.start()
    assert type(local) is ReplyLocal and local.answer.status == 403
    p.send(Replied(90, True))
    assert p.svc.metrics.requests == {("web", "app", "app", 403): 1}


def test_a_policy_that_needs_io_is_awaited() -> None:
    limit = {"rate": 1, "per": "1s", "algorithm": "leaky_bucket", "leaky_mode": "queue"}
    doc = {**BASE, "policies": [{"name": "rl", "type": "rate_limit", "config": limit}]}
    doc["routes"] = [{**BASE["routes"][0], "policies": ["rl"]}]
    p = Playbook(doc, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
    first = p.start()
    if type(first) is Await:  # a queueing limiter answers with a coroutine
        first.awaitable.close()
        assert type(p.send(None)) is Attempt
    else:
        assert type(first) is Attempt


def test_response_rewrite_changes_what_is_streamed() -> None:
    rewrite = {"status": 299, "headers": {"remove": ["Content-Type"], "set": {"X-A": "1"}}}
    doc = {**BASE, "policies": [{"name": "rw", "type": "response_rewrite", "config": rewrite}]}
    doc["routes"] = [{**BASE["routes"][0], "policies": ["rw"]}]
    p = Playbook(doc, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
    p.start()
    stream = p.send(FakeResponse(200))
    assert stream.head.status == 299 and b"Content-Type" not in stream.head.block
    assert (b"X-A", b"1") in stream.add


def test_prefix_rewrite_and_host_for_a_request_without_host() -> None:
    doc = {**BASE, "routes": [{"name": "app", "path": "/app", "cluster": "app", "prefix_rewrite": "/v2"}]}
    p = Playbook(doc, b"GET /app/x?q=1 HTTP/1.0\r\n\r\n")
    attempt = p.start()
    assert attempt.request.target == b"/v2/x?q=1"
    assert attempt.request.host == attempt.ep.key.encode()  # HTTP/1.0 without Host: the endpoint's


def test_every_5xx_answer_reaches_passive_health_with_its_status() -> None:
    """consecutive_5xx counts answers of any 5xx; ok is False only for a gateway failure (502-504)."""
    doc = {**BASE, "routes": [{"name": "app", "path": "/app", "cluster": "app"}]}
    for status, ok in ((500, True), (503, False)):
        p = Playbook(doc, b"GET /app HTTP/1.1\r\nHost: h\r\n\r\n")
        attempt = p.start()
        p.send(FakeResponse(status))
        p.send(Streamed(status, 0, 10, True))
        assert p.svc.health == [("app", attempt.ep.key, ok, status)]


def test_the_core_imports_no_io_library() -> None:
    tree = ast.parse(pathlib.Path(core_module.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"trio", "socket", "ssl", "grpc", "asyncio", "select", "h2"}
