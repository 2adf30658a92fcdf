"""`GET /metrics`: the gateway's Prometheus metrics (gateway/metrics.py).

Any valid Wardgate credential may read them: the numbers say how busy the public port is,
nothing about who uses it or what. Give Prometheus an API key of a user with no grants
(`authorization: {credentials: wgt_...}` in its scrape config).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from gateway.api.app import User
from gateway.metrics import Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_router(registry: Registry) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics(_who: User) -> PlainTextResponse:
        """The gateway's metrics in Prometheus' text format."""
        return PlainTextResponse(registry.render(), media_type=CONTENT_TYPE)

    return router
