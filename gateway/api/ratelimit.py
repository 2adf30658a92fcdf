"""Rate limits of sign-in and of refused credentials: 429 with Retry-After, a bounded audit trail.

Every endpoint anyone may call to get a credential (OIDC sign-in start and callback, device
flow start and poll, refresh, workload exchange, local-user login) runs inside
`AuthLimiter.attempt`, which charges the attempt to the client's address and, when the
request claims one, to an identity (`gateway.ratelimit` has the rules). Every door that
refuses a presented credential (the API's bearer check, the TCP WebSocket, the Kubernetes,
PostgreSQL and SSH doors) calls `AuthLimiter.rejected` after the fact, against the same
address limit, and answers in its own protocol once over it. The client address is the TCP
peer: the gateway terminates TLS itself and trusts no forwarded header.

The audit log keeps counting refusals without growing with them: the first refusal of a key
in a window is one `auth.rate_limited` event as it happens; when the window's counter is
pruned, one more event gives the window's total, if it refused more than once. Failed
attempts themselves (`auth.failed`, `auth.rejected`, ...) are bounded by the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import HTTPException, Request

from gateway.audit import Auditor, durable
from gateway.config import RateLimitConfig
from gateway.identity.credentials import FlowPending
from gateway.metrics import Counter
from gateway.ratelimit import Charge, Key, Limited, Refusal, Rule, address_key
from gateway.store import Store

log = logging.getLogger(__name__)


def as_http(limited: Limited) -> HTTPException:
    return HTTPException(429, limited.message, headers={"Retry-After": str(limited.retry_after)})


class AuthLimiter:
    def __init__(self, store: Store, auditor: Auditor, config: RateLimitConfig) -> None:
        self._store = store
        self._audit = auditor
        self.config = config
        self._address = Rule(config.per_address.attempts, config.per_address.window)
        self._identity = Rule(config.per_identity.attempts, config.per_identity.window)
        self.refused = Counter(
            "wardgate_auth_rate_limited_total",
            "Sign-in requests refused with 429 by a rate limit, by limit and endpoint.",
            ("limit", "endpoint"),
        )

    def _charges(self, host: str, identity: str | None) -> list[Charge]:
        charges = [Charge(Key.of("address", address_key(host)), self._address)]
        if identity is not None:
            charges.append(Charge(Key.of("identity", identity), self._identity))
        return charges

    @contextlib.asynccontextmanager
    async def attempt(
        self,
        request: Request,
        endpoint: str,
        *,
        identity: str | None = None,
        refund_success: bool = True,
    ) -> AsyncIterator[None]:
        """Run one sign-in attempt: 429 when a key is over its limit. A success (unless
        `refund_success` is off: every call costs the IdP a request) and a device flow still
        pending are given back; every failure stays charged, an IdP outage's (502) too,
        since each wrote an `auth.failed` event."""
        if not self.config.enabled:
            yield
            return
        host = request.client.host if request.client else "-"
        charges = self._charges(host, identity)
        result = await self._store.io.write(self._store.rate_limits.charge, charges)
        if isinstance(result, Refusal):
            raise as_http(await self._refuse(host, endpoint, result))
        clear: list[Key] = []
        refund = False
        try:
            yield
        except FlowPending:
            refund = True
            raise
        else:
            refund = refund_success
            clear = [c.key for c in charges if c.key.kind == "identity"]
        finally:
            # Not when cancelled (the client hung up): the attempt stays charged.
            if refund and not _cancelling():
                await self._store.io.write(self._store.rate_limits.refund, result, clear=clear)

    async def rejected(self, host: str, endpoint: str) -> Limited | None:
        """Charge a credential a door refused (a bad bearer) to its client address `host`,
        after the fact: a request with a good one costs nothing. Over the limit: the refusal
        to answer instead of recording one more `auth.rejected`."""
        if not self.config.enabled:
            return None
        result = await self._store.io.write(
            self._store.rate_limits.charge, self._charges(host, None)
        )
        if isinstance(result, Refusal):
            return await self._refuse(host, endpoint, result)
        return None

    async def _refuse(self, host: str, endpoint: str, refusal: Refusal) -> Limited:
        self.refused.inc(refusal.key.kind, endpoint)
        if refusal.first:  # one event per key and window; the rest are summed when pruned
            await self._audit.record(
                "auth.rate_limited",
                **_subject(refusal.key),
                endpoint=endpoint,
                client=host,
                limit=refusal.rule.attempts,
                window=refusal.rule.window,
                retry_after=refusal.retry_after,
            )
        who = "this address" if refusal.key.kind == "address" else "this identity"
        return Limited(
            f"too many failed sign-in attempts from {who}: retry in {refusal.retry_after} s",
            refusal.retry_after,
        )

    async def prune(self) -> int:
        """Delete counters past their windows; audit what each refused beyond its first."""
        expired = await self._store.io.write(self._store.rate_limits.prune)
        summaries = [
            self._audit.queue(
                "auth.rate_limited",
                **{"limit_kind": row.kind, row.kind: row.label},
                window_start=row.window_start.isoformat(),
                refused=row.refused,
                summary=True,
            )
            for row in expired
            if row.refused > 1
        ]
        await durable(summaries)  # one commit for all of them
        return len(expired)

    async def run(self) -> None:
        """Prune every shortest window, for the gateway's lifetime."""
        interval = min(self._address.window, self._identity.window)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.prune()
            except Exception as exc:  # a store outage: the next round prunes
                log.warning("pruning rate-limit counters failed: %s", exc)


def _subject(key: Key) -> dict[str, Any]:
    # Not "key": the auditor masks fields of that name as secrets.
    return {"limit_kind": key.kind, key.kind: key.label}


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
