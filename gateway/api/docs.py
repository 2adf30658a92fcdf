"""/docs: the API's Swagger UI, served by the gateway itself.

FastAPI's own /docs and /redoc load their JavaScript and CSS from a CDN, so a gateway
without Internet access showed a blank page. Both are turned off (`FastAPI(docs_url=None,
redoc_url=None)`); this page loads Swagger UI from the `swagger-ui-bundle` package under
/docs/assets/. ReDoc ships in no package we install, so /redoc is gone rather than broken.

The bundled Swagger UI (4.x) reads OpenAPI 3.0, while FastAPI writes 3.1: the page reads
/docs/openapi.json, the same document labelled 3.0.3 with 3.1's `{"type": "null"}`
alternatives written as 3.0's `nullable`. /openapi.json itself is unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # no stubs

ASSETS = "/docs/assets"
DOCS_OPENAPI = "/docs/openapi.json"
OPENAPI_30 = "3.0.3"


def mount(app: FastAPI) -> None:
    """Add /docs, /docs/openapi.json and /docs/assets/ to `app` (built with docs_url=None)."""

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        # Behind a path prefix (root_path) the page and its assets move with the API.
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + DOCS_OPENAPI,
            title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png",
        )

    @app.get(DOCS_OPENAPI, include_in_schema=False)
    async def docs_openapi() -> dict[str, Any]:
        return as_openapi_30(app.openapi())

    app.mount(ASSETS, StaticFiles(directory=Path(str(swagger_ui_path))), name="swagger-ui")


def as_openapi_30(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (OpenAPI 3.1) as Swagger UI 4 reads it: version 3.0.3, nulls as `nullable`."""
    converted = _nullable(document)
    assert isinstance(converted, dict)
    converted["openapi"] = OPENAPI_30
    return converted


def _nullable(value: Any) -> Any:
    if isinstance(value, list):
        return [_nullable(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _nullable(v) for k, v in value.items()}
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if not isinstance(options, list) or {"type": "null"} not in options:
            continue
        rest = [o for o in options if o != {"type": "null"}]
        out.pop(key)
        if len(rest) == 1 and isinstance(rest[0], dict):
            out = {**rest[0], **out}  # the field's own title, default... win
        elif rest:
            out[key] = rest
        out["nullable"] = True
    return out
