"""Rendering: the templates, the security headers every console response carries, and the
static files served with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from fastapi import Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from shared.version import __version__

HERE = Path(__file__).parent

# No inline script or style anywhere: every script and stylesheet is a file under /console/.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, browsers send `Origin: null` on a same-origin POST.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# The session page with a recording: asciinema-player's terminal emulator is WebAssembly,
# which a browser compiles only with 'wasm-unsafe-eval' (it allows no JavaScript eval).
PLAYER_CSP = HEADERS["Content-Security-Policy"].replace(
    "script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'"
)

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


class Static(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(version=__version__, **context)
    response = HTMLResponse(html, status_code=status)
    response.headers.update(HEADERS)
    response.headers["Cache-Control"] = "no-store"
    return response


def redirect(url: str, **headers: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    response.headers.update(HEADERS)
    response.headers.update(headers)
    return response
