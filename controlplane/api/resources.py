"""CRUD routes for each config kind: /api/v1/{kind} and /api/v1/{kind}/{name}.

Built by one factory so every kind behaves the same: list with paging, get,
create (409 when the name exists), put (create or replace), delete (409 while
in use). Writes answer with the masked resource and `X-Flux-Config-Version`.
"""

# No `from __future__ import annotations`: FastAPI reads the spec types at runtime.

from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.concurrency import run_in_threadpool

from controlplane.api.state import ControlPlane, get_cp, require_admin
from controlplane.spec import Kind
from controlplane.spec._types import MAX_INT64
from controlplane.store.config_store import NotFound
from controlplane.validation import ConfigError, FieldError


def _page(items: list[dict[str, Any]], total: int, limit: int, offset: int, version: int) -> dict[str, Any]:
    return {"items": items, "total": total, "limit": limit, "offset": offset, "version": version}


def resource_router(kind: Kind) -> APIRouter:
    spec_type = kind.spec
    plural, singular = kind.plural, kind.singular
    router = APIRouter(prefix=f"/api/v1/{plural}", tags=[plural])

    @router.get("", summary=f"List {plural}")
    def list_resources(
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_INT64),
        cp: ControlPlane = Depends(get_cp),
    ) -> dict[str, Any]:
        version, cfg = cp.store.current()
        names = sorted(cfg[plural])
        page = [cfg[plural][n].masked() for n in names[offset : offset + limit]]
        return _page(page, len(names), limit, offset, version)

    @router.get("/{name}", summary=f"Get one {singular}")
    def get_resource(name: str, response: Response, cp: ControlPlane = Depends(get_cp)) -> dict[str, Any]:
        version, cfg = cp.store.current()
        spec = cfg.get(plural, name)
        if spec is None:
            raise NotFound(f"{singular} {name!r} not found")
        response.headers["X-Flux-Config-Version"] = str(version)
        return spec.masked()

    async def _write(
        cp: ControlPlane, spec: Any, author: str, response: Response, *, create_only: bool
    ) -> dict[str, Any]:
        result = await run_in_threadpool(
            lambda: cp.store.apply([(plural, spec)], author=author, create_only=create_only)
        )
        cp.count("config_writes")
        response.headers["X-Flux-Config-Version"] = str(result.version)
        if any(c.action == "create" for c in result.changes):
            response.status_code = 201
        stored = result.config.get(plural, spec.name)
        assert stored is not None
        return stored.masked()

    @router.post("", status_code=201, summary=f"Create a {singular}")
    async def create_resource(
        body: spec_type,  # type: ignore[valid-type]
        response: Response,
        cp: ControlPlane = Depends(get_cp),
        author: str = Depends(require_admin),
    ) -> dict[str, Any]:
        return await _write(cp, body, author, response, create_only=True)

    @router.put("/{name}", summary=f"Create or replace a {singular}")
    async def put_resource(
        name: str,
        body: spec_type,  # type: ignore[valid-type]
        response: Response,
        cp: ControlPlane = Depends(get_cp),
        author: str = Depends(require_admin),
    ) -> dict[str, Any]:
        if body.name != name:
            raise ConfigError([FieldError(f"{plural}/{name}", "name", f"body names {body.name!r}, URL names {name!r}")])
        return await _write(cp, body, author, response, create_only=False)

    @router.delete("/{name}", summary=f"Delete a {singular}")
    async def delete_resource(
        name: str,
        response: Response,
        cp: ControlPlane = Depends(get_cp),
        author: str = Depends(require_admin),
    ) -> dict[str, Any]:
        result = await run_in_threadpool(lambda: cp.store.apply(deletes=[(plural, name)], author=author))
        cp.count("config_writes")
        response.headers["X-Flux-Config-Version"] = str(result.version)
        return {"deleted": f"{plural}/{name}", "version": result.version}

    return router
