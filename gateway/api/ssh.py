"""SSH over the API: the gateway's host key, users' SSH public keys, terminal recordings.

Public keys (`wardgate ssh-keys`): each user registers their own (administrators may name
another user); a key belongs to one user only. The gateway keeps the key and its OpenSSH
SHA256 fingerprint, which is what SSH authentication looks up.

User certificates (`wardgate ssh-cert`, `wardgate login --ssh-key`): the caller's public
key signed by the gateway's SSH user CA (gateway/sshca.py), short-lived, for their own
Wardgate user name; the CA's public key is public (`GET /v1/ssh/user-ca`).

Recordings: list a session's terminal recordings and fetch one.

A recording is an asciicast v2 file in the gateway's data directory; the `ssh.recording`
audit event written when its channel closed holds the file's SHA-256 and size, so the
file is served only if it still matches the hash chain (409 otherwise).
"""

import asyncio
import base64
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, Field

from gateway import sshca
from gateway.api.deps import User
from gateway.api.search import visible_session
from gateway.audit import Auditor, Event
from gateway.auth import Identity
from gateway.store import AlreadyExists, AuditEvent, NotFound, SshKeyRecord, Store

CAST_MEDIA_TYPE = "application/x-asciicast"


class SshKeyAdd(BaseModel):
    public_key: str = Field(max_length=16_384)
    user: str | None = None  # administrators only: register for someone else


