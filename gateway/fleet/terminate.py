"""Ending one session wherever it runs: `wardgate sessions kill`, the admin API's
`POST /v1/sessions/{id}/terminate`.

The administrator's request lands on any member; the session runs on one (live in that
member's `SessionBroker`, its `member` in the store). A session live here is ended at once.
Otherwise a `TerminateRequest` goes out on the fleet bus (gateway/fleet/bus.py); the member
that holds the session live ends it as its own and answers on the reply channel; the asker
waits at most `answer_timeout` seconds, as a fleet cancel does (gateway/protocols/pgfleet.py).
Bus messages carry the session id, the reason and the administrator's name: no secret.

Ending it is `SessionBroker.terminate`: the client gets the reason in its own protocol
(a PostgreSQL ErrorResponse, an SSH message on stderr, a WebSocket close) and the audit log
records `session.terminated` with `by`, the administrator who asked.

Refusals (`TerminateRefused.kind`, mapped to HTTP statuses by gateway/api/terminate.py):
- unknown: no such session;
- ended: it had already ended (the message says when and why), or it is ending (terminated
  before, its relay not finished);
- lost: the member holding it is silent, its heartbeat stale: the fleet's lost-member sweep
  ends the session in the store (gateway/fleet/membership.py says how soon);
- unanswered: the member holding it, whose heartbeat is fresh, did not answer in time;
- unavailable: the bus could not be reached, or the session is still opening on this member.
A SQLite store has one member and no bus: a session open in the store that is not live here
was left by a gateway process that has stopped, and the sweep ends it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Literal

import psycopg

from gateway.config import FleetConfig
from gateway.fleet.bus import Bus
from gateway.sessions import SessionBroker
from gateway.store import SessionRecord, Store

log = logging.getLogger(__name__)

REQUESTS = "wardgate_session_terminate"
ANSWERS = "wardgate_session_terminate_answer"
# Seconds the asker waits for the member holding the session: a NOTIFY reaches every member
# within milliseconds and ending a session is a stream reset and one audit write.
ANSWER_TIMEOUT = 3.0
MAX_REASON = 500  # characters of an administrator's reason (it travels in a NOTIFY)
BY_ADMIN = "terminated by an administrator"

Kind = Literal["unknown", "ended", "lost", "unanswered", "unavailable"]


class BadMessage(ValueError):
    """A bus message that is not one of ours (another version's, or garbage)."""


@dataclass(frozen=True, slots=True)
class TerminateRequest:
    """A member asks the fleet: whoever holds session `session_id` live, end it."""

    request_id: str
    session_id: str
    reason: str  # as the client and the audit log get it
    by: str  # the administrator who asked

    def encode(self) -> str:
        fields = {"id": self.request_id, "session": self.session_id}
        return json.dumps({**fields, "reason": self.reason, "by": self.by})

    @classmethod
    def decode(cls, payload: str) -> TerminateRequest:
        try:
            f = json.loads(payload)
            return cls(str(f["id"]), str(f["session"]), str(f["reason"]), str(f["by"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise BadMessage(f"not a session termination: {exc}") from None


@dataclass(frozen=True, slots=True)
class TerminateAnswer:
    """The member that holds the session says it ended it, or that it was already ending
    (terminated before, its relay not finished yet)."""

    request_id: str
    member: str
    ending: bool = False

    def encode(self) -> str:
        return json.dumps({"id": self.request_id, "member": self.member, "ending": self.ending})

    @classmethod
    def decode(cls, payload: str) -> TerminateAnswer:
        try:
            f = json.loads(payload)
            ending = f.get("ending", False)
            if not isinstance(ending, bool):
                raise TypeError(f"ending is {ending!r}")
            return cls(str(f["id"]), str(f["member"]), ending)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadMessage(f"not a termination answer: {exc}") from None


@dataclass(frozen=True, slots=True)
class Terminated:
    session_id: str
    member: str  # the member that ended it
    reason: str


class TerminateRefused(Exception):
    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def reason_text(reason: str | None) -> str:
    """What the client and the audit log are told: one line, naming who ended it."""
    said = re.sub(r"\s+", " ", reason or "").strip()[:MAX_REASON]
    return f"{BY_ADMIN}: {said}" if said else BY_ADMIN


def _ended(record: SessionRecord) -> TerminateRefused:
    when = record.ended_at.isoformat(timespec="seconds") if record.ended_at else "?"
    why = f"{record.status}: {record.error}" if record.error else record.status
    return TerminateRefused("ended", f"session {record.id!r} already ended at {when} ({why})")


class Terminator:
    """This member's side of ending sessions: asks for them, and ends its own when asked."""

    def __init__(
        self,
        store: Store,
        broker: SessionBroker,
        member_id: str,
        bus: Bus | None,
        fleet: FleetConfig,
        *,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        """`bus`: None with a SQLite store (one member). Subscribes before `bus.run`."""
        self._store = store
        self._broker = broker
        self._member = member_id
        self._bus = bus
        self._fleet = fleet
        self._answer_timeout = answer_timeout
        self._asked: dict[str, asyncio.Future[TerminateAnswer]] = {}
        if bus is not None:
            bus.subscribe(REQUESTS, self._on_request)
            bus.subscribe(ANSWERS, self._on_answer)

    async def terminate(self, session_id: str, *, reason: str | None, by: str) -> Terminated:
        """End session `session_id` wherever it runs. Raises TerminateRefused."""
        said = reason_text(reason)
        record = await self._store.io.read(self._store.sessions.get, session_id)
        if record is None:
            raise TerminateRefused("unknown", f"session {session_id!r} does not exist")
        if record.ended_at is not None:
            raise _ended(record)
        here = await self._end_here(session_id, said, by)
        if here is None and self._bus is not None:
            here = await self._ask_fleet(session_id, said, by)
        if here is not None:
            if here.ending:
                raise TerminateRefused(
                    "ended", f"session {session_id!r} is already ending (on member {here.member})"
                )
            return Terminated(session_id, here.member, said)
        # No member ended it: it may have ended meanwhile, or its member is silent.
        record = await self._store.io.read(self._store.sessions.get, session_id)
        if record is None:
            raise TerminateRefused("unknown", f"session {session_id!r} does not exist")
        if record.ended_at is not None:
            raise _ended(record)
        raise await self._unheld(record)

    async def _end_here(
        self, session_id: str, reason: str, by: str, request_id: str = ""
    ) -> TerminateAnswer | None:
        """End the session if it runs here; None when it is not this member's."""
        if self._broker.is_live(session_id):
            await self._broker.terminate(reason=reason, session_ids=frozenset({session_id}), by=by)
            return TerminateAnswer(request_id, self._member)
        if self._broker.is_ending(session_id):
            return TerminateAnswer(request_id, self._member, ending=True)
        return None

    async def _ask_fleet(self, session_id: str, reason: str, by: str) -> TerminateAnswer | None:
        """The answer of the member that holds the session, or None when none did in time."""
        assert self._bus is not None
        request = TerminateRequest(secrets.token_hex(16), session_id, reason, by)
        answered: asyncio.Future[TerminateAnswer] = asyncio.get_running_loop().create_future()
        self._asked[request.request_id] = answered
        try:
            try:
                await self._bus.publish(REQUESTS, request.encode())
            except (psycopg.Error, OSError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise TerminateRefused(
                    "unavailable", f"cannot reach the other gateway members: {first}"
                ) from None
            try:
                async with asyncio.timeout(self._answer_timeout):
                    return await answered
            except TimeoutError:
                return None
        finally:
            del self._asked[request.request_id]

    async def _unheld(self, record: SessionRecord) -> TerminateRefused:
        """Why no member ended an open session."""
        sid = record.id
        if record.member == self._member:
            return TerminateRefused(
                "unavailable",
                f"session {sid!r} is not running on this member yet, or has just ended: try again",
            )
        members = await self._store.io.read(self._store.members.list_all)
        member = next((m for m in members if m.id == record.member), None)
        if member is None:
            return TerminateRefused(
                "unavailable",
                f"session {sid!r} is open in the store but no gateway member holds it "
                f"(member {record.member or '-'} is unknown to the store)",
            )
        silent = (dt.datetime.now(dt.UTC) - member.heartbeat_at).total_seconds()
        cfg = self._fleet
        if not member.live or self._bus is None or silent > 2 * cfg.heartbeat_interval:
            # Reaped once silent for member_timeout, by a member's next heartbeat after that.
            within = max(cfg.member_timeout + cfg.heartbeat_interval - silent, 0.0)
            return TerminateRefused(
                "lost",
                f"member {member.id}, which holds session {sid!r}, does not answer (last "
                f"heartbeat {silent:.0f} s ago): the fleet's lost-member sweep closes the "
                f"session within {within:.0f} s",
            )
        return TerminateRefused(
            "unanswered",
            f"member {member.id}, which holds session {sid!r}, did not answer within "
            f"{self._answer_timeout:g} s: try again (`wardgate members list` shows the fleet)",
        )

    # ---- the member asked ---------------------------------------------------------------

    async def _on_request(self, payload: str) -> None:
        try:
            request = TerminateRequest.decode(payload)
        except BadMessage as exc:
            log.warning("fleet bus: %s", exc)
            return
        if request.request_id in self._asked:
            return  # our own question: the session is not live here
        answer = await self._end_here(
            request.session_id, request.reason, request.by, request.request_id
        )
        if answer is None:
            return  # not ours (every member hears every request)
        if not answer.ending:
            log.info(
                "session %s terminated for %s, asked on the bus", request.session_id, request.by
            )
        assert self._bus is not None
        try:
            await self._bus.publish(ANSWERS, answer.encode())
        except (psycopg.Error, OSError) as exc:
            log.warning("cannot answer a session termination: %s", exc)

    async def _on_answer(self, payload: str) -> None:
        try:
            answer = TerminateAnswer.decode(payload)
        except BadMessage as exc:
            log.warning("fleet bus: %s", exc)
            return
        asked = self._asked.get(answer.request_id)
        if asked is not None and not asked.done():
            asked.set_result(answer)
