"""The agent's admin endpoint (frp's webServer): /healthz, /api/status, /api/reload."""

from __future__ import annotations

import base64
import hmac
import logging
from typing import TYPE_CHECKING, Any

import trio

from fluxcommon.adminhttp import AdminRequest, AdminServer, Reply, json_body
from tunnelclient.config import ConfigError
from tunnelclient.errors import StartError

if TYPE_CHECKING:
    from tunnelclient.agent import Agent

log = logging.getLogger("flux.tunnel.admin")


def _authorized(agent: Agent, head: AdminRequest) -> bool:
    admin = agent.config.admin
    if admin is None or not admin.user:
        return True
    value = next((v for k, v in head.headers if k.lower() == b"authorization"), b"")
    scheme, _, encoded = value.decode("latin-1").partition(" ")
    try:
        user, _, password = base64.b64decode(encoded.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return (
        scheme.lower() == "basic"
        and hmac.compare_digest(user.encode(), admin.user.encode())
        and hmac.compare_digest(password.encode(), admin.password.encode())
    )


def _routes(agent: Agent) -> dict[str, Any]:
    def guarded(fn: Any) -> Any:
        def handler(head: AdminRequest) -> Reply:
            if not _authorized(agent, head):
                return 401, "application/json", json_body({"error": "unauthorized"})
            return fn(head)

        return handler

    def status(_h: AdminRequest) -> Reply:
        return 200, "application/json", json_body(agent.describe())

    def reload(_h: AdminRequest) -> Reply:
        try:
            result = agent.reload()
        except ConfigError as exc:
            return 400, "application/json", json_body({"error": "invalid config", "problems": str(exc).splitlines()})
        except (ValueError, OSError) as exc:
            return 400, "application/json", json_body({"error": str(exc)})
        return 200, "application/json", json_body({"reloaded": True, **result})

    return {
        "/healthz": lambda _h: (200, "application/json", json_body({"status": "alive", "state": agent.state})),
        "/api/status": guarded(status),
        "/api/reload": guarded(reload),
    }


async def serve_admin(agent: Agent, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    admin = agent.config.admin
    assert admin is not None
    server = AdminServer(_routes(agent))
    try:
        port = await agent.nursery.start(server.serve, admin.addr, admin.port)
    except OSError as exc:
        raise StartError(f"webServer.port: cannot listen on {admin.addr}:{admin.port}: {exc.strerror or exc}") from None
    log.info("admin endpoint on http://%s:%d (/healthz, /api/status, /api/reload)", admin.addr, port)
    agent.admin_port = port  # type: ignore[attr-defined]
    task_status.started(port)
