"""Rollouts over REST, and which nodes took a config version.

    POST /api/v1/apply?canary=25&bake=2m[&by_group=true]   (controlplane.api.config) -> {"rollout": {...}}
    GET  /api/v1/rollouts                   recent rollouts, newest first
    GET  /api/v1/rollouts/{id}              one: status, stage, canaries, analysis, events, its nodes' answers
    POST /api/v1/rollouts/{id}/abort        roll it back now (admin)
    POST /api/v1/rollouts/{id}/promote      release every node now (admin)
    GET  /api/v1/config/versions/{v}/nodes?wait=30s
                                            the connected nodes of the groups version v changed: acked,
                                            refused (with resource and reason) or pending; waits up to
                                            `wait` while any is pending (what `fluxctl apply` waits on)

The rollouts themselves live in controlplane.rollouts; this module only parses and answers.
"""

# No `from __future__ import annotations`: FastAPI reads the parameter types at runtime.

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from controlplane.api.state import ControlPlane, get_cp, require_admin
from controlplane.discovery.hold import base_node_id
from controlplane.rollouts.analysis import Criteria
from controlplane.rollouts.answers import answers, summary
from controlplane.rollouts.driver import RolloutManager
from controlplane.rollouts.plan import affected_groups
from controlplane.rollouts.start import RolloutStart
from controlplane.rollouts.store import as_dict
from controlplane.spec import ConfigSet
from controlplane.spec._types import MAX_INT64
from controlplane.store.config_store import NotFound
from controlplane.validation import ConfigError, FieldError
from fluxcommon.durations import parse_duration_ms

router = APIRouter(prefix="/api/v1", tags=["rollouts"])

MAX_WAIT_MS = 600_000
POLL = 0.25  # seconds between looks at the nodes while waiting


def _duration(name: str, value: str | None, default_ms: int) -> int:
    if value is None or value == "":
        return default_ms
    try:
        return parse_duration_ms(value)
    except ValueError as exc:
        raise ConfigError([FieldError("", name, str(exc))]) from None


@dataclass(frozen=True)
class RolloutParams:
    """The rollout a `POST /api/v1/apply` asks for (none: an ordinary write)."""

    canary: int | None
    bake_ms: int
    by_group: bool
    criteria: Criteria

    @property
    def wanted(self) -> bool:
        return bool(self.canary) or self.by_group


def rollout_params(
    canary: int | None = Query(
        None, ge=1, le=100, description="config canary: this percent of each changed group's nodes first (at least one)"
    ),
    bake: str | None = Query(
        None, description="how long each stage is watched after its nodes ACK: 2m, 30s (default 1m with canary, else 0)"
    ),
    by_group: bool = Query(False, description="release the changed node groups one after another"),
    min_requests: int | None = Query(None, ge=0, le=MAX_INT64, description="canary requests needed to judge (20)"),
    max_error_increase: float | None = Query(
        None, ge=0, le=1, description="how far the canaries' 5xx share may exceed the rest's (0.05)"
    ),
    max_latency_ratio: float | None = Query(None, ge=1, description="canary p90 latency over the rest's (1.5)"),
    ack_timeout: str | None = Query(None, description="how long released nodes have to ACK or NACK (30s)"),
) -> RolloutParams:
    defaults = Criteria()
    criteria = Criteria(
        max_error_increase=defaults.max_error_increase if max_error_increase is None else max_error_increase,
        max_latency_ratio=defaults.max_latency_ratio if max_latency_ratio is None else max_latency_ratio,
        min_requests=defaults.min_requests if min_requests is None else min_requests,
        ack_timeout=_duration("ack_timeout", ack_timeout, int(defaults.ack_timeout * 1000)) / 1000,
    )
    bake_ms = _duration("bake", bake, 60_000 if canary else 0)
    if bake is not None and not (canary or by_group):
        raise ConfigError([FieldError("", "bake", "bake needs canary or by_group")])
    return RolloutParams(canary=canary, bake_ms=bake_ms, by_group=by_group, criteria=criteria)


def manager(request: Request) -> RolloutManager | None:
    return getattr(request.app.state, "rollouts", None)


async def rollout_start(
    request: Request, params: RolloutParams, cp: ControlPlane, author: str, dry_run: bool
) -> RolloutStart | None:
    """The `before_commit` of an apply that asked for a rollout (None for an ordinary one)."""
    if not params.wanted or dry_run:
        return None
    mgr = manager(request)
    if mgr is None:
        raise ConfigError([FieldError("", "canary", "this control plane runs no rollouts")], status=503)
    nodes = await run_in_threadpool(cp.nodes.list)
    return RolloutStart(
        nodes=nodes,
        canary=params.canary or 0,
        bake_ms=params.bake_ms,
        by_group=params.by_group,
        criteria=params.criteria,
        author=author,
        owner=mgr.owner,
    )


