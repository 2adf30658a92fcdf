"""Health for orchestrators and operators, and the metrics scrape.

- `GET /livez`: the process serves HTTP (200). Nothing else: a liveness probe that failed on
  a lost store would restart every member at once, and a restart does not bring a store back.
- `GET /readyz`: 200 only when this member can serve sessions: the store takes writes (a write
  transaction that changes nothing, bounded by a timeout), the identity (TLS material) is
  loaded, the member is not draining, and, for its first `fleet.agent_warmup` seconds, every pool
  the store knows has an agent connected here; otherwise 503 naming the checks that failed.
  A restarted member that a balancer sent clients before its agents were back refused
  them with "no agent of pool ... is connected".
- `GET /v1/health`: what is true now: agents connected to this member by pool (pools the store
  knows with none are listed too), the store's state with its error, draining. Without an
  administrator's credential, only the status and counts: no pool or agent name, no error.
- `GET /metrics` (and its alias `/v1/metrics`): the member's metrics in the Prometheus text
  format (gateway/telemetry.py), for administrators like the rest of the admin API.

The probes and `/v1/health` need no credential (kubelets and balancers have none), so what
they show anyone is what a client could learn by trying to connect: ready or not and why in
one word, never a name or a store's error (which can name its host); an administrator's
credential on `/v1/health` gets the detail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway.api.deps import Admin, ApiDeps, identity_of
from gateway.store import Store, StoreUnavailable
from gateway.telemetry import CONTENT_TYPE, Telemetry
from shared.version import __version__

PROBE_TIMEOUT = 2.0  # seconds a store probe may take before the store counts as unavailable
PROBE_TTL = 1.0  # seconds a probe's answer is reused (every kubelet and balancer asks)
MAX_PENDING_COUNT = 10_000  # pending reviews counted per scrape at most


class StoreProbe:
    """Whether the store takes writes, asked at most once per `ttl` and never twice at once:
    a store that hangs holds one worker thread, not one per probe."""

    def __init__(self, store: Store, *, timeout: float = PROBE_TIMEOUT, ttl: float = PROBE_TTL):
        self._store = store
        self._timeout = timeout
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._running: asyncio.Future[None] | None = None
        self._answer: tuple[float, str | None] | None = None  # (when, error or None)

    async def error(self) -> str | None:
        """None when the store takes writes; otherwise why not."""
        async with self._lock:
            now = time.monotonic()
            if self._answer is not None and now - self._answer[0] < self._ttl:
                return self._answer[1]
            error = await self._probe()
            self._answer = (time.monotonic(), error)
            return error

    async def _probe(self) -> str | None:
        running = self._running
        if running is not None and running.done():
            if not running.cancelled():
                running.exception()  # retrieved: a probe that outlived its timeout warns nobody
            running = None
        if running is None:
            loop = asyncio.get_running_loop()
            running = self._running = loop.run_in_executor(None, self._store.check_writable)
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.shield(running)
        except TimeoutError:
            return f"store unavailable: no answer within {self._timeout:g} s"
        except (StoreUnavailable, concurrent.futures.CancelledError) as exc:
            return str(exc) or "store unavailable"
        except Exception as exc:  # a closed store, a driver error: not ready either way
            return f"store unavailable: {exc}"
        return None


def health_router(deps: ApiDeps, telemetry: Telemetry) -> tuple[APIRouter, StoreProbe]:
    router = APIRouter()
    probe = StoreProbe(deps.store)
    telemetry.watch_agents(deps.registry)

    started = time.monotonic()

    def identity_loaded() -> bool:
        return bool(deps.ca_pem) and bool(deps.ca_fingerprint)

    async def agents_back() -> str:
        if time.monotonic() - started >= deps.agent_warmup:
            return "ok"
        await refresh_from_store()
        waiting = sum(1 for names in telemetry.pools().values() if not names)
        return "ok" if not waiting else f"waiting for the agents of {waiting} pool(s)"

    async def refresh_from_store() -> None:
        """The pools the store knows, and the pending reviews: read with a deadline; a store
        that does not answer leaves the last values."""

        def read() -> tuple[frozenset[str], int]:
            pools = frozenset(a.pool for a in deps.store.agents.list_all() if not a.revoked)
            pending = len(deps.store.reviews.list_all(status="pending", limit=MAX_PENDING_COUNT))
            return pools, pending

        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                pools, pending = await deps.store.io.scan(read)
        except Exception:  # the probe says what is wrong with the store
            return
        telemetry.known_pools = pools
        telemetry.reviews_pending = pending

    @router.get("/livez", include_in_schema=False)
    async def livez() -> dict[str, str]:
        return {"status": "live"}

    @router.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        store_error = await probe.error()
        checks = {
            "store": "ok" if store_error is None else "unavailable",
            "identity": "ok" if identity_loaded() else "TLS material not loaded",
            "draining": "draining: not taking new sessions" if deps.draining() else "ok",
            "agents": await agents_back(),
        }
        failed = [name for name, state in checks.items() if state != "ok"]
        body: dict[str, Any] = {"status": "not ready" if failed else "ready", "checks": checks}
        if failed:
            body["failed"] = failed
        return JSONResponse(body, status_code=503 if failed else 200)

    @router.get("/v1/health")
    async def health(request: Request) -> dict[str, Any]:
        """What is true now on this member: agents by pool, the store, draining (the names
        and the store's error for administrators)."""
        who = None
        if request.headers.get("authorization"):
            who = await identity_of(request)  # a bad credential is refused, as anywhere
        store_error = await probe.error()
        if store_error is None:
            await refresh_from_store()
        pools = telemetry.pools()
        empty = [pool for pool, names in pools.items() if not names]
        draining = deps.draining()
        status = (
            "draining"
            if draining
            else "unavailable"
            if store_error is not None
            else "degraded"
            if empty
            else "ok"
        )
        summary: dict[str, Any] = {
            "status": status,
            "version": __version__,
            "agents": sum(len(names) for names in pools.values()),
            "pools_without_agents": len(empty),
            "store": {"status": "ok" if store_error is None else "unavailable"},
            "identity": "loaded" if identity_loaded() else "missing",
            "draining": draining,
        }
        if who is None or not who.is_admin:
            return summary
        store = (
            summary["store"] if store_error is None else {**summary["store"], "error": store_error}
        )
        return {**summary, "pools": pools, "pools_without_agents": empty, "store": store}

    async def scrape() -> Response:
        await refresh_from_store()
        return Response(telemetry.render(), media_type=CONTENT_TYPE)

    @router.get("/metrics", response_class=Response)
    async def metrics(_who: Admin) -> Response:
        """This member's metrics in the Prometheus text format (0.0.4)."""
        return await scrape()

    @router.get("/v1/metrics", response_class=Response)
    async def metrics_v1(_who: Admin) -> Response:
        """The same as `/metrics` (the older path)."""
        return await scrape()

    return router, probe
