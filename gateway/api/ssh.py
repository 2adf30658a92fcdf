"""SSH recordings over the admin API: list a session's terminal recordings and fetch one.

A recording is an asciicast v2 file in the gateway's data directory; the `ssh.recording`
audit event written when its channel closed holds the file's SHA-256 and size, so the
file is served only if it still matches the hash chain (409 otherwise).
"""

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Response

from gateway.api.app import User
from gateway.store import AuditEvent, Store

CAST_MEDIA_TYPE = "application/x-asciicast"


def recordings_router(store: Store, recordings: Path) -> APIRouter:
    router = APIRouter()

    async def events(session_id: str, who: Any) -> list[AuditEvent]:
        record = await asyncio.to_thread(store.get_session, session_id)
        if record is None or (not who.is_admin and record.user != who.user):
            raise HTTPException(404, f"session {session_id!r} does not exist")
        return await asyncio.to_thread(
            store.list_audit, session_id=session_id, kind="ssh.recording", limit=10_000
        )

    @router.get("/v1/sessions/{session_id}/recordings")
    async def list_recordings(session_id: str, who: User) -> list[dict[str, Any]]:
        return [
            {
                "channel": e.data.get("channel"),
                "seq": e.seq,
                "ts": e.ts.isoformat(),
                "format": e.data.get("format"),
                "command": e.data.get("command"),
                "bytes": e.data.get("bytes"),
                "sha256": e.data.get("sha256"),
            }
            for e in await events(session_id, who)
        ]

    @router.get("/v1/sessions/{session_id}/recordings/{channel}")
    async def get_recording(session_id: str, channel: int, who: User) -> Response:
        found = [e for e in await events(session_id, who) if e.data.get("channel") == channel]
        if not found:
            raise HTTPException(
                404, f"session {session_id!r} has no recording of channel {channel}"
            )
        event = found[-1]
        try:
            data = await asyncio.to_thread(_read, recordings, str(event.data.get("path", "")))
        except OSError:
            raise HTTPException(410, "the recording file is missing") from None
        if hashlib.sha256(data).hexdigest() != event.data.get("sha256"):
            raise HTTPException(
                409, f"recording does not match its audit event (seq {event.seq}): altered"
            )
        return Response(data, media_type=CAST_MEDIA_TYPE)

    return router


def _read(recordings: Path, relative: str) -> bytes:
    base = recordings.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise OSError("recording path outside the recordings directory")
    return path.read_bytes()
