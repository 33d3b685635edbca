"""The OpenAPI documentation pages, served with no outside asset.

`/docs` is Swagger UI from the vendored copy of the npm package swagger-ui-dist under
`static/vendor/swagger-ui/` (see its VERSION and LICENSE; `scripts/vendor_swagger_ui.sh`
refreshes it), instead of FastAPI's default that loads it from a CDN and shows a blank page
without internet. ReDoc is not vendored: `/redoc` sends the reader to `/docs`. The schema
itself stays at `/openapi.json`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse

router = APIRouter(include_in_schema=False)
VENDOR = "/ui/static/vendor/swagger-ui"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title=f"{request.app.title} - API docs",
        swagger_js_url=f"{VENDOR}/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR}/swagger-ui.css",
        swagger_favicon_url="/ui/static/favicon.svg",
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False},
    )


@router.get("/redoc")
async def redoc() -> RedirectResponse:
    return RedirectResponse("/docs", status_code=307)
