"""API tokens: `POST /api/v1/tokens` (the token is shown once), `GET` lists, `DELETE` revokes.

    POST   /api/v1/tokens          {"name": "ci", "role": "read", "services": [], "ttl": "90d"} -> {"token": ...}
    GET    /api/v1/tokens          names, roles, services, created/expiry/last use; never a token
    GET    /api/v1/tokens/{name}
    DELETE /api/v1/tokens/{name}   revoked at once (within a second on other control planes)

Admin only (controlplane.api.access). The store and the token format: controlplane.api_tokens.
"""

# No `from __future__ import annotations`: FastAPI reads the parameter types at runtime.

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from controlplane.api.state import ControlPlane, get_cp, require_admin
from controlplane.api_tokens import ApiTokens, TokenSpec

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


def _tokens(cp: ControlPlane) -> ApiTokens:
    assert cp.api_tokens is not None  # made with the ControlPlane
    return cp.api_tokens


@router.post("", status_code=201, summary="Create an API token (the answer is the only time it is shown)")
async def create_token(
    body: TokenSpec, cp: ControlPlane = Depends(get_cp), author: str = Depends(require_admin)
) -> dict[str, Any]:
    token, info = await run_in_threadpool(_tokens(cp).create, body, author)
    return {"token": token, **info.as_dict()}


@router.get("", summary="API tokens: name, role, services, created, expires, last used (never the token)")
def list_tokens(cp: ControlPlane = Depends(get_cp), _author: str = Depends(require_admin)) -> dict[str, Any]:
    items = [t.as_dict() for t in _tokens(cp).list()]
    return {"items": items, "total": len(items)}


@router.get("/{name}", summary="One API token (never the token itself)")
def get_token(name: str, cp: ControlPlane = Depends(get_cp), _author: str = Depends(require_admin)) -> dict[str, Any]:
    return _tokens(cp).get(name).as_dict()


@router.delete("/{name}", summary="Revoke an API token, at once")
def delete_token(
    name: str, cp: ControlPlane = Depends(get_cp), _author: str = Depends(require_admin)
) -> dict[str, Any]:
    info = _tokens(cp).delete(name)
    return {"deleted": f"tokens/{name}", "role": info.role}
