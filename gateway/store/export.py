"""A session's export: its audit events and terminal recordings in one JSON file that can be
checked offline (`wardgate audit verify-export FILE`, or by hand with the formula below).

    {"format": "wardgate-session-export/1",
     "session": {...the session row, for reading...},
     "events": [{"seq", "ts", "kind", "actor", "session_id", "data", "prev_hash", "hash"}],
     "recordings": [{"channel", "event_seq", "sha256", "data"}]}   data: base64

What verifies: every event's `hash` is `sha256(prev_hash + canonical_json(event body))`, the
gateway-wide chain's own formula (gateway/store/chain.py), so an edited event no longer matches;
every recording's bytes hash to the `sha256` its `ssh.recording` event (`event_seq`, itself one
of the chained events) holds, so an edited recording no longer matches. The session's events
are not consecutive in the chain (other sessions' events lie between them): the export proves
each event is the one the chain holds at its seq; compare a `hash` with the live log
(`wardgate audit list`) to tie the file to a gateway, and `wardgate audit verify` checks the
chain as a whole. This module does no I/O.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.store import chain
from gateway.store.models import AuditEvent

FORMAT = "wardgate-session-export/1"


class ExportError(ValueError):
    """A file that is not a session export this version can read."""


@dataclass(frozen=True, slots=True)
class Recording:
    channel: int
    event_seq: int  # the `ssh.recording` event that holds its SHA-256
    data: bytes


@dataclass(frozen=True, slots=True)
class ExportCheck:
    events: int
    recordings: int
    problems: tuple[str, ...]

    @property
    def intact(self) -> bool:
        return not self.problems


def build(
    session: dict[str, Any], events: Sequence[AuditEvent], recordings: Sequence[Recording]
) -> bytes:
    """The export file's bytes."""
    return json.dumps(
        {
            "format": FORMAT,
            "session": session,
            "events": [_event_json(e) for e in events],
            "recordings": [
                {
                    "channel": r.channel,
                    "event_seq": r.event_seq,
                    "sha256": hashlib.sha256(r.data).hexdigest(),
                    "data": base64.b64encode(r.data).decode(),
                }
                for r in recordings
            ],
        },
        indent=1,
        ensure_ascii=False,
    ).encode()


def _event_json(e: AuditEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "ts": e.ts.astimezone(dt.UTC).isoformat(),
        "kind": e.kind,
        "actor": e.actor,
        "session_id": e.session_id,
        "data": e.data,
        "prev_hash": e.prev_hash.hex(),
        "hash": e.hash.hex(),
    }


def verify(raw: bytes) -> ExportCheck:
    """Check an export file; raises ExportError when it is not one."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ExportError(f"not a session export (format {FORMAT!r} expected)")
        events = [_event(e) for e in doc["events"]]
        recordings = list(doc["recordings"])
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"not a readable session export: {exc}") from None
    problems: list[str] = []
    by_seq = {e.seq: e for e in events}
    for e in events:
        if chain.hash_of(e, e.prev_hash) != e.hash:
            problems.append(f"event {e.seq} was edited (its hash does not match its content)")
    for r in recordings:
        try:
            data = base64.b64decode(str(r["data"]), validate=True)
            channel, seq = int(r["channel"]), int(r["event_seq"])
        except (KeyError, TypeError, ValueError, binascii.Error):
            problems.append("a recording entry is unreadable")
            continue
        event = by_seq.get(seq)
        if event is None or event.kind != "ssh.recording":
            problems.append(f"recording of channel {channel}: no ssh.recording event {seq}")
        elif hashlib.sha256(data).hexdigest() != event.data.get("sha256"):
            problems.append(
                f"recording of channel {channel} was edited (it does not match event {seq})"
            )
    return ExportCheck(len(events), len(recordings), tuple(problems))


def _event(e: dict[str, Any]) -> AuditEvent:
    ts = dt.datetime.fromisoformat(str(e["ts"]))
    if ts.tzinfo is None:
        raise ValueError("an event time without its zone")
    data = e["data"]
    if not isinstance(data, dict):
        raise TypeError("an event's data is not an object")
    return AuditEvent(
        seq=int(e["seq"]),
        ts=ts,
        kind=str(e["kind"]),
        actor=str(e["actor"]),
        session_id=None if e["session_id"] is None else str(e["session_id"]),
        data=data,
        prev_hash=bytes.fromhex(str(e["prev_hash"])),
        hash=bytes.fromhex(str(e["hash"])),
    )
