"""`GET /v1/metrics`: the gateway member's counters in the Prometheus text format
(gateway/metrics.py), for administrators (`authorization: {credentials: wgt_...}` in the
scrape config)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from gateway import metrics
from gateway.api.app import Admin


def metrics_router(sources: Iterable[Callable[[], Iterable[metrics.Counter]]]) -> APIRouter:
    router = APIRouter()
    parts = list(sources)

    @router.get("/v1/metrics", response_class=PlainTextResponse)
    async def metrics_text(_who: Admin) -> PlainTextResponse:
        """Counters in the Prometheus text format (this member's own)."""
        counters = [counter for source in parts for counter in source()]
        return PlainTextResponse(metrics.render(counters), media_type=metrics.CONTENT_TYPE)

    return router
