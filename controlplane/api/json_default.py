"""ASGI middleware: a request body sent without a JSON content type is read as JSON.

`curl -d '{...}'` sends `application/x-www-form-urlencoded`, and FastAPI would then refuse the
body as "not a valid dictionary". The API takes no forms, so a body with no content type or a
form content type is passed on as `application/json` (YAML imports still work: they sniff).
"""

from __future__ import annotations

from typing import Any

_FORM = b"application/x-www-form-urlencoded"


class JsonByDefault:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") in ("POST", "PUT", "PATCH"):
            headers = scope.get("headers", [])
            kind = next((v for k, v in headers if k == b"content-type"), None)
            if kind is None or kind.split(b";")[0].strip().lower() == _FORM:
                rest = [(k, v) for k, v in headers if k != b"content-type"]
                scope = {**scope, "headers": [*rest, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