async def started(request: Request, start: RolloutStart | None) -> dict[str, Any] | None:
    """The rollout an apply started, as `GET /api/v1/rollouts/{id}` shows it (the manager woken)."""
    mgr = manager(request)
    if start is None or start.row is None or mgr is None:
        return None
    mgr.wake.set()
    row = await run_in_threadpool(mgr.rollouts.get, start.rollout_id)
    return as_dict(row) if row is not None else None


def _mgr(request: Request) -> RolloutManager:
    mgr = manager(request)
    if mgr is None:
        raise ConfigError([FieldError("", "", "this control plane runs no rollouts")], status=503)
    return mgr


def _not_found(rollout_id: str) -> JSONResponse:
    return JSONResponse({"error": "not_found", "message": f"rollout {rollout_id!r} not known"}, status_code=404)


@router.get("/rollouts", summary="Recent rollouts, newest first")
async def list_rollouts(request: Request, limit: int = Query(20, ge=1, le=200)) -> dict[str, Any]:
    rows = await run_in_threadpool(_mgr(request).rollouts.list, limit)
    items = [as_dict(r) for r in rows]
    return {"items": items, "total": len(items)}


@router.get("/rollouts/{rollout_id}", summary="One rollout: status, stage, canaries, analysis, events, nodes")
async def get_rollout(rollout_id: str, request: Request, cp: ControlPlane = Depends(get_cp)) -> Any:
    mgr = _mgr(request)
    row = await run_in_threadpool(mgr.rollouts.get, rollout_id)
    if row is None:
        return _not_found(rollout_id)
    doc = as_dict(row)
    nodes = await run_in_threadpool(cp.nodes.list)
    target = row.rollback_version if row.status == "rolled_back" and row.rollback_version else row.to_version
    items = []
    for a in answers(nodes, target, row.groups):
        entry = a.as_dict()
        canary = base_node_id(a.node_id) in row.canaries
        held = row.status == "running" and not canary and a.group not in row.released_groups
        entry["role"] = "canary" if canary else ("held" if held else "released")
        items.append(entry)
    doc["nodes"] = items
    doc["nodes_version"] = target
    return doc


@router.post("/rollouts/{rollout_id}/abort", summary="Roll a running rollout back now")
async def abort_rollout(rollout_id: str, request: Request, author: str = Depends(require_admin)) -> Any:
    row = await _mgr(request).abort(rollout_id, author)
    if row is None:
        return _not_found(rollout_id)
    return as_dict(row)


@router.post("/rollouts/{rollout_id}/promote", summary="Release every node of a running rollout now")
async def promote_rollout(rollout_id: str, request: Request, author: str = Depends(require_admin)) -> Any:
    row = await _mgr(request).promote(rollout_id, author)
    if row is None:
        return _not_found(rollout_id)
    return as_dict(row)


def _groups_changed_by(cp: ControlPlane, version: int, known: set[str]) -> list[str]:
    after = cp.store.config_at(version)
    try:
        before = cp.store.config_at(version - 1) if version > 1 else ConfigSet()
    except NotFound:  # history pruned: every group may have changed
        before = ConfigSet()
    return affected_groups(before, after, known)


@router.get("/config/versions/{version}/nodes", summary="Which nodes of the groups a version changed took it")
async def version_nodes(
    version: int = Path(ge=1, le=MAX_INT64),
    wait: str | None = Query(None, description="wait this long (at most 10m) while a node has not answered"),
    cp: ControlPlane = Depends(get_cp),
) -> dict[str, Any]:
    wait_ms = _duration("wait", wait, 0)
    if wait_ms > MAX_WAIT_MS:
        raise ConfigError([FieldError("", "wait", "at most 10m")])
    deadline = time.monotonic() + wait_ms / 1000
    nodes = await run_in_threadpool(cp.nodes.list)
    groups = await run_in_threadpool(_groups_changed_by, cp, version, {n.node_group for n in nodes if n.connected})
    while True:
        items = answers(nodes, version, groups)
        counts = summary(items)
        if not counts["pending"] or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL)
        nodes = await run_in_threadpool(cp.nodes.list)
    return {
        "version": version,
        "current_version": await run_in_threadpool(cp.store.db_version),
        "groups": groups,
        "done": not counts["pending"],
        **counts,
        "nodes": [a.as_dict() for a in items],
    }
