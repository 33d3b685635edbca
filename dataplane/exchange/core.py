"""The exchange core: one request's decisions, written once for every wire.

What this module owns
---------------------
Routing, the policy chain, the cluster (weighted split, a breaker's fallback, the cluster's
concurrency limit), the endpoint (affinity cookie, grayscale version, zone, hash key, another
endpoint on a retry), what goes upstream (target after rewrites, Host, headers added and
dropped), attempts with retries, back-off and per-try deadlines, failures mapped to statuses,
passive health, response policies, and the one place where a finished request is recorded
(metrics, the access log and, when tracing is on, its span: `Exchange.record`).

Tracing (`dataplane.exchange.trace`) costs one attribute check per request when it is off
(`svc.tracer` is None, and `trace` stays None). When on, the client's `traceparent` and
`tracestate` are replaced upstream by the node's (its span id as the parent id).

How it runs
-----------
`Exchange.run()` is a generator: it yields commands (`dataplane.exchange.commands`) and
receives events, and returns whether the client connection may be kept. A front end
(HTTP/1.1 or HTTP/2) drives it:

    gen = exchange.run()
    event = None
    while True:
        try:
            command = gen.send(event)
        except StopIteration as stop:
            keep = stop.value
            break
        event = await carry_out(command)

The front end does all I/O (its socket, the upstream codec of the cluster's protocol) and
owns timeouts of its connection; the core never touches a socket or awaits. Playbook tests
(tests/dataplane/exchange/) drive it with canned events and check the commands.

What it must not do
-------------------
No sockets, no awaiting, no trio; time comes from the clocks it is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from dataplane.exchange.commands import (
    SEND_CONTINUE,
    Attempt,
    Await,
    Drop,
    Failure,
    Header,
    Replied,
    Reply,
    ReplyLocal,
    Sleep,
    Stream,
    Streamed,
    UpstreamRequest,
    UpstreamResponse,
)
from dataplane.exchange.trace import TRACE_HEADERS
from dataplane.http.cookies import request_cookie
from dataplane.http.request import RequestHead
from dataplane.http.response import ResponseHead
from dataplane.policies.base import LocalResponse, RequestContext
from dataplane.policies.chain import EMPTY_CHAIN, PolicyChain

if TYPE_CHECKING:
    from dataplane.balancing import EndpointState
    from dataplane.config.runtime import ClusterRuntime, RouteRuntime, RuntimeConfig
    from dataplane.exchange.trace import RequestTrace, RequestTracer
    from dataplane.tls.identity import ClientIdentity

log = logging.getLogger("flux.proxy")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRY_BUFFER = 64 * 1024  # request bodies up to this size are kept for a retry

# Failures that are no fault of the endpoint: they never count towards its ejection.
NOT_ENDPOINT_FAULTS = frozenset({"overflow", "local"})

Command = Any
Event = Any


class ExchangeServices(Protocol):
    """What the core needs of the worker: counters, the access log, passive health, the tracer
    (None: tracing is off)."""

    metrics: Any
    access_log: Any
    passive_health: Callable[..., None]
    tracer: RequestTracer | None


class Exchange:
    """One request in progress: its decisions (`run`) and what is known of it (for logs)."""

    __slots__ = (
        "body_buffer", "chain", "client_cert", "client_ip", "cluster", "ctx", "deadline", "head", "identity",
        "listener", "monotonic", "perf", "proto", "response_started", "rid", "route", "started", "svc", "trace",
        "upstream",
    )  # fmt: skip

    def __init__(
        self,
        svc: ExchangeServices,
        head: RequestHead,
        rid: bytes,
        listener: str,
        client_ip: str,
        proto: bytes,
        identity: ClientIdentity | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        perf: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.svc = svc
        self.head = head
        self.rid = rid
        self.listener = listener
        self.client_ip = client_ip
        self.proto = proto
        self.identity = identity
        self.client_cert = identity.subject if identity is not None else ""
        self.monotonic = monotonic  # deadlines
        self.perf = perf  # durations
        self.started = perf()
        self.route = ""
        self.cluster = ""
        self.upstream = ""
        self.response_started = False
        self.ctx: RequestContext | None = None  # set when policies run
        self.chain: PolicyChain = EMPTY_CHAIN
        self.deadline = float("inf")  # the route's total timeout, over every attempt (monotonic)
        self.body_buffer: list[bytes] | None = None  # the request body as sent, kept for a retry
        tracer = svc.tracer
        self.trace: RequestTrace | None = tracer.start(head) if tracer is not None else None

    @property
    def consumer(self) -> str:
        ctx = self.ctx
        return ctx.consumer.name if ctx is not None and ctx.consumer is not None else ""

    # -- the one place a finished request is recorded ------------------------------------

    def record(self, status: int, bytes_in: int, bytes_out: int, error: str = "") -> None:
        elapsed = self.perf() - self.started
        head = self.head
        trace = self.trace
        self.svc.metrics.request(self.listener, self.route, self.cluster, status, elapsed, bytes_in, bytes_out)
        self.svc.access_log.log(
            self.rid, self.client_ip, head.method, head.host, head.path, self.route, self.cluster, self.upstream,
            status, bytes_in, bytes_out, elapsed, consumer=self.consumer, error=error, client_cert=self.client_cert,
            trace_id=trace.hex if trace is not None else "",
        )  # fmt: skip
        if trace is not None and trace.sampled:
            trace.finish(self, status, bytes_in, bytes_out, error, elapsed)

    # -- local answers ------------------------------------------------------------------------

    def reply(
        self, status: int, message: str, headers: tuple[Header, ...] = (), close: bool = False
    ) -> Generator[Command, Event, bool]:
        """Answer with the node's JSON error (breakers count it, CORS headers still apply)."""
        ctx = self.ctx
        if ctx is not None:
            self.chain.on_response(ctx, status)
            headers = (*headers, *ctx.response_add)
        self.response_started = True
        done: Replied = yield Reply(status, message, headers, close)
        self.record(status, 0, done.bytes_out, message)
        return done.keep

    def reply_local(self, answer: LocalResponse) -> Generator[Command, Event, bool]:
        """Send a response a policy made (401, 403, 429, a CORS preflight, a redirect...)."""
        ctx = self.ctx
        if ctx is not None and ctx.response_add:
            answer = LocalResponse(
                answer.status, answer.body, [*answer.headers, *ctx.response_add],
                reason=answer.reason, content_type=answer.content_type,
            )  # fmt: skip
        self.response_started = True
        done: Replied = yield ReplyLocal(answer)
        self.record(answer.status, 0, done.bytes_out, answer.reason)
        return done.keep

    # -- the request -----------------------------------------------------------------------------

    def run(self, cfg: RuntimeConfig | None) -> Generator[Command, Event, bool]:
        svc = self.svc
        head = self.head
        listener = cfg.listeners.get(self.listener) if cfg is not None else None
        if listener is None or cfg is None:
            return (yield from self.reply(503, "listener is not configured"))
        host = head.hostname
        rule = listener.matcher.match(host, head.path, head.method, head)
        if rule is None:
            return (yield from self.reply(404, f"no route for {head.method} {host}{head.path}"))
        route: RouteRuntime = rule.target  # type: ignore[assignment]
        self.route = route.name
        cluster = route.pick_cluster()
        self.cluster = cluster.name
        chain = route.chain + cluster.chain if cluster.chain.policies else route.chain
        ctx = None
        trace = self.trace
        if chain.policies:
            ctx = self.ctx = RequestContext(head, self.client_ip, self.listener, route.name, self.monotonic())
            self.chain = chain
            identity = self.identity
            if identity is not None and cfg.consumers is not None:  # an mtls credential names the subject
                consumer = cfg.consumers.by_subject.get(identity.key)
                if consumer is not None:
                    ctx.consumer = consumer
                    ctx.add_upstream_header("X-Consumer-Name", consumer.name)
            count = svc.metrics.policy
            if trace is not None:  # the span learns which policy answered
                trace.count = count
                count = trace.policy
            answer = chain.run(ctx, count)
            if answer is not None and type(answer) is not LocalResponse:
                answer = yield Await(answer)
            if answer is not None:
                return (yield from self.reply_local(answer))
            moved = ctx.vars.get("cluster")  # a circuit breaker's fallback cluster
            if moved is not None:
                fallback = cfg.clusters.get(moved)
                if fallback is None:
                    return (yield from self.reply(503, f"fallback cluster {moved!r} is not configured"))
                cluster = fallback
                self.cluster = cluster.name
                if trace is not None:
                    trace.fallback = moved
        if cluster.max_requests and cluster.state.in_flight >= cluster.max_requests:
            svc.metrics.upstream_error(cluster.name, "max_requests")
            return (yield from self.reply(503, f"cluster {cluster.name!r} is at its limit of concurrent requests"))
        if head.expect_continue:
            yield SEND_CONTINUE

        retry = route.retry
        attempts = route.attempts
        retry_on = route.retry_on_idempotent if head.method in IDEMPOTENT else route.retry_on_other
        self.body_buffer = [] if head.has_body else None
        upgrade = head.get("upgrade") if head.upgrade else None  # never h2c: the reader declines it
        avoid: EndpointState | None = None
        failure: Failure | None = None
        if route.timeout:
            self.deadline = self.monotonic() + route.timeout
        for attempt in range(attempts):
            ep, cookies = self.pick(cluster, avoid, route)
            if ep is None:
                if failure is not None:
                    break
                return (yield from self.reply(503, f"no healthy endpoint in cluster {cluster.name!r}"))
            self.upstream = ep.key
            last = attempt + 1 >= attempts
            tries_on = () if last else retry_on
            deadline = self.deadline
            if retry is not None and retry.per_try_timeout_ms and tries_on:
                deadline = min(deadline, self.monotonic() + retry.per_try_timeout_ms / 1000)
            request = self.upstream_request(route, ep, upgrade)
            t0 = self.perf()
            if trace is not None:
                trace.attempts += 1
                if not trace.up_start:
                    trace.up_start = t0
            cluster.state.in_flight += 1
            ep.active += 1
            try:
                got = yield Attempt(cluster, ep, request, attempt > 0, tries_on, deadline)
                if type(got) is Failure or isinstance(got, Failure):
                    failure = got
                else:
                    response: UpstreamResponse = got
                    resp = response.head
                    ttfb = self.perf() - t0
                    svc.metrics.upstream_time(cluster.name, ttfb)
                    if trace is not None:
                        trace.ttfb = ttfb
                    if (
                        tries_on
                        and resp.status >= 500
                        and ("5xx" in tries_on or ("gateway_error" in tries_on and resp.status in (502, 503, 504)))
                    ):
                        yield Drop(response)
                        failure = Failure("5xx", resp.status, f"upstream {ep.key} answered {resp.status}", True)
                    elif resp.status == 101 and not upgrade:
                        yield Drop(response)
                        failure = Failure("protocol", 502, f"upstream {ep.key} switched protocols unasked", False)
                    else:
                        return (yield from self._respond(response, resp, cluster, ep, cookies, ctx))
            finally:
                ep.active -= 1
                cluster.state.in_flight -= 1
            # -- the attempt failed before the client saw a byte ---------------------------------
            svc.metrics.upstream_error(cluster.name, failure.kind)
            if failure.kind not in NOT_ENDPOINT_FAULTS and (
                failure.kind in ("connect_failure", "reset", "timeout") or failure.status in (502, 503, 504)
            ):
                svc.passive_health(cluster, ep, False)
            if not failure.retryable or last or not _may_retry(failure.kind, retry_on):
                break
            if head.has_body and not self.body_buffer:
                break  # the body was streamed upstream and is gone
            avoid = ep
            svc.metrics.count("retries")
            if retry is not None and retry.backoff_ms:
                yield Sleep(retry.backoff_ms / 1000 * (2**attempt))
        assert failure is not None
        log.warning("%s %s%s -> %s (%s): %s", head.method, host, head.path, self.upstream or "-", cluster.name,
                    failure.message)  # fmt: skip
        return (yield from self.reply(failure.status, failure.message))

    def _respond(
        self,
        response: UpstreamResponse,
        resp: ResponseHead,
        cluster: ClusterRuntime,
        ep: EndpointState,
        cookies: tuple[bytes, ...],
        ctx: RequestContext | None,
    ) -> Generator[Command, Event, bool]:
        """The client sees bytes from here on: response policies, then the body."""
        self.response_started = True
        rid_header = (b"X-Request-Id", self.rid)
        add: tuple[Header, ...] = (rid_header,) if not cookies else (rid_header, *((b"Set-Cookie", c) for c in cookies))
        if ctx is not None:
            self.chain.on_response(ctx, resp.status)
            add = (*add, *ctx.response_add)
            if ctx.response_remove or "status" in ctx.vars:
                resp = rewritten(resp, ctx)
        done: Streamed = yield Stream(response, resp, add, resp.status == 101)
        if done.error:
            self.record(done.status, done.bytes_in, done.bytes_out, done.error)
            return False
        status = done.status
        if status >= 500 or ep.consecutive_failures or ep.consecutive_5xx or ep.ejections:
            # `ok` False is a gateway failure (502-504); the status feeds consecutive_5xx.
            self.svc.passive_health(cluster, ep, not (502 <= status <= 504), status)
        else:  # a success with no failure streak or back-off to forget: just count it
            ep.total_requests += 1
        self.record(status, done.bytes_in, done.bytes_out)
        return done.keep

    # -- what goes upstream ----------------------------------------------------------------------

    def upstream_request(self, route: RouteRuntime, ep: EndpointState, upgrade: str | None) -> UpstreamRequest:
        head = self.head
        ctx = self.ctx
        if ctx is None:
            target = head.target if route.prefix_rewrite is None else self.target(route)
            host = route.host_rewrite if route.host_rewrite is not None or head.host else ep.key.encode()
            add: list[Header] | tuple[Header, ...] = ()
            remove: frozenset[bytes] = frozenset()
        else:
            target = self.target(route, ctx)
            host = ctx.host if ctx.host is not None else _upstream_host(head, route, ep)
            add = ctx.upstream_add
            remove = frozenset(ctx.upstream_remove)
        extra = _extra_up(upgrade, self.identity)
        if extra:
            add = [*add, *extra]
        trace = self.trace
        if trace is not None:  # the node's span is the upstream's parent
            add = [*add, *trace.upstream]
            remove = remove | TRACE_HEADERS
        return UpstreamRequest(target, host, add, remove, upgrade, route.grpc_web)

    def target(self, route: RouteRuntime, ctx: RequestContext | None = None) -> bytes:
        """The request target sent upstream: the route's prefix rewrite, then a policy's path/query rewrite."""
        head = self.head
        path = head.path
        if route.prefix_rewrite is not None:
            path = route.prefix_rewrite + path[len(route.match_prefix) :]
            if not path.startswith("/"):
                path = "/" + path
        query = head.query
        if ctx is not None:
            if ctx.path is not None:
                path = ctx.path
            if ctx.query is not None:
                query = ctx.query
            if path is head.path and query is head.query:
                return head.target
        return path.encode("latin-1") + (b"?" + query if query else b"")

    def pick(
        self, cluster: ClusterRuntime, avoid: EndpointState | None, route: RouteRuntime
    ) -> tuple[EndpointState | None, tuple[bytes, ...]]:
        """(endpoint, Set-Cookie values) for this request, or (None, ())."""
        head = self.head
        affinity = cluster.affinity
        if affinity is not None:
            value = request_cookie(head.headers, affinity.cookie)
            if value:
                ep = affinity.index.find(value)
                if ep is not None and ep is not avoid:
                    return ep, ()
        balancer = cluster.balancer
        cookies: tuple[bytes, ...] = ()
        if route.grayscale is not None:  # a version of the cluster's instances, by rule, weight or stickiness
            ctx = self.ctx
            groups = ctx.consumer.groups if ctx is not None and ctx.consumer is not None else frozenset()
            headers = head.headers
            choice = route.grayscale.choose(
                head.get, lambda name: request_cookie(headers, name), groups, self.client_ip
            )
            if choice is not None:
                subset = cluster.by_version.get(choice.version)
                if subset is not None:
                    balancer = subset
                    if choice.set_cookie:
                        cookies = (choice.set_cookie.encode("latin-1"),)
        elif cluster.zone_balancer is not None:  # prefer_zone: this node's zone first
            balancer = cluster.zone_balancer
        key = hash_key(cluster, head, self.client_ip) if cluster.keyed else None
        ep = balancer.pick(key)
        if ep is None and balancer is not cluster.balancer:
            ep = cluster.balancer.pick(key)  # nothing available in the subset: any instance
        if ep is not None and ep is avoid:  # a retry: prefer another endpoint
            for _ in range(len(cluster.endpoints)):
                other = cluster.balancer.pick(None)
                if other is not None and other is not avoid:
                    ep = other
                    break
        if ep is None:
            return None, ()
        if affinity is None:
            return ep, cookies
        pin = affinity.index.set_cookie_header(affinity.cookie, ep, affinity.ttl_ms, affinity.path).encode()
        return ep, (*cookies, pin)


