"""Review events to a webhook: JSON, signed with HMAC-SHA256, retried, never blocking.

Each event is one POST of a JSON body `{"event": "review.created" | "review.decided",
"review": {...}}` with the headers

    X-Wardgate-Event: review.created
    X-Wardgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

A receiver verifies by recomputing the HMAC over the timestamp, a dot and the raw body with
the shared secret, comparing in constant time, and refusing timestamps too far from its clock
(replays): `verify` does exactly that. Delivery runs in background tasks: a slow or failing
receiver never holds up a session or a vote. Failed attempts (no answer, a non-2xx status)
are retried with backoff up to `attempts` times, then logged and audited.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from shared.backoff import Backoff
from shared.tasks import TaskOwner

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Wardgate-Signature"
EVENT_HEADER = "X-Wardgate-Event"
DEFAULT_TOLERANCE = 300  # seconds a receiver accepts between our clock and theirs


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Wardgate-Signature value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """Whether `header` is a valid signature of `body`, made within `tolerance` seconds."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).rsplit("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


class Webhook:
    def __init__(
        self,
        url: str,
        secret: str,
        *,
        attempts: int = 4,
        timeout: float = 5.0,
        on_failure: Callable[[str, str], Awaitable[Any]] | None = None,
    ) -> None:
        self.url = url
        self._secret = secret
        self._attempts = attempts
        self._client = httpx.AsyncClient(timeout=timeout)
        self._tasks = TaskOwner("webhook")
        self._on_failure = on_failure

    def send(self, event: str, payload: Mapping[str, Any]) -> None:
        """Queue one event; returns at once."""
        body = json.dumps({"event": event, **payload}, sort_keys=True, default=str).encode()
        self._tasks.spawn(self._deliver(event, body), name=event)

    async def _deliver(self, event: str, body: bytes) -> None:
        backoff = Backoff(base=0.5, cap=10.0)
        error = ""
        for attempt in range(1, self._attempts + 1):
            headers = {
                "Content-Type": "application/json",
                EVENT_HEADER: event,
                SIGNATURE_HEADER: sign(self._secret, body, int(time.time())),
            }
            try:
                response = await self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return
                error = f"HTTP {response.status_code}"
            log.warning("webhook %s attempt %d failed: %s", event, attempt, error)
            if attempt < self._attempts:
                await asyncio.sleep(backoff.next_delay())
        # The URL is not logged: chat webhooks carry their secret in it.
        log.error("webhook %s not delivered: %s", event, error)
        if self._on_failure is not None:
            await self._on_failure(event, error)

    async def aclose(self) -> None:
        await self._tasks.aclose()
        await self._client.aclose()
