"""A small JSON-over-HTTP client on httpx for the HTTP registry adapters (Consul, Nacos, Eureka).

`HttpClient(base_url)` keeps a connection pool to one registry; `request` sends a query
string, a JSON or form body and headers, bounds each phase by `time_limit` (blocking
queries pass a longer one), and returns status, headers (lower-case names) and body.
`HttpError` carries a non-2xx answer; `json()` decodes a body or raises `HttpError`.
Nothing here knows any registry. The httpx client is the shared recipe of `fluxcommon.httpfetch`
(no retries, no redirects, no proxies from the environment), verifying TLS against the system's roots.
"""

from __future__ import annotations

import base64
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx

from fluxcommon import httpfetch

DEFAULT_TIMEOUT = 10.0


class HttpError(ConnectionError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise HttpError(self.status, f"not JSON: {self.body[:200]!r}") from None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _timeouts(limit: float) -> httpx.Timeout:
    return httpx.Timeout(limit, connect=min(limit, 5.0))


def path_quote(segment: str) -> str:
    return quote(segment, safe="")


class HttpClient:
    def __init__(
        self,
        base_url: str,
        *,
        default_path: str = "",
        headers: dict[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        """`default_path` is used when `base_url` has no path ("http://host:8848" -> "/nacos")."""
        parts = urlsplit(base_url)
        self.origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self.base_path = parts.path.rstrip("/") or default_path
        self.headers = {"user-agent": "flux-gateway-registry", "accept": "application/json", **(headers or {})}
        if basic_auth is None and parts.username:
            basic_auth = (parts.username, parts.password or "")
        if basic_auth is not None:
            token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
            self.headers["authorization"] = f"Basic {token}"
        self._http = httpfetch.client(
            max_connections=32, verify=ssl.create_default_context() if parts.scheme == "https" else None
        )

    def url(self, path: str, params: dict[str, Any] | None = None) -> str:
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        return f"{self.origin}{self.base_path}{path}" + (f"?{query}" if query else "")

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        form: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        time_limit: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        sent = {**self.headers, **(headers or {})}
        content = b""
        if json_body is not None:
            content = json.dumps(json_body).encode()
            sent["content-type"] = "application/json"
        elif form is not None:
            content = urlencode({k: v for k, v in form.items() if v is not None}).encode()
            sent["content-type"] = "application/x-www-form-urlencoded"
        if content or method in ("POST", "PUT", "PATCH"):
            sent["content-length"] = str(len(content))
        try:
            resp = await self._http.request(
                method,
                self.url(path, params),
                headers=list(sent.items()),
                content=content or None,
                timeout=_timeouts(time_limit),
            )
        except httpx.TimeoutException as exc:
            raise HttpError(0, f"{method} {path}: timed out ({type(exc).__name__})") from exc
        except httpx.NetworkError as exc:
            raise HttpError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        except httpx.ProtocolError as exc:
            raise HttpError(0, f"{method} {path}: protocol error: {exc}") from exc
        headers_in = {k.lower(): v for k, v in resp.headers.multi_items()}
        return HttpResponse(resp.status_code, headers_in, resp.content)

    async def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 204), **kw: Any) -> HttpResponse:
        """`request`, raising HttpError unless the status is in `ok`."""
        resp = await self.request(method, path, **kw)
        if resp.status not in ok:
            raise HttpError(resp.status, f"{method} {path}: {resp.text()[:300]}")
        return resp

    async def aclose(self) -> None:
        await self._http.aclose()
