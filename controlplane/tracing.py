"""The control plane's traces: a config write, through its publication, to every node's apply.

    POST /api/v1/apply                 SERVER    the REST write (its traceparent honoured)
      publish config version 42        INTERNAL  the watcher hands the version to the cache
        push config version 42         PRODUCER  one per config stream (node worker) it goes to
          apply config version 42      CONSUMER  on the node (dataplane.discovery.client)

How the pieces find each other: `WriteTracing` (an ASGI middleware) opens the write's span and
puts it in a context variable; the store calls `on_commit(version)` (a ConfigStore listener,
in the request's worker thread, where the context variable is still the request's) and the
version's trace context is kept; the watcher's `publish_span(version)` is that write's child
(with links to the writes of versions it coalesced), and the discovery server's
`push_span(version)` the publish's child, whose `traceparent` travels on the
StreamConfigResponse to the node.

Traced writes: POST /api/v1/apply, POST /api/v1/config/rollback, POST/PUT/DELETE of a config
resource (/api/v1/{kind}[/{name}]), POST /api/v1/rollouts/{id}/abort|promote. A version written
by another control plane of the database is published in a root span. Pushes of a new registry
index only (instances changed, "42.1037" after "42.1036") are not traced. The last 256 versions'
contexts are kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

from controlplane.spec import KINDS
from fluxcommon.tracing.context import SpanContext, parse_traceparent, parse_tracestate
from fluxcommon.tracing.otlp import INTERNAL, PRODUCER, SERVER
from fluxcommon.tracing.tracer import Span, Tracing

KEEP_VERSIONS = 256
_WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_KIND_PATHS = frozenset(kind.plural for kind in KINDS.values())

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Write:
    __slots__ = ("span", "versions")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.versions: list[int] = []


_CURRENT: ContextVar[_Write | None] = ContextVar("flux_config_write", default=None)


def write_route(method: str, path: str) -> str | None:
    """The route template of a traced config write ("PUT /api/v1/routes/{name}"), or None."""
    if method not in _WRITE_METHODS:
        return None
    parts = path.rstrip("/").split("/")
    if len(parts) < 4 or parts[1:3] != ["api", "v1"]:
        return None
    rest = parts[3:]
    if rest == ["apply"] or rest == ["config", "rollback"]:
        return f"{method} {path.rstrip('/')}"
    if rest[0] in _KIND_PATHS and len(rest) <= 2:
        return f"{method} /api/v1/{rest[0]}" + ("/{name}" if len(rest) == 2 else "")
    if rest[0] == "rollouts" and len(rest) == 3 and rest[2] in ("abort", "promote"):
        return f"{method} /api/v1/rollouts/{{id}}/{rest[2]}"
    return None


class ConfigTracing:
    """The trace contexts of recent versions, and the spans of writes, publishes and pushes."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self.tracer = tracing.tracer
        self._lock = threading.Lock()  # on_commit runs in worker threads
        self._writes: OrderedDict[int, SpanContext] = OrderedDict()
        self._published: OrderedDict[int, SpanContext] = OrderedDict()

    @property
    def exporter(self) -> Any:
        return self.tracing.exporter

    # -- REST writes ---------------------------------------------------------------------

    def start_write(self, route: str, scope: Scope) -> tuple[_Write, Any]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        parent = parse_traceparent(headers.get("traceparent"))
        if parent is not None:
            parent = SpanContext(parent.trace_id, parent.span_id, parent.flags,
                                 parse_tracestate(headers.get("tracestate")))  # fmt: skip
        client = scope.get("client")
        attributes: dict[str, Any] = {
            "http.request.method": scope["method"],
            "url.path": scope["path"],
            "http.route": route.partition(" ")[2],
            "url.scheme": scope.get("scheme", "http"),
        }
        if client:
            attributes["client.address"] = client[0]
        if headers.get("user-agent"):
            attributes["user_agent.original"] = headers["user-agent"][:512]
        span = self.tracer.start_span(route, SERVER, parent, attributes, remote=parent is not None)
        write = _Write(span)
        return write, _CURRENT.set(write)

    def end_write(self, write: _Write, token: Any, status: int, error: str = "") -> None:
        _CURRENT.reset(token)
        span = write.span
        span.set("http.response.status_code", status)
        if write.versions:
            span.set("flux.config.version", write.versions[-1])
        if status >= 500 or error:
            span.set("error.type", error or str(status))
            span.error(error or f"HTTP {status}")
        span.end()

    def on_commit(self, version: int) -> None:
        """A ConfigStore listener: the version a traced write just committed."""
        write = _CURRENT.get()
        if write is None:
            return
        write.versions.append(version)
        with self._lock:
            _remember(self._writes, version, write.span.context)

    # -- the watcher -----------------------------------------------------------------------

    def publish_span(self, version: int, previous: int) -> Span:
        """A child of the write of `version` (a root span when it was not written here), with
        links to the writes of the versions published together with it."""
        with self._lock:
            parent = self._writes.get(version)
            links = [ctx for v, ctx in self._writes.items() if previous < v < version]
        attributes: dict[str, Any] = {"flux.config.version": version}
        if previous >= 0:
            attributes["flux.config.previous_version"] = previous
        span = self.tracer.start_span(f"publish config version {version}", INTERNAL, parent, attributes, links=links)
        with self._lock:
            _remember(self._published, version, span.context)
        return span

    # -- the discovery server ------------------------------------------------------------------

    def push_span(self, version: str, node_id: str, group: str) -> Span | None:
        """The span of pushing `version` ("42" or "42.1037") to one node's stream: a child of
        that config version's publish (None when it was not published here)."""
        try:
            config_version = int(version.partition(".")[0])
        except ValueError:
            return None
        with self._lock:
            parent = self._published.get(config_version)
        if parent is None:
            return None
        return self.tracer.start_span(
            f"push config version {version}", PRODUCER, parent,
            {"flux.config.version": version, "flux.node.id": node_id, "flux.node.group": group},
        )  # fmt: skip


def _remember(table: OrderedDict[int, SpanContext], version: int, context: SpanContext) -> None:
    table[version] = context
    table.move_to_end(version)
    while len(table) > KEEP_VERSIONS:
        table.popitem(last=False)


class WriteTracing:
    """ASGI middleware: a SERVER span around each config write (see `write_route`)."""

    def __init__(self, app: ASGIApp, tracing: ConfigTracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = write_route(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        write, token = self.tracing.start_write(route, scope)
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        error = ""
        try:
            await self.app(scope, receive, sending)
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            self.tracing.end_write(write, token, status[0], error)
