"""One request's trace at the node: W3C trace context in and out, one SERVER span (sans-IO).

What this module owns
---------------------
`RequestTracer.start(head)` (called by the exchange core for each request when tracing is on)
reads the client's `traceparent` strictly (`fluxcommon.tracing.context`: a malformed one is no
parent, and a new trace starts) and its `tracestate` (passed on unchanged, bounded), asks the
sampler, and makes the node's span id. The `RequestTrace` it returns holds the headers that go
upstream in place of the client's (the node's span id as the parent id, our sampled flag) and
what the core learns on the way: attempts, the time to the first upstream byte, the policy that
answered. `finish()` (from `Exchange.record`) hands a sampled trace to the exporter's queue;
`to_span()` turns it into a `SpanData` later, on the exporter's thread, so the request pays for
a few slot writes and a `deque.append`, not for attributes or protobuf.

The span: kind SERVER, named "{method} {route}" (the route's name; the method alone when no
route matched), with OpenTelemetry's semantic-convention names where they exist
(http.request.method, url.path, url.scheme, server.address, client.address,
network.peer.address, network.protocol.version, user_agent.original,
http.response.status_code, http.request.body.size, error.type) and flux.* for the rest
(listener, route, cluster, endpoint, request_id, attempts, retries, policies,
policy.denied/type/reason, fallback_cluster, consumer, upstream timing in ms, response bytes,
error). Status ERROR on a 5xx.

What it must not do
-------------------
No sockets, no trio, no logging; time comes from the clocks it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fluxcommon.tracing.context import IdSource, parse_traceparent, parse_tracestate
from fluxcommon.tracing.otlp import SERVER, STATUS_ERROR, Attributes, SpanData
from fluxcommon.tracing.sampling import Sampler

if TYPE_CHECKING:
    from dataplane.exchange.core import Exchange
    from dataplane.http.request import RequestHead

TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})  # the client's never go upstream as they came

PolicyKey = tuple[str, str, str, str]


class RequestTracer:
    """Per worker: starts each request's trace; `sink` takes the sampled ones when they finish."""

    __slots__ = ("ids", "sampler", "sink", "wall")

    def __init__(
        self,
        sampler: Sampler,
        sink: Callable[[RequestTrace], None],
        *,
        ids: IdSource | None = None,
        wall: Callable[[], int] = time.time_ns,
    ) -> None:
        self.sampler = sampler
        self.sink = sink
        self.ids = ids or IdSource()
        self.wall = wall

    def start(self, head: RequestHead) -> RequestTrace:
        parent = parse_traceparent(head.get("traceparent"))
        ids = self.ids
        if parent is None:
            trace_id = ids.trace_id()
            sampled = self.sampler.should_sample(None, trace_id)
            return RequestTrace(self, trace_id, ids.span_id(), 0, sampled, "")
        trace_id = parent.trace_id
        sampled = self.sampler.should_sample(parent.sampled, trace_id)
        return RequestTrace(self, trace_id, ids.span_id(), parent.span_id, sampled,
                            parse_tracestate(head.get("tracestate")))  # fmt: skip


