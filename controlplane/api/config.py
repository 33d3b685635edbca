"""Whole-config endpoints: current version, history, rollback, and batch apply."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from controlplane.api import access, rollouts
from controlplane.api.access import authorize
from controlplane.api.apply_body import OPENAPI_BODY, apply_document, parse_apply
from controlplane.api.state import ControlPlane, get_cp, require_admin
from controlplane.api_tokens import Principal
from controlplane.spec import KINDS, ResourceSpec
from controlplane.spec._types import MAX_INT64

router = APIRouter(prefix="/api/v1", tags=["config"])


@router.get("/config", summary="Current config version and resource counts")
def get_config(cp: ControlPlane = Depends(get_cp)) -> dict[str, Any]:
    version, cfg = cp.store.current()
    return {
        "version": version,
        "digest": cfg.digest(),
        "resources": {plural: len(cfg[plural]) for plural in KINDS},
        "published_version": cp.cache.version,
    }


@router.get("/config/export", summary="The whole current config (secrets masked), as `fluxctl apply` takes it")
def export_config(cp: ControlPlane = Depends(get_cp)) -> dict[str, Any]:
    version, cfg = cp.store.current()
    doc: dict[str, Any] = {"version": version}
    for plural, spec in cfg.iter_all():
        doc.setdefault(plural, []).append(spec.masked())
    return doc


@router.get("/config/history", summary="Committed versions, newest first")
def get_history(
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_INT64),
    cp: ControlPlane = Depends(get_cp),
) -> dict[str, Any]:
    total, entries = cp.store.history(limit=limit, offset=offset)
    return {"items": [e.as_dict() for e in entries], "total": total, "limit": limit, "offset": offset}


@router.get("/config/history/{version}", summary="One version's whole config (secrets masked)")
def get_history_version(version: int = Path(ge=0, le=MAX_INT64), cp: ControlPlane = Depends(get_cp)) -> dict[str, Any]:
    cfg = cp.store.config_at(version)
    doc: dict[str, Any] = {"version": version}
    for plural, spec in cfg.iter_all():
        doc.setdefault(plural, []).append(spec.masked())
    return doc


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=MAX_INT64)


@router.post("/config/rollback", summary="Make an earlier version current again (as a new version)")
async def rollback(
    body: RollbackRequest, cp: ControlPlane = Depends(get_cp), author: str = Depends(require_admin)
) -> dict[str, Any]:
    result = await run_in_threadpool(lambda: cp.store.rollback(body.version, author=author))
    cp.count("config_writes")
    return {
        "version": result.version,
        "rolled_back_to": body.version,
        "committed": result.committed,
        "changes": [c.as_dict() for c in result.changes if c.action != "unchanged"],
    }


@router.post(
    "/apply",
    summary="Create or update many resources in one version (fluxctl apply); JSON or YAML",
    openapi_extra=OPENAPI_BODY,
)
async def apply(
    request: Request,
    resources: dict[str, Any] = Depends(apply_document),  # JSON or YAML (controlplane.api.apply_body)
    prune: bool = Query(False, description="delete resources of the named kinds that the body does not name"),
    dry_run: bool = Query(
        False, description="validate and report the changes, commit nothing (the read role may; it compares no secret)"
    ),
    cp: ControlPlane = Depends(get_cp),
    principal: Principal | None = Depends(authorize),  # admin, or read for a dry run (controlplane.api.access)
    author: str = Depends(access.author),
    staged: rollouts.RolloutParams = Depends(rollouts.rollout_params),  # ?canary=25&bake=2m&by_group=true
) -> dict[str, Any]:
    if not dry_run and principal is not None:
        access.check_need(access.Need("admin"), principal)  # again, on the value FastAPI parsed
    resources.pop("version", None)
    puts, kinds_named = parse_apply(resources, cp.store.current()[1])  # every problem at once
    start = await rollouts.rollout_start(request, staged, cp, author, dry_run)  # None: an ordinary write

    def run() -> tuple[Any, Any]:
        _, before = cp.store.current()
        deletes: list[tuple[str, str]] = []
        if prune:
            named = {(p, s.name) for p, s in puts}
            deletes = [(p, n) for p in kinds_named for n in before[p] if (p, n) not in named]
        return before, cp.store.apply(
            puts, deletes, author=author, dry_run=dry_run, allow_missing_deletes=True, before_commit=start
        )

    before, result = await run_in_threadpool(run)
    if result.committed:
        cp.count("config_writes")
    answer: dict[str, Any] = {
        "version": result.version,
        "committed": result.committed,
        "dry_run": dry_run,
        "changes": [c.as_dict() for c in result.changes],
    }
    if start is not None:
        answer["rollout"] = await rollouts.started(request, start)  # None: no node group's snapshot changed
    if dry_run:
        after = before.with_changes(
            [(p, s.keep_secrets_from(before.get(p, s.name))) for p, s in puts],
            [(c.kind, c.name) for c in result.changes if c.action == "delete"],
        )
        answer["diff"] = {
            f"{c.kind}/{c.name}": {
                "before": _masked(before.get(c.kind, c.name)),
                "after": _masked(after.get(c.kind, c.name)),
            }
            for c in result.changes
            if c.action != "unchanged"
        }
        if principal is None or principal.role != "admin":
            _blind_to_secrets(answer)
    return answer


def _masked(spec: ResourceSpec | None) -> dict[str, Any] | None:
    return spec.masked() if spec is not None else None


def _unkeyed(doc: Any) -> Any:
    """A masked form without fingerprints (keyed hashes of secret values)."""
    if isinstance(doc, dict):
        return {k: _unkeyed(v) for k, v in doc.items() if k != "fingerprint"}
    if isinstance(doc, list):
        return [_unkeyed(v) for v in doc]
    return doc


def _blind_to_secrets(answer: dict[str, Any]) -> None:
    """A dry run of a non-admin compares no secret: were a change of a secret value (or
    the fingerprint of a submitted key) shown, a reader could test guesses of the stored
    secrets. A resource whose masked form is unchanged reads `unchanged`."""
    diff: dict[str, Any] = answer["diff"]
    for change in answer["changes"]:
        key = f"{change['kind']}/{change['name']}"
        if key not in diff:
            continue
        before, after = _unkeyed(diff[key]["before"]), _unkeyed(diff[key]["after"])
        if change["action"] == "update" and before == after:
            change["action"] = "unchanged"
            del diff[key]
        else:
            diff[key] = {"before": before, "after": after}
    answer["secrets_compared"] = False
