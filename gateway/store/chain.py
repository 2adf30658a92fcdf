"""The audit log's hash chain, as pure functions.

Every audit event commits to the one before it::

    hash(n) = sha256(hash(n-1)
                     + canonical_json({"seq", "ts", "kind", "actor", "session_id", "data"}))

with ``hash(0)`` = 32 zero bytes and ``ts`` rendered with ``datetime.isoformat()`` in UTC. Editing,
removing or reordering an event breaks every hash from that event on, so the first event that does
not verify marks where the log was tampered with.

This module imports no database code: an offline verifier can check an exported log with it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, Literal, Protocol

GENESIS_HASH = bytes(32)
"""The ``prev_hash`` of the first event (seq 1)."""


class ChainedEvent(Protocol):
    """What the verifier reads from an event; ``models.AuditEvent`` is one."""

    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> dt.datetime: ...
    @property
    def kind(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def data(self) -> Mapping[str, Any]: ...
    @property
    def prev_hash(self) -> bytes: ...
    @property
    def hash(self) -> bytes: ...


def canonical_json(value: Any) -> bytes:
    """One byte string per JSON value: sorted keys, no spaces, UTF-8.

    NaN and infinities are refused: they are not JSON, and a log that holds them could not be
    verified by tools outside Python.
    """
    return _ENCODER.encode(value).encode()


# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _string(value: str | None) -> bytes:
    """`canonical_json` of a string or None, without the encoder's set-up (the hot path)."""
    return b"null" if value is None else encode_basestring(value).encode()


def event_hash(
    prev_hash: bytes,
    *,
    seq: int,
    ts: dt.datetime,
    kind: str,
    actor: str,
    session_id: str | None,
    data: Mapping[str, Any],
) -> bytes:
    """The hash of one event, chained to ``prev_hash``."""
    return event_hash_of_payload(
        prev_hash,
        seq=seq,
        ts=ts,
        kind=kind,
        actor=actor,
        session_id=session_id,
        payload=canonical_json(dict(data)),
    )


def event_hash_of_payload(
    prev_hash: bytes,
    *,
    seq: int,
    ts: dt.datetime,
    kind: str,
    actor: str,
    session_id: str | None,
    payload: bytes,
) -> bytes:
    """`event_hash` for data already rendered by `canonical_json` (the writer's hot path).

    The body is assembled in canonical key order around the payload instead of encoding the
    data a second time; the bytes are exactly `canonical_json` of the whole body.
    """
    if ts.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    # Normalised so that the same instant hashes the same whatever zone object carries it.
    stamp = ts.astimezone(dt.UTC).isoformat()
    body = b"".join(
        (
            b'{"actor":',
            _string(actor),
            b',"data":',
            payload,
            b',"kind":',
            _string(kind),
            b',"seq":',
            str(int(seq)).encode(),
            b',"session_id":',
            _string(session_id),
            b',"ts":',
            _string(stamp),
            b"}",
        )
    )
    return hashlib.sha256(prev_hash + body).digest()


def hash_of(event: ChainedEvent, prev_hash: bytes) -> bytes:
    """Recompute ``event``'s hash as if it followed an event whose hash is ``prev_hash``."""
    return event_hash(
        prev_hash,
        seq=event.seq,
        ts=event.ts,
        kind=event.kind,
        actor=event.actor,
        session_id=event.session_id,
        data=event.data,
    )


Problem = Literal["edited", "missing", "relinked", "unrecorded", "head"]
"""How a chain breaks: an event's content no longer matches its hash (``edited``); events are
absent (``missing``: a gap in the seqs, or the tail the writer's head says was written); an event
whose own hash holds but that does not follow the event before it (``relinked``: that one was
replaced, or events were removed and the rest renumbered); events after the writer's head
(``unrecorded``); the last event differs from the one the head recorded (``head``)."""


@dataclass(frozen=True)
class ChainCheck:
    """The verdict on a chain: how many events were read and the first break, if any.

    ``checked`` counts the events read, up to and including the first bad one.
    ``missing_to`` is the last missing seq of a ``missing`` break (``first_bad_seq`` the first).
    """

    checked: int
    first_bad_seq: int | None = None
    problem: Problem | None = None
    missing_to: int | None = None

    @property
    def intact(self) -> bool:
        return self.first_bad_seq is None

    @property
    def detail(self) -> str:
        """The break in one sentence, for people; empty when intact."""
        seq = self.first_bad_seq
        match self.problem:
            case None:
                return ""
            case "edited":
                return f"event {seq} was edited (its hash does not match its content)"
            case "missing" if self.missing_to is None or self.missing_to == seq:
                return f"event {seq} is missing (deleted from the log)"
            case "missing":
                return f"events {seq} to {self.missing_to} are missing (deleted from the log)"
            case "relinked":
                return (
                    f"event {seq} does not follow event {(seq or 1) - 1} "
                    "(that event was replaced, or events before it were removed and renumbered)"
                )
            case "unrecorded":
                return f"event {seq} and after were added outside the gateway's writer"
            case "head":
                return (
                    f"event {seq}, the last one, does not match the writer's record of the "
                    "last event (one of the two was replaced)"
                )

    def as_dict(self) -> dict[str, Any]:
        """The API's and the CLI's shape of the verdict."""
        return {
            "intact": self.intact,
            "first_bad_seq": self.first_bad_seq,
            "checked": self.checked,
            "problem": self.problem,
            "missing_to": self.missing_to,
            "detail": self.detail,
        }


def check_chain(
    events: Iterable[ChainedEvent], *, head: tuple[int, bytes] | None = None
) -> ChainCheck:
    """Verify ``events`` (in ascending seq order) and say where and how the chain first breaks.

    ``head`` is the (seq, hash) of the last event as recorded separately by the writer; with it,
    removing events from the end of the log is detected too (without it, a log cut short is
    indistinguishable from a shorter log).
    """
    expected = 1
    prev = GENESIS_HASH
    checked = 0
    for event in events:
        checked += 1
        if event.seq != expected:
            # Rows come ordered by their unique seq, so a different seq is a higher one.
            return ChainCheck(checked, expected, "missing", missing_to=event.seq - 1)
        if hash_of(event, event.prev_hash) != event.hash:
            return ChainCheck(checked, event.seq, "edited")
        if event.prev_hash != prev:
            return ChainCheck(checked, event.seq, "relinked")
        prev = event.hash
        expected += 1
    last = expected - 1
    if head is None:
        return ChainCheck(checked)
    head_seq, head_hash = head
    if head_seq > last:
        return ChainCheck(checked, last + 1, "missing", missing_to=head_seq)  # tail removed
    if head_seq < last:
        return ChainCheck(checked, head_seq + 1, "unrecorded")
    if head_hash != prev:
        return ChainCheck(checked, max(last, 1), "head")
    return ChainCheck(checked)


def first_broken_seq(
    events: Iterable[ChainedEvent], *, head: tuple[int, bytes] | None = None
) -> int | None:
    """The seq of the first event that does not verify, or None when the whole chain does.

    ``events`` must come in ascending seq order. A missing event is reported by its own seq (the
    one that should have been there). See `check_chain` for how it broke.
    """
    return check_chain(events, head=head).first_bad_seq