def parse_public_key(line: str) -> tuple[str, str, str]:
    """An OpenSSH public key line -> ("TYPE BASE64", comment, SHA256 fingerprint)."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise ValueError("expected an OpenSSH public key line: TYPE BASE64 [COMMENT]")
    try:
        serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
        blob = base64.b64decode(parts[1], validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a valid SSH public key: {exc}") from None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"{parts[0]} {parts[1]}", (parts[2] if len(parts) > 2 else ""), f"SHA256:{digest}"


def _key_json(k: SshKeyRecord) -> dict[str, Any]:
    return {
        "id": k.id,
        "user": k.user,
        "fingerprint": k.fingerprint,
        "comment": k.comment,
        "public_key": k.public_key,
        "created_at": k.created_at.isoformat(),
    }


class SshCertRequest(BaseModel):
    public_key: str = Field(max_length=16_384)
    # At most the default, and never beyond the credential the request is made with.
    validity_seconds: int = Field(
        default=int(sshca.DEFAULT_VALIDITY.total_seconds()),
        ge=int(sshca.MIN_VALIDITY.total_seconds()),
        le=int(sshca.DEFAULT_VALIDITY.total_seconds()),
    )


def ssh_router(
    store: Store,
    auditor: Auditor,
    data_dir: Path,
    recordings: Path,
    *,
    user_ca: ed25519.Ed25519PrivateKey | None = None,
) -> APIRouter:
    router = APIRouter()

    # ---- SSH user certificates (issue 7) ------------------------------------------------

    @router.get("/v1/ssh/user-ca")
    async def user_ca_key() -> dict[str, str]:
        if user_ca is None:
            raise HTTPException(404, "this gateway has no SSH user CA")
        return {
            "public_key": sshca.public_line(user_ca),
            "fingerprint": sshca.ca_fingerprint(user_ca),
        }

    @router.post("/v1/ssh/certificates", status_code=201)
    async def issue_cert(body: SshCertRequest, who: User) -> dict[str, Any]:
        if user_ca is None:
            raise HTTPException(404, "this gateway has no SSH user CA")
        if who.connection is not None or who.scopes is not None:
            raise HTTPException(403, "a scoped credential cannot have an SSH certificate issued")
        try:
            key, _, fp = parse_public_key(body.public_key)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        if "-cert-" in key.split()[0]:
            raise HTTPException(422, "send the public key, not a certificate")
        now = dt.datetime.now(dt.UTC)
        until = now + dt.timedelta(seconds=body.validity_seconds)
        token = (
            await store.io.read(store.identity.get_token, who.token_id) if who.token_id else None
        )
        if token is None:
            raise HTTPException(403, "an SSH certificate is issued under a stored credential")
        if token.expires_at is not None:
            until = min(until, token.expires_at.replace(tzinfo=token.expires_at.tzinfo or dt.UTC))
        key_id = f"{who.user}/{who.token_id}"
        try:
            line = sshca.issue_user_cert(
                user_ca, key, user=str(who.user), key_id=key_id, now=now, valid_before=until
            )
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        await auditor.record(
            "ssh_cert.issued",
            actor=who.user,
            key_id=key_id,
            fingerprint=fp,
            valid_before=until.isoformat(),
        )
        return {
            "certificate": line,
            "key_id": key_id,
            "principals": [who.user],
            "fingerprint": fp,
            "valid_before": until.isoformat(),
        }

    @router.get("/v1/ssh/host-key")
    async def host_key() -> dict[str, str]:
        line = await asyncio.to_thread((data_dir / "ssh_host_ed25519_key.pub").read_text)
        key, _, fingerprint = parse_public_key(line)
        return {"public_key": key, "fingerprint": fingerprint}

    def owner(who: Any, user: str | None) -> str:
        if user is not None and user != who.user and not who.is_admin:
            raise HTTPException(403, "only administrators manage other users' keys")
        return user or str(who.user)

    @router.post("/v1/ssh-keys", status_code=201)
    async def add_key(body: SshKeyAdd, who: User) -> dict[str, Any]:
        user = owner(who, body.user)
        try:
            key, comment, fp = parse_public_key(body.public_key)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        try:  # the key and its event: one store transaction
            record = await auditor.change(
                lambda: store.ssh_keys.add(user, fp, key, comment),
                lambda _: [Event("ssh_key.added", who.user, {"user": user, "fingerprint": fp})],
            )
        except AlreadyExists:
            raise HTTPException(409, f"key {fp} is registered already") from None
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        return _key_json(record)

    @router.get("/v1/ssh-keys")
    async def list_keys(who: User, user: str | None = None) -> list[dict[str, Any]]:
        if who.is_admin and user is None:
            rows = await store.io.scan(store.ssh_keys.list_all)
        else:
            rows = await store.io.scan(store.ssh_keys.list_all, owner(who, user))
        return [_key_json(k) for k in rows]

    @router.delete("/v1/ssh-keys/{key:path}")  # fingerprints hold "/"
    async def remove_key(key: str, who: User, user: str | None = None) -> dict[str, Any]:
        name = owner(who, user)
        if not await store.io.write(store.ssh_keys.remove, name, key):
            raise HTTPException(404, f"user {name!r} has no key {key!r}")
        # Access taken away stands whatever the audit log says; its event is kept for later.
        await auditor.record_taken("ssh_key.removed", actor=who.user, user=name, key_id=key)
        return {"removed": key}

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
            for e in await _recording_events(store, who, session_id)
        ]

    @router.get("/v1/sessions/{session_id}/recordings/{channel}")
    async def get_recording(session_id: str, channel: int, who: User) -> Response:
        data = await read_recording(store, recordings, who, session_id, channel)
        return Response(data, media_type=CAST_MEDIA_TYPE)

    return router


async def _recording_events(store: Store, who: Identity, session_id: str) -> list[AuditEvent]:
    await visible_session(store, who, session_id)
    return await store.io.scan(
        store.audit.list_all, session_id=session_id, kind="ssh.recording", limit=10_000
    )


async def read_recording(
    store: Store, recordings: Path, who: Identity, session_id: str, channel: int
) -> bytes:
    """A channel's recording, for whoever may see its session (the API's and the console's
    rule), and only while it matches the SHA-256 its `ssh.recording` event holds."""
    found = [
        e
        for e in await _recording_events(store, who, session_id)
        if e.data.get("channel") == channel
    ]
    if not found:
        raise HTTPException(404, f"session {session_id!r} has no recording of channel {channel}")
    event = found[-1]
    try:
        data = await asyncio.to_thread(_read, recordings, str(event.data.get("path", "")))
    except OSError:
        raise HTTPException(410, "the recording file is missing") from None
    if hashlib.sha256(data).hexdigest() != event.data.get("sha256"):
        raise HTTPException(
            409, f"recording does not match its audit event (seq {event.seq}): altered"
        )
    return data


def _read(recordings: Path, relative: str) -> bytes:
    base = recordings.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise OSError("recording path outside the recordings directory")
    return path.read_bytes()
