"""PostgreSQL cancels across gateway members: the asyncio side of `pgcancel.FleetCancel`.

A CancelRequest whose key this member did not issue is published on the fleet bus; the
member holding the key claims it and carries it out as its own, then says done. The asking
member keeps the client's cancel connection open until then, as PostgreSQL does, so a
cancel through a round-robin balancer behaves as one sent straight to the right member.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import psycopg

from gateway.fleet.bus import Bus
from gateway.protocols.pgcancel import (
    AnswerState,
    BadMessage,
    CancelAnswer,
    CancelKeys,
    FleetCancel,
    secret_digest,
)

log = logging.getLogger(__name__)

SessionT = TypeVar("SessionT")

REQUESTS = "wardgate_pg_cancel"
ANSWERS = "wardgate_pg_cancel_answer"
# Seconds for the member holding a key to claim a cancel; past it the key is unknown. A
# NOTIFY reaches every member within milliseconds: this bounds a member that is stalled.
CLAIM_TIMEOUT = 1.0


class FleetCancels(Generic[SessionT]):
    def __init__(
        self,
        bus: Bus,
        keys: CancelKeys[SessionT],
        carry_out: Callable[[SessionT, str], Awaitable[None]],
    ) -> None:
        self._bus = bus
        self._keys = keys
        self._carry_out = carry_out  # cancel this member's session for a client address
        self._asked: dict[str, asyncio.Queue[AnswerState]] = {}
        bus.subscribe(REQUESTS, self._on_request)
        bus.subscribe(ANSWERS, self._on_answer)

    async def cancel(self, pid: int, secret: bytes, client: str, done_within: float) -> bool:
        """Ask the fleet to cancel for key (pid, secret). False when no member claimed it;
        True once the member that did has carried it out (or after `done_within` seconds)."""
        request = FleetCancel(secrets.token_hex(16), pid, secret_digest(secret), client)
        answers = self._asked[request.request_id] = asyncio.Queue()
        try:
            try:
                await self._bus.publish(REQUESTS, request.encode())
            except (psycopg.Error, OSError) as exc:
                log.warning("cannot ask the fleet to cancel: %s", exc)
                return False
            try:
                async with asyncio.timeout(CLAIM_TIMEOUT):
                    await answers.get()  # "claimed" comes first: one sender, in order
            except TimeoutError:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(done_within):
                    while await answers.get() != "done":
                        pass
            return True
        finally:
            del self._asked[request.request_id]

    async def _on_request(self, payload: str) -> None:
        try:
            request = FleetCancel.decode(payload)
        except BadMessage as exc:
            log.warning("fleet bus: %s", exc)
            return
        if request.request_id in self._asked:
            return  # our own question: this member has no such key
        session = self._keys.find_digest(request.pid, request.digest)
        if session is None:
            return
        await self._answer(request.request_id, "claimed")
        try:
            await self._carry_out(session, request.client)
        finally:
            await self._answer(request.request_id, "done")

    async def _answer(self, request_id: str, state: AnswerState) -> None:
        try:
            await self._bus.publish(ANSWERS, CancelAnswer(request_id, state).encode())
        except (psycopg.Error, OSError) as exc:
            log.warning("cannot answer a fleet cancel: %s", exc)

    async def _on_answer(self, payload: str) -> None:
        try:
            answer = CancelAnswer.decode(payload)
        except BadMessage as exc:
            log.warning("fleet bus: %s", exc)
            return
        asked = self._asked.get(answer.request_id)
        if asked is not None:
            asked.put_nowait(answer.state)
