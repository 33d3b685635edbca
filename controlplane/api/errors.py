"""JSON errors that name the field at fault, for every 4xx the API returns.

Shape: {"error": CODE, "message": TEXT, "field": FIELD, "errors": [{resource, field, message}]}
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from controlplane.store.config_store import NotFound
from controlplane.validation import ConfigError
from fluxcommon.didyoumean import unknown_field


def error_body(code: str, message: str, field: str = "", errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "message": message}
    if field:
        body["field"] = field
    if errors:
        body["errors"] = errors
    return body


def error_response(status: int, code: str, message: str, **kw: Any) -> JSONResponse:
    headers = kw.pop("headers", None)
    return JSONResponse(error_body(code, message, **kw), status_code=status, headers=headers)


_LOCATIONS = ("body", "query", "path", "header", "cookie")


def _field_path(loc: tuple[Any, ...], located: bool = True) -> str:
    """ "endpoints[0].weight" from a pydantic loc; `located`: the loc starts with where in the
    request the value was (FastAPI's "body", "query", ...), which is left out. (Only the first
    part: a field may be named "path" too.)"""
    if located and loc and loc[0] in _LOCATIONS:
        loc = loc[1:]
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-after[", "function-before[", "tagged-union[")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_errors(
    errors: list[dict[str, Any]],
    resource: str = "",
    *,
    located: bool = True,
    model: type[BaseModel] | None = None,
    raw: Any = None,
) -> list[dict[str, str]]:
    """Field errors from pydantic's, every one; `located=False` for a model validated outside
    FastAPI's request parsing (its locs start at the model's own fields). With the `model`
    the body was read as, an unknown field gets a did-you-mean; with the `raw` body too, a
    model's `config_problems(raw)` (policies: their config, checked by its type's schema)
    stands for every error it covers, so that all of the config's problems are named."""
    out = []
    for e in errors:
        loc = tuple(e.get("loc", ()))
        if located and loc and loc[0] in _LOCATIONS:
            loc = loc[1:]
        field = _field_path(loc, located=False)
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            msg = unknown_field(model, loc) if model is not None else "unknown field"
        elif msg == "Field required":
            msg = "required"
        head, sep, rest = msg.partition(": ")
        if sep and " " not in head and "'" not in head:
            field = f"{field}.{head}" if field and not field.endswith(head) else head
            msg = rest
        out.append({"resource": resource, "field": field, "message": msg})
    own = getattr(model, "config_problems", None)
    covered = own(raw) if own is not None else None
    if covered is not None:
        out = [e for e in out if not _under(e["field"], "config")]
        out += [{"resource": resource, "field": f, "message": m} for f, m in covered]
    return out


def _under(field: str, prefix: str) -> bool:
    return field == prefix or field.startswith((prefix + ".", prefix + "["))


def _body_model(request: Request) -> type[BaseModel] | None:
    """The model the matched route reads its body as (for did-you-mean), if it is one."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    annotation = getattr(getattr(body_field, "field_info", None), "annotation", None)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errs):
            ctx = errs[0].get("ctx", {}) or {}
            return error_response(400, "malformed_json", f"request body is not valid JSON: {ctx.get('error', '')}")
        details = validation_errors(errs, model=_body_model(request), raw=exc.body)
        first = details[0] if details else {"field": "", "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return error_response(422, "invalid_request", message, field=first["field"], errors=details)

    @app.exception_handler(ConfigError)
    async def _config(_request: Request, exc: ConfigError) -> JSONResponse:
        first = exc.errors[0]
        code = "conflict" if exc.status == 409 else "invalid_config"
        return error_response(exc.status, code, str(first), field=first.field, errors=[e.as_dict() for e in exc.errors])

    @app.exception_handler(NotFound)
    async def _missing(_request: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, "not_found", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
        }
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(
            exc.status_code,
            codes.get(exc.status_code, "error"),
            detail,
            headers=getattr(exc, "headers", None),
        )
