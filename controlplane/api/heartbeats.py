"""The heartbeat fast path: `PUT /api/v1/services/{name}/instances/{id}/heartbeat` as bare ASGI.

Heartbeats are by far the most frequent request the control plane serves (10,000
instances at ttl/3 = a few thousand a second) and the cheapest to answer: one dict
update under a short lock. FastAPI's routing, dependency solving (sync dependencies go
through a thread pool) and response models cost several times that, so this middleware
answers heartbeats before the application sees them: same path, same token and role
checks (`controlplane.api.access`: the admin role, or the registry role for the service),
same JSON answers and errors. Everything else passes through untouched; the FastAPI
route of the same path stays for the OpenAPI document (and answers if this middleware is
not installed).
"""

from __future__ import annotations

import json
import re
from typing import Any

from controlplane.api import access
from controlplane.store.config_store import NotFound

_PATH = re.compile(r"^/api/v1/services/([^/]+)/instances/([^/]+)/heartbeat$")


async def _answer(send: Any, status: int, body: dict[str, Any], extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class HeartbeatFastPath:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "PUT" or not scope["path"].endswith("/heartbeat"):
            await self.app(scope, receive, send)
            return
        match = _PATH.match(scope["path"])
        cp = getattr(getattr(scope.get("app"), "state", None), "flux", None)
        registry = getattr(cp, "registry", None)
        if match is None or registry is None:
            await self.app(scope, receive, send)
            return
        try:
            principal = await access.scope_principal(scope, cp)  # AccessGuard found it already
        except access.Refusal as refusal:
            challenge = ((b"www-authenticate", refusal.challenge.encode()),)
            await _answer(send, 401, {"error": "unauthorized", "message": refusal.message}, challenge)
            return
        service, iid = match.group(1), match.group(2)
        need = access.need_for("PUT", access.HEARTBEAT_PATH, {"name": service, "iid": iid}, {})
        if not need.allows(principal):
            await _answer(send, 403, {"error": "forbidden", "message": need.refusal(principal)})
            return
        try:
            inst = registry.heartbeat(service, iid)
        except NotFound as exc:
            await _answer(send, 404, {"error": "not_found", "message": str(exc)})
            return
        await _answer(
            send,
            200,
            {"id": inst.id, "service": service, "status": inst.status, "last_heartbeat": inst.last_heartbeat},
        )
