"""Request bodies of the HTTP API are bounded before they are read.

A body is refused with 413 as soon as its declared length (Content-Length) or the bytes that
have arrived (chunked) pass the limit of its path: small for sign-in and token exchange,
which anyone may call, larger for what administrators apply. The Kubernetes proxy and the
WebSocket entries are not the API's and are left alone. A validation error (422) says what
is wrong and where, never the input itself: a token sent in the wrong field must not come
back in the answer.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

AUTH_BODY = 64 * 1024  # sign-in, refresh, token exchange: anyone may send these
API_BODY = 4 * 1024 * 1024  # connections, policy: many entries at once


def body_limit(path: str) -> int | None:
    if not path.startswith("/v1/"):
        return None
    return AUTH_BODY if path.startswith("/v1/auth/") else API_BODY


class BodyLimit:
    """ASGI middleware: 413 for a body over the limit of its path, before it is buffered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = body_limit(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(send, limit)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit and not refused:
                    refused = True
                    await _too_large(send, limit)
                    return {"type": "http.disconnect"}  # the app stops reading here
            return message

        async def guarded(message: Message) -> None:
            if not refused:  # once we answered, the app's own answer goes nowhere
                await send(message)

        await self.app(scope, counted, guarded)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"request body over {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI) -> None:
    app.add_middleware(BodyLimit)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors: list[dict[str, Any]] = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)
