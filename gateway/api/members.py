"""The fleet's members, for administrators (`wardgate members list`).

GET /v1/members  admin: every member the store remembers, live ones first
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import Admin
from gateway.store import Store


def members_router(store: Store, member_id: str) -> APIRouter:
    """`member_id`: the member answering, marked `self` in the list."""
    router = APIRouter()

    @router.get("/v1/members")
    async def list_members(who: Admin) -> list[dict[str, Any]]:
        records = await store.io.scan(store.members.list_all)
        return [
            {
                "id": m.id,
                "state": "live" if m.live else "gone",
                "agent_address": m.agent_address,
                "public_address": m.public_address,
                "version": m.version,
                "started_at": m.started_at.isoformat(),
                "heartbeat_at": m.heartbeat_at.isoformat(),
                "gone_at": m.gone_at.isoformat() if m.gone_at else None,
                "gone_reason": m.gone_reason,
                "self": m.id == member_id,
            }
            for m in records
        ]

    return router
