"""Resources: list, view, create, edit and delete every kind, through the REST API.

    GET  /ui/resources/{kind}                 list
    GET  /ui/resources/{kind}/new             empty form (the model's defaults)
    POST /ui/resources/{kind}/new             create (config kinds: POST, 409 if the name exists)
    GET  /ui/resources/{kind}/{name}          the resource as the API reads it (masked) and its form
    POST /ui/resources/{kind}/{name}          replace (PUT)
    POST /ui/resources/{kind}/{name}/delete   delete (409 while in use: the API names the users)

A refused write shows the form again (status 200) with what was typed and each of the API's
errors next to the field it names. Only an admin session gets enabled write controls; the API decides
anyway.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from controlplane.ui.apiclient import ApiError
from controlplane.ui.diffs import as_yaml
from controlplane.ui.forms import FormField, defaults, fields_of, from_form, place_errors, to_form
from controlplane.ui.kinds import UI_KINDS, UiKind
from controlplane.ui.web import Page, page, redirect

router = APIRouter(prefix="/ui/resources", include_in_schema=False)


def _kind(plural: str) -> UiKind | None:
    return UI_KINDS.get(plural)


def _missing(p: Page, plural: str) -> Response:
    return p.render("message.html", 404, title="Not found", message=f"no resource kind {plural!r}")


def _submitted(fields: list[FormField], form: dict[str, str]) -> dict[str, Any]:
    return {f.name: (form.get(f.name) in ("on", "true", "1")) if f.widget == "checkbox" else form.get(f.name, "")
            for f in fields}  # fmt: skip


@router.get("")
async def index() -> Response:
    return redirect("/ui/resources/routes")


@router.get("/{plural}")
async def list_kind(plural: str, p: Page = Depends(page)) -> Response:
    kind = _kind(plural)
    if kind is None:
        return _missing(p, plural)
    body, err = await p.api.get_or_none(kind.api, limit=1000)
    items = (body or {}).get("items", [])
    error = (f"your token may not read this: {err.message}" if err.forbidden else err.message) if err else ""
    return p.render("resource_list.html", kind=kind, items=items, error=error, title=kind.title)


def _form_page(
    p: Page,
    kind: UiKind,
    *,
    name: str,
    values: dict[str, Any],
    resource: dict[str, Any] | None = None,
    errors: dict[str, list[str]] | None = None,
    general: list[str] | None = None,
) -> Response:
    return p.render(
        "resource_form.html",
        kind=kind,
        name=name,
        fields=fields_of(kind.model),
        values=values,
        resource=resource,
        resource_yaml=as_yaml(resource) if resource else "",
        errors=errors or {},
        general=general or [],
        title=f"{kind.singular} {name}" if name else f"New {kind.singular}",
    )


@router.get("/{plural}/new")
async def new_form(plural: str, p: Page = Depends(page)) -> Response:
    kind = _kind(plural)
    if kind is None:
        return _missing(p, plural)
    fields = fields_of(kind.model)
    return _form_page(p, kind, name="", values=defaults(fields, kind.model))


async def _write(p: Page, kind: UiKind, name: str) -> Response:
    """Create (name "") or replace `name` from the POSTed form."""
    form = await p.form()
    fields = fields_of(kind.model)
    body, yaml_errors = from_form(fields, form)
    if name:
        body["name"] = name
    values = _submitted(fields, form)
    resource = None
    if yaml_errors:
        errors = {k: [v] for k, v in yaml_errors.items()}
        return _form_page(p, kind, name=name, values=values, errors=errors)
    try:
        if not name and kind.create == "post":
            answer = await p.api.request("POST", kind.api, json=body)
        else:
            target = name or str(body.get("name", ""))
            if not target:
                return _form_page(p, kind, name=name, values=values, errors={"name": ["a name is needed"]})
            answer = await p.api.request("PUT", kind.item(target), json=body)
    except ApiError as exc:
        if name:
            resource, _ = await p.api.get_or_none(kind.item(name))
        errors, general = place_errors(fields, exc.field_errors())
        return _form_page(p, kind, name=name, values=values, resource=resource, errors=errors, general=general)
    created = str(answer.get("name", body.get("name", "")))
    if kind.plural == "tokens":  # the only time the token is shown
        return p.render("token_created.html", answer=answer, title="Token created")
    p.flash(f"{kind.singular} {created} {'saved' if name else 'created'}")
    return redirect(f"/ui/resources/{kind.plural}/{created}")


@router.post("/{plural}/new")
async def create(plural: str, p: Page = Depends(page)) -> Response:
    kind = _kind(plural)
    if kind is None:
        return _missing(p, plural)
    return await _write(p, kind, "")


@router.get("/{plural}/{name}")
async def view(plural: str, name: str, p: Page = Depends(page)) -> Response:
    kind = _kind(plural)
    if kind is None:
        return _missing(p, plural)
    resource, err = await p.api.get_or_none(kind.item(name))
    if err is not None:
        return p.render("message.html", err.status, title=f"{kind.singular} {name}", message=err.message)
    fields = fields_of(kind.model)
    return _form_page(p, kind, name=name, values=to_form(fields, resource), resource=resource)


@router.post("/{plural}/{name}")
async def replace(plural: str, name: str, p: Page = Depends(page)) -> Response:
    kind = _kind(plural)
    if kind is None or not kind.editable:
        return _missing(p, plural)
    return await _write(p, kind, name)


@router.post("/{plural}/{name}/delete")
async def delete(plural: str, name: str, p: Page = Depends(page)) -> Response:
    kind = _kind(plural)
    if kind is None:
        return _missing(p, plural)
    await p.form()
    try:
        await p.api.request("DELETE", kind.item(name))
    except ApiError as exc:
        p.flash(f"could not delete {kind.singular} {name}: {exc.message}", "error")
        return redirect(f"/ui/resources/{kind.plural}/{name}")
    p.flash(f"{kind.singular} {name} deleted")
    return redirect(f"/ui/resources/{kind.plural}")
