"""The policy chain's building blocks: request context, local responses, the Policy base.

A policy is a small object built once per snapshot from its validated config.
For each request the chain calls `on_request(ctx)` on every policy in order
(global, listener, route; within a level, the listed order). A policy may

- end the request: return a `LocalResponse` (401, 403, 429, a CORS preflight...),
- change the request on its way up: `ctx.add_upstream_header`, `ctx.remove_upstream_header`,
  `ctx.path`, `ctx.host`, `ctx.query`,
- change the response on its way down: `ctx.add_response_header` now, or in
  `on_response(ctx, status)` which runs once the upstream's status is known,
- or need I/O (token introspection, a shared rate limit in Redis, a queueing
  delay): then it returns an awaitable (a coroutine runnable on the reactor)
  that resolves to a LocalResponse or None.

Policies never do socket I/O themselves and read time from `ctx.now` (monotonic
seconds) or the clock they are given, so their cores are testable with fake clocks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from dataplane.http.request import RequestHead
from dataplane.tls.identity import subject_key
from flux.v1 import config_pb2 as pb

if TYPE_CHECKING:
    from dataplane.reactor import Reactor

T = TypeVar("T")


class TaskSpawner(Protocol):
    """Where shared helpers start their background tasks: a `trio.Nursery` on the node.

    A protocol rather than trio's class, so this module (and every policy core built on it)
    imports no I/O library."""

    def start_soon(self, async_fn: Callable[..., Awaitable[object]], *args: Any, name: object = None) -> None: ...


class Consumer:
    """An API consumer known from the snapshot (name, groups, metadata)."""

    __slots__ = ("groups", "metadata", "name")

    def __init__(self, name: str, groups: frozenset[str] = frozenset(), metadata: dict[str, str] | None = None) -> None:
        self.name = name
        self.groups = groups
        self.metadata = metadata or {}

    def __repr__(self) -> str:
        return f"Consumer({self.name!r})"


class LocalResponse:
    """A response the node sends itself instead of calling the upstream."""

    __slots__ = ("body", "content_type", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        body: bytes | str | dict[str, Any] = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        reason: str = "",
        content_type: bytes = b"application/json",
    ) -> None:
        self.status = status
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.body = body
        self.headers = headers or []
        self.reason = reason  # for metrics and the access log ("jwt_expired", "rate_limited", ...)
        self.content_type = content_type

    @classmethod
    def error(
        cls, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> LocalResponse:
        return cls(status, {"error": code, "message": message, "status": status}, headers, reason=code)


class RequestContext:
    """What the policy chain knows and changes about one request."""

    __slots__ = (
        "client_ip",
        "consumer",
        "forward",
        "head",
        "host",
        "listener",
        "now",
        "path",
        "query",
        "response_add",
        "response_remove",
        "route",
        "upstream_add",
        "upstream_remove",
        "vars",
    )

    def __init__(self, head: RequestHead, client_ip: str, listener: str, route: str, now: float) -> None:
        self.head = head
        self.client_ip = client_ip  # the socket peer; ip_acl may derive the real client from XFF
        self.listener = listener
        self.route = route
        self.now = now
        self.consumer: Consumer | None = None
        self.forward = False  # a forward-proxy request: proxy credentials (Proxy-Authorization), 407
        self.path: str | None = None  # rewritten path (None: unchanged)
        self.query: bytes | None = None  # rewritten query (None: unchanged)
        self.host: bytes | None = None  # rewritten Host (None: unchanged)
        self.upstream_add: list[tuple[bytes, bytes]] = []
        self.upstream_remove: set[bytes] = set()
        self.response_add: list[tuple[bytes, bytes]] = []
        self.response_remove: set[bytes] = set()
        self.vars: dict[str, Any] = {}

    def header(self, name: str) -> str | None:
        """First value of a request header (name lower case)."""
        return self.head.get(name)

    def add_upstream_header(self, name: str, value: str) -> None:
        self.upstream_add.append((name.encode("latin-1"), value.encode("latin-1")))

    def set_upstream_header(self, name: str, value: str) -> None:
        low = name.lower().encode("latin-1")
        self.upstream_remove.add(low)
        self.upstream_add = [(n, v) for n, v in self.upstream_add if n.lower() != low]
        self.upstream_add.append((name.encode("latin-1"), value.encode("latin-1")))

    def remove_upstream_header(self, name: str) -> None:
        self.upstream_remove.add(name.lower().encode("latin-1"))

    def add_response_header(self, name: str, value: str) -> None:
        self.response_add.append((name.encode("latin-1"), value.encode("latin-1")))


PolicyResult = LocalResponse | None | Awaitable[LocalResponse | None]


class Policy:
    """Base of every policy type; subclasses set `type` and override what they need."""

    type: ClassVar[str] = ""
    #: Whether on_response must run (most policies only look at requests).
    wants_response: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        return None

    def on_response(self, ctx: RequestContext, status: int) -> None:
        return None

    def on_abort(self, ctx: RequestContext) -> None:
        """The request ended without a response status (the client went away)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ConsumerIndex:
    """Consumers of a snapshot and their credentials, indexed for authentication."""

    __slots__ = ("by_api_key", "by_basic_user", "by_issuer", "by_subject", "consumers")

    def __init__(self, consumers: Iterable[pb.Consumer] = ()) -> None:
        self.consumers: dict[str, Consumer] = {}
        self.by_api_key: dict[str, Consumer] = {}  # hex sha256 of the key -> consumer
        self.by_issuer: dict[str, list[tuple[Consumer, pb.Credential]]] = {}  # jwt issuer -> (consumer, credential)
        self.by_basic_user: dict[str, tuple[Consumer, str]] = {}  # username -> (consumer, password hash)
        self.by_subject: dict[str, Consumer] = {}  # client certificate subject (its subject_key) -> consumer
        for spec in consumers:
            consumer = Consumer(spec.name, frozenset(spec.groups), dict(spec.metadata))
            self.consumers[spec.name] = consumer
            for cred in spec.credentials:
                if cred.type == "api_key" and cred.key_sha256:
                    self.by_api_key[cred.key_sha256] = consumer
                elif cred.type == "jwt" and cred.issuer:
                    self.by_issuer.setdefault(cred.issuer, []).append((consumer, cred))
                elif cred.type == "basic_auth" and cred.username:
                    self.by_basic_user[cred.username] = (consumer, cred.password_hash)
                elif cred.type == "mtls" and cred.subject:
                    self.by_subject[subject_key(cred.subject)] = consumer


