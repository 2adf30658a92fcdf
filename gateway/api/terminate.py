"""Ending one session, for administrators (`wardgate sessions kill`).

POST /v1/sessions/{id}/terminate  admin: end a live session on whichever member runs it
                                  (gateway/fleet/terminate.py), body `{"reason": "..."}`
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from gateway.api.deps import Admin
from gateway.fleet.terminate import MAX_REASON, Kind, TerminateRefused, Terminator

STATUS: dict[Kind, int] = {
    "unknown": 404,
    "ended": 409,
    "lost": 503,
    "unanswered": 504,
    "unavailable": 503,
}


class TerminateBody(BaseModel):
    # Told to the client and recorded: "terminated by an administrator: <reason>".
    reason: str | None = Field(default=None, max_length=MAX_REASON)


def terminate_router(terminator: Terminator) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/sessions/{session_id}/terminate",
        responses={
            404: {"description": "No such session."},
            409: {"description": "The session has already ended (the detail says when, why)."},
            503: {
                "description": "The member holding it is lost (the sweep closes it) or the "
                "other members cannot be reached."
            },
            504: {"description": "The member holding it did not answer in time."},
        },
    )
    async def terminate_session(
        session_id: str, who: Admin, body: TerminateBody | None = None
    ) -> dict[str, Any]:
        """End a live session wherever it runs: its client is told the reason in its own
        protocol, and the audit log records `session.terminated` with `by`."""
        try:
            done = await terminator.terminate(
                session_id, reason=body.reason if body else None, by=who.user
            )
        except TerminateRefused as exc:
            raise HTTPException(STATUS[exc.kind], exc.message) from None
        return {
            "terminated": True,
            "session": done.session_id,
            "member": done.member,
            "reason": done.reason,
        }

    return router
