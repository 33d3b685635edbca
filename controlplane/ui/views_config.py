"""The YAML editor (dry run first, then apply) and the config history (diff, rollback).

GET  /ui/apply                       the editor (`?current=1`: the current config, masked)
POST /ui/apply                       action=dry-run: `POST /api/v1/apply?dry_run=true`, shows the diff;
                                     action=apply: applies what was dry-run, if the config has not
                                     moved since (else shows the new diff instead)
GET  /ui/history                     versions with author and summary
GET  /ui/history/diff?a=N&b=M        what changed from version N to version M
GET  /ui/history/{v}/rollback        confirmation: what rolling back would change
POST /ui/history/{v}/rollback        `POST /api/v1/config/rollback {"version": v}`
"""

from __future__ import annotations

from typing import Any

import yaml
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from controlplane.spec._types import MAX_INT64
from controlplane.ui.apiclient import ApiError
from controlplane.ui.diffs import as_yaml, dry_run_diffs, version_diffs
from controlplane.ui.web import Page, page, redirect
from fluxcommon import yamlsafe

router = APIRouter(prefix="/ui", include_in_schema=False)

EXAMPLE = """\
# Resources in the shapes of `fluxctl apply -f` (listeners, clusters, routes, policies, ...).
clusters:
  - name: example
    endpoints:
      - {address: 127.0.0.1, port: 9001}
"""


def _parse(text: str) -> tuple[dict[str, Any] | None, str]:
    try:
        doc = yamlsafe.load(text)
    except yaml.YAMLError as exc:
        return None, f"not valid YAML: {' '.join(str(exc).split())}"
    if not isinstance(doc, dict):
        return None, "the document must be a mapping of kinds to lists (listeners: [...], routes: [...])"
    doc.pop("version", None)  # an export's version line
    return doc, ""


def _editor(p: Page, **values: Any) -> Response:
    values.setdefault("text", EXAMPLE)
    values.setdefault("prune", False)
    values.setdefault("error", "")
    values.setdefault("errors", [])
    values.setdefault("diffs", None)
    values.setdefault("base_version", "")
    values.setdefault("notice", "")
    return p.render("apply.html", title="YAML editor", **values)


@router.get("/apply")
async def editor(current: bool = False, p: Page = Depends(page)) -> Response:
    if not current:
        return _editor(p)
    doc = await p.api.get("/api/v1/config/export")
    doc.pop("version", None)
    return _editor(p, text=as_yaml(doc) or "{}\n")


async def _dry_run(p: Page, doc: dict[str, Any], text: str, prune: bool, notice: str = "") -> Response:
    config = await p.api.get("/api/v1/config")
    params = {"dry_run": "true", **({"prune": "true"} if prune else {})}
    try:
        answer = await p.api.request("POST", "/api/v1/apply", json=doc, params=params)
    except ApiError as exc:
        errors = [f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in exc.field_errors()]
        resources = [e.get("resource", "") for e in (exc.body.get("errors") or [])]
        if resources and all(resources) and len(resources) == len(errors):
            errors = [f"{r}: {e}" for r, e in zip(resources, errors, strict=True)]
        return _editor(p, text=text, prune=prune, error="The API refused this document.", errors=errors)
    diffs = dry_run_diffs(answer)
    return _editor(
        p,
        text=text,
        prune=prune,
        diffs=diffs,
        base_version=str(config["version"]),
        secrets_compared=answer.get("secrets_compared", True),
        notice=notice,
    )


@router.post("/apply")
async def apply(p: Page = Depends(page)) -> Response:
    form = await p.form()
    text = form.get("yaml", "").replace("\r\n", "\n")
    prune = form.get("prune") == "on"
    doc, problem = _parse(text)
    if doc is None:
        return _editor(p, text=text, prune=prune, error=problem)
    if form.get("action") != "apply":
        return await _dry_run(p, doc, text, prune)
    config = await p.api.get("/api/v1/config")
    if str(config["version"]) != form.get("base_version"):
        notice = f"The config changed since your dry run (now version {config['version']}): review the diff again."
        return await _dry_run(p, doc, text, prune, notice)
    try:
        answer = await p.api.request("POST", "/api/v1/apply", json=doc, params={"prune": "true"} if prune else None)
    except ApiError as exc:
        errors = [f"{e['field']}: {e['message']}" for e in exc.field_errors()]
        return _editor(p, text=text, prune=prune, error=exc.message, errors=errors)
    if answer.get("committed"):
        p.flash(f"applied: config version {answer['version']}")
    else:
        p.flash("nothing to change: the config already matches")
    return redirect("/ui/history")


@router.get("/history")
async def history(offset: int = Query(0, ge=0, le=MAX_INT64), p: Page = Depends(page)) -> Response:
    body = await p.api.get("/api/v1/config/history", limit=50, offset=offset)
    items = body.get("items", [])
    return p.render(
        "history.html",
        items=items,
        total=body.get("total", 0),
        offset=offset,
        current=items[0]["version"] if items and offset == 0 else None,
        title="History",
    )


async def _version_doc(p: Page, version: int) -> dict[str, Any]:
    if version == 0:
        return {}
    return dict(await p.api.get(f"/api/v1/config/history/{version}"))


@router.get("/history/diff")
async def history_diff(
    a: int = Query(ge=0, le=MAX_INT64), b: int = Query(ge=0, le=MAX_INT64), p: Page = Depends(page)
) -> Response:
    try:
        diffs = version_diffs(await _version_doc(p, a), await _version_doc(p, b))
    except ApiError as exc:
        return p.render("message.html", exc.status, title="History", message=exc.message)
    return p.render("history_diff.html", a=a, b=b, diffs=diffs, title=f"Diff {a} → {b}")


@router.get("/history/{version}/rollback")
async def rollback_confirm(version: int, p: Page = Depends(page)) -> Response:
    if version < 1:  # the API's floor: offering it led to "rollback refused: version: ... >= 1"
        return p.render("message.html", 404, title="Rollback", message=f"version {version} is not in the history")
    current = (await p.api.get("/api/v1/config"))["version"]
    try:
        diffs = version_diffs(await _version_doc(p, current), await _version_doc(p, version))
    except ApiError as exc:
        return p.render("message.html", exc.status, title="Rollback", message=exc.message)
    return p.render("rollback.html", version=version, current=current, diffs=diffs, title=f"Roll back to {version}")


@router.post("/history/{version}/rollback")
async def rollback(version: int, p: Page = Depends(page)) -> Response:
    await p.form()
    try:
        answer = await p.api.request("POST", "/api/v1/config/rollback", json={"version": version})
    except ApiError as exc:
        p.flash(f"rollback refused: {exc.message}", "error")
        return redirect("/ui/history")
    p.flash(f"rolled back to version {version}: now config version {answer['version']}")
    return redirect("/ui/history")