class RequestTrace:
    """The trace of one request: its context, the headers for the upstream, and (sampled) its span."""

    __slots__ = (
        "attempts", "count", "denied", "done", "end_ns", "fallback", "hex", "parent_id", "sampled", "span_id",
        "start_ns", "trace_id", "tracer", "tracestate", "ttfb", "up_start", "upstream",
    )  # fmt: skip

    def __init__(
        self, tracer: RequestTracer, trace_id: int, span_id: int, parent_id: int, sampled: bool, tracestate: str
    ) -> None:
        self.tracer = tracer
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.hex = tid = f"{trace_id:032x}"  # the access log's trace_id
        parent = f"00-{tid}-{span_id:016x}-{'01' if sampled else '00'}".encode()
        self.upstream: tuple[tuple[bytes, bytes], ...] = (
            ((b"traceparent", parent), (b"tracestate", tracestate.encode())) if tracestate
            else ((b"traceparent", parent),)
        )  # fmt: skip
        self.start_ns = tracer.wall() if sampled else 0
        self.end_ns = 0
        self.attempts = 0
        self.up_start = 0.0  # perf clock: the first attempt
        self.ttfb = 0.0  # seconds from the last attempt's start to its response head
        self.denied: PolicyKey | None = None
        self.fallback = ""
        self.count: Callable[[PolicyKey], None] | None = None  # the metrics' policy counter
        self.done: tuple[Any, ...] | None = None

    def policy(self, key: PolicyKey) -> None:
        """The policy chain's outcome counter while this request is traced: the metrics' count,
        and the policy that answered (denied, limited) for the span."""
        count = self.count
        if count is not None:
            count(key)
        if key[2] == "denied":
            self.denied = key

    def finish(self, ex: Exchange, status: int, bytes_in: int, bytes_out: int, error: str, elapsed: float) -> None:
        """The request is over: keep what the span needs (plain values) and queue it for export."""
        head = ex.head
        up_total = ex.started + elapsed - self.up_start if self.up_start else 0.0
        self.end_ns = self.start_ns + int(elapsed * 1e9)
        self.done = (
            ex.listener, ex.route, ex.cluster, ex.upstream, head.method, head.path, head.hostname,
            ex.proto, ex.client_ip, head.version, head.get("user-agent"), status, bytes_in, bytes_out,
            error, ex.consumer, ex.rid, ex.chain.policies, up_total,
        )  # fmt: skip
        self.tracer.sink(self)

    def to_span(self) -> SpanData:
        """The span as the exporter sends it (called on the exporter's thread)."""
        assert self.done is not None
        (listener, route, cluster, endpoint, method, path, hostname, proto, client_ip, version, user_agent, status,
         bytes_in, bytes_out, error, consumer, rid, policies, up_total) = self.done  # fmt: skip
        attrs: Attributes = [
            ("http.request.method", method),
            ("url.path", path),
            ("url.scheme", proto.decode("latin-1")),
            ("client.address", client_ip),
            ("network.peer.address", client_ip),
            ("network.protocol.name", "http"),
            ("network.protocol.version", version),
            ("http.response.status_code", status),
            ("flux.listener", listener),
            ("flux.request_id", rid.decode("latin-1")),
            ("flux.attempts", self.attempts),
            ("flux.retries", max(0, self.attempts - 1)),
            ("flux.response.bytes", bytes_out),
        ]
        if hostname:
            attrs.append(("server.address", hostname))
        if user_agent:
            attrs.append(("user_agent.original", user_agent[:512]))
        if bytes_in:
            attrs.append(("http.request.body.size", bytes_in))
        if route:
            attrs.append(("flux.route", route))
        if cluster:
            attrs.append(("flux.cluster", cluster))
        if endpoint:
            attrs.append(("flux.endpoint", endpoint))
        if self.attempts and self.ttfb:
            attrs.append(("flux.upstream.time_to_first_byte_ms", round(self.ttfb * 1000, 3)))
        if up_total:
            attrs.append(("flux.upstream.duration_ms", round(up_total * 1000, 3)))
        if policies:
            attrs.append(("flux.policies", [p.name for p in policies]))
        if self.denied is not None:
            name, kind, _, reason = self.denied
            attrs += [("flux.policy.denied", name), ("flux.policy.type", kind), ("flux.policy.reason", reason)]
        if self.fallback:
            attrs.append(("flux.fallback_cluster", self.fallback))
        if consumer:
            attrs.append(("flux.consumer", consumer))
        if error:
            attrs.append(("flux.error", error[:1000]))
        data = SpanData(
            f"{method} {route}" if route else method, SERVER, self.trace_id, self.span_id, self.parent_id,
            self.start_ns, self.end_ns, attrs, self.tracestate, bool(self.parent_id),
        )  # fmt: skip
        if status >= 500:
            attrs.append(("error.type", str(status)))
            data.status_code = STATUS_ERROR
            data.status_message = error[:1000] or f"HTTP {status}"
        return data