class SharedServices:
    """Long-lived helpers that outlive snapshots (JWKS caches, Redis clients, token caches).

    `get(key, factory)` returns the object made for `key` before, or makes it with
    `factory()`; `nursery` runs their background trio tasks (refreshers, batchers).
    Objects not asked for by a new snapshot are closed by `retain()` (if they have `close()`).
    """

    def __init__(self, nursery: TaskSpawner | None = None) -> None:
        self.nursery = nursery
        self._objects: dict[Hashable, Any] = {}
        self._used: set[Hashable] = set()

    def get(self, key: Hashable, factory: Callable[[], T]) -> T:
        self._used.add(key)
        obj = self._objects.get(key)
        if obj is None:
            obj = self._objects[key] = factory()
        return obj  # type: ignore[no-any-return]

    def items(self) -> list[tuple[Hashable, Any]]:
        return list(self._objects.items())

    def begin(self) -> None:
        """Start tracking which objects the snapshot being compiled uses."""
        self._used = set()

    def retain(self) -> None:
        """Close and forget what the last compiled snapshot did not ask for."""
        for key in [k for k in self._objects if k not in self._used]:
            obj = self._objects.pop(key)
            close = getattr(obj, "close", None)
            if callable(close):
                close()


@dataclass
class PolicyEnv:
    """What policies may use when built and when running."""

    consumers: ConsumerIndex = field(default_factory=ConsumerIndex)
    services: SharedServices = field(default_factory=SharedServices)
    reactor: Reactor | None = None  # reactor-side awaits: `await env.reactor.to_trio(async_fn, *args)`
    workers: int = 1  # worker processes of the node: local limits enforce 1/workers of the rate each
    clock: Callable[[], float] = time.monotonic  # monotonic seconds, the clock of `RequestContext.now`
