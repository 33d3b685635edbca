"""Playbook tests of tracing in the exchange core (dataplane.exchange.trace + core): what goes
upstream in place of the client's trace context, what the span holds, and that tracing off
changes nothing. Canned events in, commands out, no sockets."""

from __future__ import annotations

import ast
import pathlib
from typing import Any

from controlplane.snapshot import render_snapshot
from controlplane.spec import ConfigSet
from dataplane.config.compiler import EndpointRegistry, compile_snapshot
from dataplane.exchange import trace as trace_module
from dataplane.exchange.commands import Attempt, Drop, Failure, Replied, Reply, ReplyLocal, Sleep, Stream, Streamed
from dataplane.exchange.core import Exchange
from dataplane.exchange.trace import RequestTrace, RequestTracer
from dataplane.http.request import RequestReader
from dataplane.http.response import ResponseHead
from dataplane.metrics import Metrics
from fluxcommon.tracing.context import IdSource, parse_traceparent
from fluxcommon.tracing.otlp import SERVER, STATUS_ERROR, STATUS_UNSET
from fluxcommon.tracing.sampling import make_sampler

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"

BASE = {
    "listeners": [{"name": "web", "protocol": "http", "port": 8080}],
    "clusters": [
        {"name": "app", "endpoints": [{"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.2", "port": 80}]}
    ],
    "routes": [
        {
            "name": "app",
            "path": "/app",
            "cluster": "app",
            "retry": {"attempts": 1, "retry_on": ["5xx", "connect_failure"]},
        }
    ],
}


class Lines:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def log(self, *args: Any, **kw: Any) -> None:
        self.lines.append({"status": args[8], **kw})


class Services:
    def __init__(self, tracer: RequestTracer | None) -> None:
        self.metrics = Metrics()
        self.access_log = Lines()
        self.tracer = tracer

    def passive_health(self, *args: Any) -> None:
        pass


class FakeResponse:
    def __init__(self, status: int) -> None:
        self.head = ResponseHead()
        self.head.status = status
        self.head.block = b"Content-Type: text/plain"

    def discard(self) -> None:
        pass


def config(doc: dict[str, Any]) -> Any:
    cfg = ConfigSet.from_document(doc)
    stored = [(plural, spec.keep_secrets_from(None)) for plural, spec in cfg.iter_all()]
    snap = render_snapshot(ConfigSet().with_changes(stored, []), 1, "default")
    return compile_snapshot(snap, EndpointRegistry(), lambda *a, **k: object()).config  # type: ignore[arg-type]


class Playbook:
    def __init__(self, raw: bytes, *, sampler: str | None = "parentbased_always_on", doc: dict[str, Any] = BASE):
        self.finished: list[RequestTrace] = []
        self.clock = [100.0]
        self.wall = [1_700_000_000_000_000_000]
        tracer = None
        if sampler is not None:
            tracer = RequestTracer(make_sampler(sampler), self.finished.append, ids=IdSource(seed=1),
                                   wall=lambda: self.wall[0])  # fmt: skip
        self.svc = Services(tracer)
        reader = RequestReader()
        reader.feed(raw)
        self.x = Exchange(self.svc, reader.events[0], b"rid-1", "web", "192.0.2.7", b"http",  # type: ignore[arg-type]
                          monotonic=lambda: self.clock[0], perf=lambda: self.clock[0])  # fmt: skip
        self.gen = self.x.run(config(doc))

    def start(self) -> Any:
        return next(self.gen)

    def send(self, event: Any) -> Any:
        try:
            command = self.gen.send(event)
        except StopIteration:
            return None
        return self.send(None) if type(command) is Sleep else command


def request(*headers: str) -> bytes:
    return ("GET /app/x?secret=1 HTTP/1.1\r\nHost: api.test\r\nUser-Agent: t/1\r\n"
            + "".join(h + "\r\n" for h in headers) + "\r\n").encode()  # fmt: skip


def upstream_trace(attempt: Attempt) -> dict[bytes, bytes]:
    return {n.lower(): v for n, v in attempt.request.add if n.lower() in (b"traceparent", b"tracestate")}


def test_tracing_off_changes_nothing() -> None:
    p = Playbook(request(f"traceparent: {TRACEPARENT}"), sampler=None)
    attempt = p.start()
    assert p.x.trace is None and upstream_trace(attempt) == {}
    assert b"traceparent" not in attempt.request.remove  # the client's goes upstream as any header
    p.send(FakeResponse(200))
    p.send(Streamed(200, 0, 10, True))
    assert p.svc.access_log.lines == [{"status": 200, "consumer": "", "error": "", "client_cert": "", "trace_id": ""}]


