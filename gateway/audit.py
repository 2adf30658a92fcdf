"""Audit events, written through the store's hash-chained log.

Writes happen before the action they record is forwarded (design decision 8), so callers
await `record`. Refusals are audited too: a rejected agent key or an unknown protocol on
the public port leaves a trace, without the secret that was offered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from gateway.store import AuditEvent, Store

log = logging.getLogger(__name__)

# Keys whose values must never reach the log, whatever a caller passes.
_SECRET_KEYS = frozenset({"secret", "password", "token", "key", "authorization"})


def _scrub(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("***" if k.lower() in _SECRET_KEYS else v) for k, v in data.items()}


class Auditor:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def record(
        self,
        kind: str,
        *,
        actor: str = "-",
        session_id: str | None = None,
        **data: Any,
    ) -> AuditEvent:
        event = await asyncio.to_thread(
            self._store.append_audit,
            kind,
            actor=actor,
            session_id=session_id,
            data=_scrub(data),
        )
        log.info("audit %s actor=%s session=%s %s", kind, actor, session_id or "-", event.data)
        return event
