"""Pieces shared by the authentication policies (jwt, oauth2, api_key, basic_auth).

- `TokenSource`: where a credential comes from ("header:NAME", "query:NAME", "cookie:NAME").
- `unauthorized` / `forbidden` / `unavailable`: the 401 / 403 / 503 answers, with a
  `WWW-Authenticate` challenge (RFC 6750 for bearer tokens, RFC 7617 for Basic, a
  custom `ApiKey` scheme for API keys).
- `authenticated(ctx, consumer)`: marks the request as the consumer's and tells the
  upstream who it is (`X-Consumer-Name`, `X-Consumer-Groups`; client-sent copies are dropped).
- `AuthPolicy`: the base with the counters the node exports (`allowed`, `denied[reason]`).
- `TtlCache`: a bounded LRU whose entries also expire.
- `http_request`: one bounded HTTP exchange (httpx, through `fluxcommon.httpfetch`; trio side only).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import quote, unquote_to_bytes, urlsplit

import httpx

from dataplane.http.cookies import request_cookie
from dataplane.policies.base import Consumer, LocalResponse, Policy, RequestContext
from fluxcommon import httpfetch
from fluxcommon.httpfetch import FetchError  # noqa: F401 (the policies catch it from here)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

REALM = "flux"
CONSUMER_HEADER = "X-Consumer-Name"
GROUPS_HEADER = "X-Consumer-Groups"
MAX_CREDENTIAL_LENGTH = 8192  # longer tokens/keys are refused without further work
MAX_NAME_LENGTH = 256  # consumer names taken from token claims


# -- where credentials come from ---------------------------------------------------------------


class TokenSource:
    """A credential location: `header:NAME`, `query:NAME` or `cookie:NAME` (config `from`)."""

    __slots__ = ("kind", "lname", "name")

    def __init__(self, spec: str) -> None:
        kind, sep, name = spec.partition(":")
        if not sep or not name or kind not in ("header", "query", "cookie"):
            raise ValueError(f"bad token source {spec!r}: use header:NAME, query:NAME or cookie:NAME")
        self.kind = kind
        self.name = name
        self.lname = name.lower()

    def extract(self, ctx: RequestContext) -> str | None:
        """The token, or None when the request carries none."""
        if self.kind == "header":
            return bearer_token(ctx.header(self.lname))
        if self.kind == "query":
            value = query_param(current_query(ctx), self.name)
        else:
            value = request_cookie(ctx.head.headers, self.name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def __repr__(self) -> str:
        return f"TokenSource({self.kind}:{self.name})"


def bearer_token(value: str | None) -> str | None:
    """A token from a header value: `Bearer TOKEN`, or a bare token (no scheme); None otherwise."""
    if value is None:
        return None
    value = value.strip()
    scheme, sep, rest = value.partition(" ")
    if scheme.lower() == "bearer" and not rest.strip():
        return None
    if sep:
        if scheme.lower() != "bearer":
            return None  # another scheme (Basic ...): no bearer token here
        value = rest.strip()
        if " " in value:
            return None
    return value or None


def current_query(ctx: RequestContext) -> bytes:
    """The query as it stands (a policy before this one may have rewritten it)."""
    return ctx.query if ctx.query is not None else ctx.head.query


def _unquote(raw: bytes) -> str:
    if b"%" in raw or b"+" in raw:
        raw = unquote_to_bytes(raw.replace(b"+", b" "))
    return raw.decode("utf-8", "replace")


def query_param(query: bytes, name: str) -> str | None:
    """First value of query parameter `name` (percent- and plus-decoded), or None."""
    if not query:
        return None
    key = name.encode("utf-8")
    for part in query.split(b"&"):
        k, _, v = part.partition(b"=")
        if k == key or ((b"%" in k or b"+" in k) and _unquote(k) == name):
            return _unquote(v)
    return None


def without_query_param(query: bytes, name: str) -> bytes:
    """`query` with every `name=...` parameter removed."""
    key = name.encode("utf-8")
    kept = []
    for part in query.split(b"&"):
        k = part.partition(b"=")[0]
        if k == key or ((b"%" in k or b"+" in k) and _unquote(k) == name):
            continue
        kept.append(part)
    return b"&".join(kept)


# -- answers -----------------------------------------------------------------------------------


def _quoted(value: str) -> str:
    value = "".join(c for c in value if c.isprintable())  # no CR/LF or other controls in a header
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(scheme: str, realm: str = REALM, **params: str | None) -> bytes:
    """A `WWW-Authenticate` value: `Scheme realm="...", key="value", ...` (empty params left out)."""
    parts = [f"realm={_quoted(realm)}"]
    parts += [f"{k}={_quoted(v)}" for k, v in params.items() if v]
    return f"{scheme} {', '.join(parts)}".encode("latin-1", "replace")


def unauthorized(
    realm_scheme: str,
    message: str,
    error_code: str | None = None,
    *,
    realm: str = REALM,
    reason: str = "",
) -> LocalResponse:
    """401 with a challenge. For `Bearer`, an `error_code` ("invalid_token", "invalid_request")
    goes into the challenge with `message` as error_description (RFC 6750 §3); leave it out
    when the request carried no credentials at all."""
    params: dict[str, str | None] = {}
    if realm_scheme.lower() == "bearer" and error_code:
        params = {"error": error_code, "error_description": message}
    elif realm_scheme.lower() == "basic":
        params = {"charset": "UTF-8"}
    headers = [(b"WWW-Authenticate", challenge(realm_scheme, realm, **params))]
    resp = LocalResponse.error(401, error_code or "unauthorized", message, headers)
    if reason:
        resp.reason = reason
    return resp


def forbidden(
    message: str,
    error_code: str = "forbidden",
    *,
    scope: str | None = None,
    realm_scheme: str | None = "Bearer",
    realm: str = REALM,
    reason: str = "",
) -> LocalResponse:
    """403; with a bearer challenge naming the error (insufficient_scope) and the scope needed."""
    headers: list[tuple[bytes, bytes]] = []
    if realm_scheme:
        params = {"error": error_code, "error_description": message, "scope": scope}
        headers.append((b"WWW-Authenticate", challenge(realm_scheme, realm, **params)))
    resp = LocalResponse.error(403, error_code, message, headers)
    if reason:
        resp.reason = reason
    return resp


def unavailable(message: str, error_code: str = "auth_unavailable", *, reason: str = "") -> LocalResponse:
    """503: the credential could not be checked (authorization server down, overload)."""
    resp = LocalResponse.error(503, error_code, message, [(b"Retry-After", b"1")])
    if reason:
        resp.reason = reason
    return resp


def _header_safe(value: str) -> str:
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe=" !#$&'()*+,-./:;<=>?@[]^_`{|}~")


def authenticated(ctx: RequestContext, consumer: Consumer, header: str = CONSUMER_HEADER) -> None:
    """The request is `consumer`'s: set `ctx.consumer` and tell the upstream in `header`
    (X-Consumer-Name unless configured) and X-Consumer-Groups, replacing any copy the client sent."""
    ctx.consumer = consumer
    ctx.set_upstream_header(header, _header_safe(consumer.name))
    if consumer.groups:
        ctx.set_upstream_header(GROUPS_HEADER, _header_safe(",".join(sorted(consumer.groups))))
    else:
        ctx.remove_upstream_header(GROUPS_HEADER)


def anonymous_consumer(name: str) -> Consumer:
    """A consumer the snapshot does not know, named by a trusted token (JWKS or introspection)."""
    return Consumer(name, frozenset(), {"anonymous": "true"})


class AuthPolicy(Policy):
    """Base of the auth policies: counters for metrics, allow/deny bookkeeping."""

    type: ClassVar[str] = ""

    def __init__(self, name: str, consumer_header: str = CONSUMER_HEADER) -> None:
        super().__init__(name)
        self.allowed = 0
        self.denied: dict[str, int] = {}
        self.consumer_header = consumer_header

    def _allow(self, ctx: RequestContext, consumer: Consumer) -> None:
        authenticated(ctx, consumer, self.consumer_header)
        ctx.vars["auth_method"] = self.type
        self.allowed += 1

    def _deny(self, reason: str, resp: LocalResponse) -> LocalResponse:
        """Count `reason` and label the response with it ("jwt_expired", ...)."""
        self.denied[reason] = self.denied.get(reason, 0) + 1
        resp.reason = f"{self.type}_{reason}"
        return resp

    def stats(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "denied": dict(self.denied)}


# -- cache -------------------------------------------------------------------------------------


class TtlCache(Generic[K, V]):
    """A bounded LRU whose entries expire at a time given per entry (in `clock`'s units)."""

    __slots__ = ("_data", "clock", "hits", "maxsize", "misses")

    def __init__(self, maxsize: int, clock: Callable[[], float] = time.monotonic) -> None:
        if maxsize <= 0:
            raise ValueError("maxsize must be positive")
        self.maxsize = maxsize
        self.clock = clock
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: K, now: float | None = None) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry[1] <= (self.clock() if now is None else now):
            del self._data[key]
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: K, value: V, expires_at: float) -> None:
        data = self._data
        data[key] = (value, expires_at)
        data.move_to_end(key)
        while len(data) > self.maxsize:
            data.popitem(last=False)

    def pop(self, key: K) -> V | None:
        entry = self._data.pop(key, None)
        return None if entry is None else entry[0]

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data


# -- HTTP (trio side) --------------------------------------------------------------------------


def check_http_url(url: str, what: str) -> str:
    """`url` if it is an absolute http(s) URL with a host; ValueError otherwise."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"{what}: bad URL {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what}: {url!r} is not an http(s) URL")
    return url


def connection_pool(url: str, max_connections: int = 10) -> httpx.AsyncClient:
    """A client for `http_request` (the shared httpx recipe of `fluxcommon.httpfetch`)."""
    return httpfetch.client(max_connections=max_connections)


async def http_request(
    pool: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    time_limit: float,
    max_body: int = 1 << 20,
) -> tuple[int, bytes]:
    """(status, body) of one request; FetchError on any failure, within `time_limit` seconds."""
    return await httpfetch.fetch(
        pool, method, url, headers=headers, body=body, time_limit=time_limit, max_body=max_body
    )