# -- helpers ------------------------------------------------------------------------------------


def hash_key(cluster: ClusterRuntime, head: RequestHead, client_ip: str) -> str | None:
    hk = cluster.hash_on
    if hk is None:  # ip_hash
        return client_ip
    if hk.source == "header":
        return head.get(hk.name)
    if hk.source == "cookie":
        return request_cookie(head.headers, hk.name)
    if hk.source == "ip":
        return client_ip
    return head.path


def _extra_up(upgrade: str | None, identity: ClientIdentity | None) -> tuple[Header, ...]:
    """Headers the node adds upstream for a protocol upgrade and a verified client certificate."""
    extra: tuple[Header, ...] = ()
    if upgrade:
        extra = ((b"Connection", b"Upgrade"), (b"Upgrade", upgrade.encode("latin-1")))
    if identity is not None:
        extra = (*extra, (b"X-Forwarded-Client-Cert", identity.xfcc()))
    return extra


def _upstream_host(head: RequestHead, route: RouteRuntime, ep: EndpointState) -> bytes | None:
    """The Host to send upstream instead of the client's: the route's rewrite, or for a request
    that came without one (HTTP/1.0), the endpoint's address (an HTTP/1.1 request needs a Host)."""
    if route.host_rewrite is not None or head.host:
        return route.host_rewrite
    return ep.key.encode()


def _may_retry(kind: str, retry_on: frozenset[str]) -> bool:
    """Whether a failed attempt of `kind` may go again under the route's `retry_on`."""
    if kind == "5xx":
        return True  # only raised when retry_on asked for it
    if kind == "timeout":
        return "5xx" in retry_on or "gateway_error" in retry_on
    return kind in retry_on


def rewritten(resp: ResponseHead, ctx: RequestContext) -> ResponseHead:
    """The response head after response_rewrite policies: headers removed, status replaced."""
    out = ResponseHead()
    out.status = ctx.vars.get("status", resp.status)
    out.reason = resp.reason if out.status == resp.status else b""
    out.version = resp.version
    out.content_length = resp.content_length
    out.chunked = resp.chunked
    out.keep_alive = resp.keep_alive
    out.upgrade = resp.upgrade
    drop = ctx.response_remove
    out.block = b"\r\n".join(
        line for line in resp.block.split(b"\r\n") if line and line.partition(b":")[0].strip().lower() not in drop
    )
    return out