def test_the_clients_trace_continues_through_the_node() -> None:
    p = Playbook(request(f"traceparent: {TRACEPARENT}", "tracestate: congo=t61rcWkgMzE"))
    attempt = p.start()
    sent = upstream_trace(attempt)
    parent = parse_traceparent(sent[b"traceparent"])
    assert parent is not None and f"{parent.trace_id:032x}" == CLIENT_TRACE and parent.sampled
    assert f"{parent.span_id:016x}" != CLIENT_PARENT  # the node's own span is the upstream's parent
    assert sent[b"tracestate"] == b"congo=t61rcWkgMzE"
    assert {b"traceparent", b"tracestate"} <= attempt.request.remove  # the client's are replaced
    p.clock[0] += 0.004
    stream = p.send(FakeResponse(200))
    assert type(stream) is Stream
    p.clock[0] += 0.001
    p.send(Streamed(200, 12, 300, True))
    assert p.svc.access_log.lines[0]["trace_id"] == CLIENT_TRACE
    [trace] = p.finished
    span = trace.to_span()
    assert (span.kind, span.name, span.status_code) == (SERVER, "GET app", STATUS_UNSET)
    assert f"{span.parent_span_id:016x}" == CLIENT_PARENT and span.parent_remote
    assert span.span_id == parent.span_id and span.tracestate == "congo=t61rcWkgMzE"
    assert span.end_ns - span.start_ns == 5_000_000
    attrs = dict(span.attributes)
    assert attrs["http.request.method"] == "GET" and attrs["url.path"] == "/app/x"  # no query: it may hold secrets
    assert attrs["http.response.status_code"] == 200 and attrs["server.address"] == "api.test"
    assert attrs["client.address"] == attrs["network.peer.address"] == "192.0.2.7"
    assert attrs["flux.route"] == "app" and attrs["flux.cluster"] == "app"
    assert attrs["flux.endpoint"] in ("10.0.0.1:80", "10.0.0.2:80")
    assert (attrs["flux.attempts"], attrs["flux.retries"]) == (1, 0)
    assert attrs["flux.upstream.time_to_first_byte_ms"] == 4.0 and attrs["flux.upstream.duration_ms"] == 5.0
    assert attrs["user_agent.original"] == "t/1" and attrs["http.request.body.size"] == 12
    assert attrs["flux.request_id"] == "rid-1" and attrs["network.protocol.version"] == "1.1"


def test_a_retry_is_counted_and_each_attempt_carries_the_same_parent() -> None:
    p = Playbook(request())
    first = p.start()
    drop = p.send(FakeResponse(503))  # retry_on 5xx: dropped, then another endpoint
    assert type(drop) is Drop
    second = p.send(None)
    assert type(second) is Attempt and upstream_trace(second) == upstream_trace(first)
    p.send(FakeResponse(200))
    p.send(Streamed(200, 0, 10, True))
    attrs = dict(p.finished[0].to_span().attributes)
    assert (attrs["flux.attempts"], attrs["flux.retries"]) == (2, 1)


def test_a_5xx_is_an_error_span() -> None:
    p = Playbook(request())
    p.start()
    p.send(Failure("connect_failure", 502, "refused 1", retryable=True))
    reply = p.send(Failure("connect_failure", 502, "refused 2", retryable=True))
    assert type(reply) is Reply and reply.status == 502
    p.send(Replied(100, True))
    span = p.finished[0].to_span()
    attrs = dict(span.attributes)
    assert span.status_code == STATUS_ERROR and span.status_message == "refused 2"
    assert attrs["error.type"] == "502" and attrs["flux.attempts"] == 2 and attrs["flux.error"] == "refused 2"


def test_the_policy_that_answered_is_on_the_span() -> None:
    doc = {**BASE, "policies": [{"name": "office", "type": "ip_acl", "config": {"allow": ["10.0.0.0/8"]}}]}
    doc["routes"] = [{**BASE["routes"][0], "policies": ["office"]}]
    p = Playbook(request(), doc=doc)
    answer = p.start()
    assert type(answer) is ReplyLocal and answer.answer.status == 403
    p.send(Replied(100, True))
    attrs = dict(p.finished[0].to_span().attributes)
    assert attrs["flux.policy.denied"] == "office" and attrs["flux.policy.type"] == "ip_acl"
    assert attrs["flux.policies"] == ["office"] and attrs["http.response.status_code"] == 403
    assert "flux.attempts" in attrs and attrs["flux.attempts"] == 0
    assert p.svc.metrics.policies  # the metrics still count the outcome


def test_a_malformed_traceparent_starts_a_new_trace() -> None:
    p = Playbook(request(f"traceparent: {TRACEPARENT.upper()}", "tracestate: congo=t61rcWkgMzE"))
    sent = upstream_trace(p.start())
    parent = parse_traceparent(sent[b"traceparent"])
    assert parent is not None and f"{parent.trace_id:032x}" != CLIENT_TRACE
    assert b"tracestate" not in sent  # no valid parent: its tracestate is not read
    assert p.x.trace is not None and p.x.trace.parent_id == 0


def test_a_parent_that_did_not_sample_is_followed_and_still_propagated() -> None:
    p = Playbook(request(f"traceparent: {TRACEPARENT[:-2]}00"))
    sent = upstream_trace(p.start())
    assert sent[b"traceparent"].endswith(b"-00") and CLIENT_TRACE.encode() in sent[b"traceparent"]
    p.send(FakeResponse(200))
    p.send(Streamed(200, 0, 10, True))
    assert p.finished == [] and p.svc.access_log.lines[0]["trace_id"] == CLIENT_TRACE


def test_no_route_still_has_a_span() -> None:
    raw = b"GET /elsewhere HTTP/1.1\r\nHost: h\r\n\r\n"
    p = Playbook(raw)
    reply = p.start()
    assert type(reply) is Reply and reply.status == 404
    p.send(Replied(50, True))
    span = p.finished[0].to_span()
    assert span.name == "GET" and dict(span.attributes)["http.response.status_code"] == 404


def test_the_trace_module_imports_no_io_library() -> None:
    tree = ast.parse(pathlib.Path(trace_module.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"trio", "socket", "ssl", "grpc", "asyncio", "select", "h2", "httpx", "threading"}
