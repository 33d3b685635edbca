"""Outgoing HTTP outside the proxy's hot path, with httpx: one client recipe, one bounded fetch.

Used on trio (the node's auth policies, health checks; the tunnel agent) and asyncio alike:
httpx picks the running event loop itself, and the overall time bound is anyio's.

- `client(...)`: an `httpx.AsyncClient` that never retries, follows no redirects, asks for
  the identity encoding (so `max_body` bounds what is held in memory, not a compressed size)
  and verifies TLS against certifi's roots unless given its own context.
- `fetch(...)`: one request, (status, body), the body read up to `max_body` bytes, everything
  within `time_limit` seconds; any failure is a `FetchError` whose message says what happened.
- `status_of(...)`: one request whose answer's status is all that matters (health probes):
  the body is not read.
- `url_for(...)`: the URL of a path at an address and port (IPv6 in brackets).

The proxy's own upstream traffic does not come here: it runs on the node's reactor.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import anyio
import httpx

__all__ = ["FetchError", "client", "fetch", "ssl_context", "status_of", "url_for"]

Headers = Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]] | Mapping[str, str]


class FetchError(Exception):
    """An outgoing HTTP exchange failed (connect, timeout, protocol, size)."""


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One verifying TLS context (certifi's roots) for every fetch (building one costs milliseconds)."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def client(
    *,
    max_connections: int = 10,
    keepalive: bool = True,
    verify: ssl.SSLContext | None = None,
    user_agent: str | None = None,
) -> httpx.AsyncClient:
    """A client for `fetch`/`status_of` (close it with `aclose` or use it as a context manager)."""
    headers = {"Accept-Encoding": "identity"}
    if user_agent:
        headers["User-Agent"] = user_agent
    return httpx.AsyncClient(
        verify=verify or ssl_context(),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=None if keepalive else 0,
            keepalive_expiry=30.0,
        ),
        follow_redirects=False,
        trust_env=False,
        headers=headers,
    )


def url_for(scheme: str, host: str, port: int, path: str = "/") -> str:
    """`scheme://host:port/path` (an IPv6 address in brackets; a path without its leading "/" gets one)."""
    netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{scheme}://{netloc}:{port}{path if path.startswith('/') else '/' + path}"


def _failure(exc: Exception, url: str, time_limit: float) -> FetchError:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return FetchError(f"no answer within {time_limit:g}s")
    if isinstance(exc, httpx.NetworkError | OSError):
        return FetchError(f"cannot reach {urlsplit(url).netloc}: {exc or type(exc).__name__}")
    return FetchError(f"bad answer: {exc or type(exc).__name__}")


_FAILURES = (httpx.HTTPError, httpx.InvalidURL, OSError, TimeoutError)


async def fetch(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: Headers = (),
    body: bytes = b"",
    time_limit: float,
    max_body: int = 1 << 20,
    extensions: dict[str, object] | None = None,
) -> tuple[int, bytes]:
    """(status, body) of one request; FetchError on any failure, within `time_limit` seconds."""
    try:
        with anyio.fail_after(time_limit):
            request = http.build_request(
                method, url, headers=headers, content=body or None, timeout=time_limit, extensions=extensions
            )
            response = await http.send(request, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > max_body:
                        raise FetchError(f"response larger than {max_body} bytes")
                    chunks.append(chunk)
                return response.status_code, b"".join(chunks)
            finally:
                await response.aclose()
    except _FAILURES as exc:
        raise _failure(exc, url, time_limit) from None


async def status_of(
    http: httpx.AsyncClient,
    url: str,
    *,
    headers: Headers = (),
    time_limit: float,
    extensions: dict[str, object] | None = None,
) -> int:
    """The status of a GET of `url` (the body is not read); FetchError on any failure."""
    try:
        with anyio.fail_after(time_limit):
            request = http.build_request("GET", url, headers=headers, timeout=time_limit, extensions=extensions)
            response = await http.send(request, stream=True)
            await response.aclose()
            return response.status_code
    except _FAILURES as exc:
        raise _failure(exc, url, time_limit) from None
