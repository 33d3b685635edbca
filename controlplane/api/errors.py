"""JSON errors that name the field at fault, for every 4xx the API returns.

Shape: {"error": CODE, "message": TEXT, "field": FIELD, "errors": [{resource, field, message}]}
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controlplane.store.config_store import NotFound
from controlplane.validation import ConfigError


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
    errors: list[dict[str, Any]], resource: str = "", *, located: bool = True
) -> list[dict[str, str]]:
    """Field errors from pydantic's; `located=False` for a model validated outside FastAPI's
    request parsing (its locs start at the model's own fields)."""
    out = []
    for e in errors:
        field = _field_path(tuple(e.get("loc", ())), located)
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        head, sep, rest = msg.partition(": ")
        if sep and " " not in head and "'" not in head:
            field = f"{field}.{head}" if field and not field.endswith(head) else head
            msg = rest
        out.append({"resource": resource, "field": field, "message": msg})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errs):
            ctx = errs[0].get("ctx", {}) or {}
            return error_response(400, "malformed_json", f"request body is not valid JSON: {ctx.get('error', '')}")
        details = validation_errors(errs)
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
