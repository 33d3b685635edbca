"""The console's only way to read or change anything: the REST API, called in process.

Every console page asks `/api/v1/...` of the same FastAPI application through httpx's ASGI
transport, with `Authorization: Bearer <the session's token>`: the console can do exactly
what that token may do, no more, the API's validation and role checks run unchanged, and
secrets come back masked as they do for every other client. Nothing crosses the network.

Calls carry the browser's address as the client and `X-Flux-Author`, so the config history
reads `console@<browser address> via token <name>`, or `admin via console@<address>` for
the bootstrap admin token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

BASE = "http://flux-console"
AUTHOR = "console"
BOOTSTRAP_AUTHOR = "admin via console"


class TokenRefused(Exception):
    """The API answered 401: the session's token is no longer valid (revoked or expired)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(eq=False)  # exceptions stay hashable
class ApiError(Exception):
    """A 4xx/5xx answer other than 401: the JSON error body the API sent."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return str(self.body.get("message") or self.body.get("detail") or f"HTTP {self.status}")

    @property
    def forbidden(self) -> bool:
        return self.status == 403

    def field_errors(self) -> list[dict[str, str]]:
        """[{field, message}] from `errors` (or the single `field`), as the API names them."""
        errors = self.body.get("errors")
        if isinstance(errors, list) and errors:
            return [
                {"field": str(e.get("field", "")), "message": str(e.get("message", ""))}
                for e in errors
                if isinstance(e, dict)
            ]
        return [{"field": str(self.body.get("field", "")), "message": self.message}]


class Api:
    """Calls of one console request to the REST API, as the session's token."""

    def __init__(self, app: Any, token: str, client: tuple[str, int] = ("127.0.0.1", 0), author: str = AUTHOR) -> None:
        self._transport = httpx.ASGITransport(app=app, client=client)
        self._headers = {"Authorization": f"Bearer {token}", "X-Flux-Author": author}

    async def call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON body) of `method path`; raises TokenRefused on a 401."""
        async with httpx.AsyncClient(transport=self._transport, base_url=BASE, headers=self._headers) as client:
            response = await client.request(method, path, json=json, params=params)
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:500]}
        if response.status_code == 401:
            raise TokenRefused(str(body.get("message", "token refused")) if isinstance(body, dict) else "token refused")
        return response.status_code, body

    async def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        """The decoded body of a successful call; raises ApiError on a 4xx/5xx."""
        status, body = await self.call(method, path, json=json, params=params)
        if status >= 400:
            raise ApiError(status, body if isinstance(body, dict) else {"message": str(body)})
        return body

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params or None)

    async def get_or_none(self, path: str, **params: Any) -> tuple[Any, ApiError | None]:
        """(body, None), or (None, the error) when the API refuses the read (403, 404, 503)."""
        try:
            return await self.get(path, **params), None
        except ApiError as exc:
            return None, exc
