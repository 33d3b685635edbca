"""Node trust over REST: join tokens, and revoking a node.

    POST   /api/v1/nodes/join-tokens        {"group": "edge", "ttl": "1h", "uses": 10} -> {"token": ...}
    GET    /api/v1/nodes/join-tokens        ids, groups, uses, expiry (never a secret)
    DELETE /api/v1/nodes/join-tokens/{id}   no further enrolment with it
    DELETE /api/v1/nodes/{id}               revoke: its certificates are refused from now on, its
                                            streams cut (within a second on other control planes)

Admin only. The token is `<id>.<secret>.<ca pin>` (fluxcommon.trust); only the SHA-256 of
the secret is stored (controlplane.store.trust).
"""

# No `from __future__ import annotations`: FastAPI reads the parameter types at runtime.

import datetime as dt
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from controlplane.api.state import ControlPlane, get_cp, require_admin
from controlplane.spec._types import Name
from controlplane.store.trust import MAX_TOKEN_TTL, MAX_TOKEN_USES, TrustStore
from fluxcommon.durations import parse_duration_ms
from fluxcommon.trust import pin_hex

router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"])
log = logging.getLogger("flux.trust")


def _ttl(value: Any) -> int:
    ms = parse_duration_ms(value, int(MAX_TOKEN_TTL.total_seconds() * 1000))
    if ms < 1000:
        raise ValueError("a join token lives at least 1s")
    return ms


class JoinTokenSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: Name = "default"
    ttl: Annotated[int, BeforeValidator(_ttl), Field(description="how long it allows enrolment (default 1h)")] = (
        3_600_000
    )
    uses: int = Field(1, ge=1, le=MAX_TOKEN_USES, description="how many nodes may enrol with it (default 1)")


def _trust(request: Request) -> TrustStore:
    return request.app.state.node_trust  # type: ignore[no-any-return]


@router.post("/join-tokens", status_code=201, summary="Create a join token for nodes of a group (shown once)")
async def create_join_token(
    body: JoinTokenSpec, request: Request, author: str = Depends(require_admin)
) -> dict[str, Any]:
    trust = _trust(request)
    issued = await run_in_threadpool(
        trust.create_join_token, body.group, dt.timedelta(milliseconds=body.ttl), body.uses, author
    )
    return {
        "token": str(issued.token),
        "id": issued.token.token_id,
        "group": issued.group,
        "uses": issued.uses,
        "expires_at": issued.expires_at.isoformat(timespec="seconds"),
        "ca_pin": pin_hex(issued.token.pin),
        "usage": f"flux-node --join-token {issued.token} --group {issued.group} --cache-dir DIR",
    }


@router.get("/join-tokens", summary="Join tokens: id, group, uses, expiry (never the secret)")
async def list_join_tokens(request: Request, _author: str = Depends(require_admin)) -> dict[str, Any]:
    items = await run_in_threadpool(_trust(request).list_join_tokens)
    return {"items": items, "total": len(items)}


@router.delete("/join-tokens/{token_id}", summary="Delete a join token: no further enrolment with it")
async def delete_join_token(token_id: str, request: Request, _author: str = Depends(require_admin)) -> Any:
    if not await run_in_threadpool(_trust(request).delete_join_token, token_id):
        return JSONResponse({"error": "not_found", "message": f"join token {token_id!r} not known"}, 404)
    return {"deleted": f"join-tokens/{token_id}"}


@router.delete("/{node_id:path}", summary="Revoke a node: its certificates are refused, its streams cut")
async def revoke_node(
    node_id: str, request: Request, cp: ControlPlane = Depends(get_cp), author: str = Depends(require_admin)
) -> Any:
    trust = _trust(request)
    if not await run_in_threadpool(trust.known_node, node_id):
        return JSONResponse({"error": "not_found", "message": f"node {node_id!r} not known"}, 404)
    certificates = await run_in_threadpool(trust.revoke_node, node_id)
    cut = cp.servicer.revoke_node(node_id) if cp.servicer is not None else 0
    log.warning("node %s revoked by %s: %d certificate(s), %d stream(s) cut here", node_id, author, certificates, cut)
    return {"revoked": node_id, "certificates": certificates, "streams_cut": cut}
