"""``ReviewService``: reviews in the store, votes with segregation of duties, waiting.

Every change is audited (`review.created`, `review.vote`, `review.vote_refused`,
`review.approved`, `review.denied`, `review.expired`, `review.cancelled`) and, when a webhook
is configured, announced (`review.created`, `review.decided`).

Waiting works across gateway replicas that share the store: a vote decided on this replica
wakes its waiters at once; a vote on another replica is seen by the waiter's next store read,
every `poll_interval` seconds. The deadline is enforced by whoever looks first: the waiter
at its deadline, or any read of a pending review past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from pydantic import ValidationError

from gateway.audit import Auditor, Event
from gateway.auth import Identity
from gateway.policy.approval import (
    ReviewTerms,
    Vote,
    Voter,
    controllers,
    may_vote,
    tally,
)
from gateway.policy.grants import AccessPolicy
from gateway.reviews.links import ReviewLinks
from gateway.reviews.webhook import Webhook
from gateway.store import NotFound, ReviewRecord, Store, VoteRecord

PENDING = "pending"
MAX_TEXT = 64 * 1024  # a review shows at most this much of the statement


def outcome(review: ReviewRecord) -> str:
    """How a review ended, as the front doors tell a held client ("review X was denied")."""
    return {
        "pending": "is still waiting for approval",
        "approved": "was approved, but its approval has expired",
        "denied": "was denied",
        "expired": "timed out",
    }.get(review.status, f"was {review.status}")


class ReviewError(Exception):
    """A review action refused; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_review_id() -> str:
    return "rv_" + secrets.token_hex(6)


def review_json(r: ReviewRecord, *, votes: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": r.id,
        "kind": r.kind,
        "status": r.status,
        "requester": r.requester,
        "connection": r.connection,
        "session_id": r.session_id,
        "protocol": r.protocol,
        "text": r.text,
        "reason": r.reason,
        "rules": list(r.rules),
        "terms": r.terms,
        "access": r.access,
        "duration": r.duration,
        "created_at": r.created_at.isoformat(),
        "deadline": r.deadline.isoformat(),
        "decided_at": r.decided_at.isoformat() if r.decided_at else None,
        "decision": r.decision,
        "grant_expires_at": r.grant_expires_at.isoformat() if r.grant_expires_at else None,
    }
    if votes:
        out["votes"] = [
            {
                "voter": v.voter,
                "vote": v.vote,
                "reason": v.reason,
                "voted_at": v.voted_at.isoformat(),
                "expires_at": v.expires_at.isoformat(),
            }
            for v in r.votes
        ]
    return out


class _Refused(Exception):
    """Raised inside the vote transaction; carries the status and what to audit."""

    def __init__(self, status: int, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.expired = expired


class ReviewService:
    def __init__(
        self,
        store: Store,
        auditor: Auditor,
        access: AccessPolicy | None = None,
        *,
        webhook: Webhook | None = None,
        links: ReviewLinks | None = None,
        poll_interval: float = 1.0,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._store = store
        self._audit = auditor
        self._access = access or AccessPolicy()
        self._webhook = webhook
        self.links = links  # the console page's address, sent with each webhook event
        self._poll = poll_interval
        self._clock = clock
        self._wake: dict[str, asyncio.Event] = {}

    async def aclose(self) -> None:
        if self._webhook is not None:
            await self._webhook.aclose()

    # ---- creating --------------------------------------------------------------------

    async def hold(
        self,
        identity: Identity,
        *,
        connection: str,
        session_id: str | None,
        protocol: str,
        text: str,
        reason: str,
        rules: tuple[str, ...],
        terms: ReviewTerms,
    ) -> ReviewRecord:
        """A review of one held statement (or query string); the caller then `wait`s."""
        now = self._clock()
        record = ReviewRecord(
            id=new_review_id(),
            kind="statement",
            status=PENDING,
            requester=identity.user,
            connection=connection,
            session_id=session_id,
            protocol=protocol,
            text=text[:MAX_TEXT],
            reason=reason,
            rules=rules,
            terms=terms.model_dump(mode="json"),
            created_at=now,
            deadline=now + dt.timedelta(seconds=terms.timeout),
        )
        return await self._create(record)

    async def request_access(
        self, identity: Identity, *, connection: str, duration: int, reason: str
    ) -> ReviewRecord:
        """A time-boxed access request, under the terms of the user's on-request grant."""
        if identity.connection is not None or identity.scopes is not None:
            raise ReviewError(403, "access requests are made with a person's own sign-in")
        found = self._access.requestable(identity.user, identity.groups, connection)
        if found is None:
            raise ReviewError(
                403,
                f"no role lets {identity.user!r} request access to connection {connection!r}",
            )
        access, terms = found
        if not reason.strip():
            raise ReviewError(422, "an access request needs a reason")
        if not 0 < duration <= terms.max_duration:
            raise ReviewError(422, f"duration must be between 1 and {terms.max_duration} seconds")
        now = self._clock()
        record = ReviewRecord(
            id=new_review_id(),
            kind="access",
            status=PENDING,
            requester=identity.user,
            connection=connection,
            protocol=None,
            text="",
            reason=reason,
            terms=terms.model_dump(mode="json"),
            created_at=now,
            deadline=now + dt.timedelta(seconds=terms.timeout),
            access=access,
            duration=duration,
        )
        return await self._create(record)

    async def _create(self, record: ReviewRecord) -> ReviewRecord:
        await self._store.io.write(self._store.reviews.create, record)
        await self._audit.record(
            "review.created",
            actor=record.requester,
            session_id=record.session_id,
            review=record.id,
            review_kind=record.kind,
            connection=record.connection,
            text=record.text,
            reason=record.reason,
            rules=list(record.rules),
            access=record.access,
            duration=record.duration,
            deadline=record.deadline.isoformat(),
        )
        self._announce("review.created", record)
        return record

    def _announce(self, event: str, record: ReviewRecord) -> None:
        if self._webhook is not None:
            payload: dict[str, Any] = {"review": review_json(record)}
            if self.links is not None:
                payload["console_url"] = self.links.url(record.id)
            self._webhook.send(event, payload)

    # ---- reading ---------------------------------------------------------------------

    async def get(self, review_id: str) -> ReviewRecord:
        record = await self._store.io.read(self._store.reviews.get, review_id)
        if record is None:
            raise ReviewError(404, f"no review {review_id!r}")
        return await self._expire_if_due(record)

    async def visible(self, identity: Identity, review_id: str) -> ReviewRecord:
        """The review, if `identity` may see it: admins, the requester, its approvers."""
        record = await self.get(review_id)
        if not self._may_see(identity, record):
            raise ReviewError(404, f"no review {review_id!r}")
        return record

    async def list_reviews(
        self,
        identity: Identity,
        *,
        status: str | None = None,
        kind: str | None = None,
        mine: bool = False,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        records = await self._store.io.scan(
            self._store.reviews.list_all,
            status=status,
            kind=kind,
            requester=identity.user if mine else None,
            limit=limit,
        )
        out = []
        for r in records:
            if self._may_see(identity, r):
                out.append(await self._expire_if_due(r))
        if status is not None:
            out = [r for r in out if r.status == status]
        return out

    async def latest(
        self, identity: Identity, *, connection: str, protocol: str, text: str
    ) -> ReviewRecord | None:
        """The newest review of exactly this request by this user (Kubernetes: the client
        runs its request again once it is approved), or None."""
        found = await self._store.io.read(
            self._store.reviews.matching,
            requester=identity.user,
            connection=connection,
            protocol=protocol,
            text=text[:MAX_TEXT],
            limit=1,
        )
        return await self._expire_if_due(found[0]) if found else None

    def still_approved(self, record: ReviewRecord) -> bool:
        """Approved, and enough of its approvals are still valid (`approval_ttl`)."""
        if record.status != "approved":
            return False
        try:
            terms = ReviewTerms.model_validate(record.terms)
        except ValidationError:
            return False  # fail closed: terms we cannot read approve nothing
        votes = [
            Vote(v.voter, frozenset(v.controllers), "approve", v.voted_at, v.expires_at)
            for v in record.votes
            if v.vote == "approve"
        ]
        return tally(terms, votes, self._clock()).outcome == "approved"

    @staticmethod
    def _may_see(identity: Identity, record: ReviewRecord) -> bool:
        if identity.is_admin or identity.user == record.requester:
            return True
        approvers = record.terms.get("approvers", {})
        return identity.user in approvers.get("users", ()) or bool(
            set(identity.groups) & set(approvers.get("groups", ()))
        )

    async def granted_connections(self, user: str) -> dict[str, dt.datetime]:
        """Connections `user` may reach through approved access requests, until when."""
        return await self._store.io.read(
            self._store.reviews.granted_connections, user, self._clock()
        )

    # ---- voting ----------------------------------------------------------------------

    async def vote(
        self, identity: Identity, review_id: str, vote: str, reason: str = ""
    ) -> ReviewRecord:
        if vote not in ("approve", "deny"):
            raise ReviewError(422, "a vote is approve or deny")
        if identity.credential == "connection":
            raise ReviewError(403, "a per-connection credential cannot vote")
        current = await self.get(review_id)
        owners = await self._store.io.read(
            self._store.reviews.owners_of, {identity.user, current.requester}
        )
        voter = Voter(
            identity.user, identity.groups, controllers(identity.user, owners[identity.user])
        )
        requester = controllers(current.requester, owners[current.requester])
        now = self._clock()

        def judge(review: ReviewRecord) -> tuple[VoteRecord, Mapping[str, Any] | None]:
            if review.status != PENDING:
                raise _Refused(409, f"review {review.id} is already {review.status}")
            if now >= review.deadline:
                raise _Refused(409, f"review {review.id} expired", expired=True)
            try:
                terms = ReviewTerms.model_validate(review.terms)
            except ValidationError:
                raise _Refused(409, f"review {review.id} has unreadable terms") from None
            votes = [
                Vote(
                    v.voter,
                    frozenset(v.controllers),
                    "approve" if v.vote == "approve" else "deny",
                    v.voted_at,
                    v.expires_at,
                )
                for v in review.votes
            ]
            why = may_vote(terms, requester, voter, votes)
            if why is not None:
                raise _Refused(403, why)
            expires = now + dt.timedelta(seconds=terms.approval_ttl)
            new = Vote(
                voter.user,
                voter.controllers,
                "approve" if vote == "approve" else "deny",
                now,
                expires,
            )
            result = tally(terms, [*votes, new], now)
            decided: dict[str, Any] | None = None
            if result.outcome != PENDING:
                decided = {
                    "status": result.outcome,
                    "decided_at": now,
                    "decision": f"{result.reason}{': ' + reason if reason else ''}",
                }
                if result.outcome == "approved" and review.kind == "access":
                    decided["grant_expires_at"] = now + dt.timedelta(seconds=review.duration or 0)
            record = VoteRecord(
                voter.user, tuple(sorted(voter.controllers)), vote, reason, now, expires
            )
            return record, decided

        def voted(updated: ReviewRecord) -> list[Event]:
            data = {"review": review_id, "vote": vote, "reason": reason, "status": updated.status}
            return [Event("review.vote", identity.user, data, updated.session_id)]

        try:  # the vote and its event: one store transaction
            updated = await self._audit.change(
                lambda: self._store.reviews.vote(review_id, judge), voted
            )
        except _Refused as exc:
            await self._audit.record(
                "review.vote_refused",
                actor=identity.user,
                review=review_id,
                vote=vote,
                reason=exc.message,
            )
            if exc.expired:
                await self._finish(review_id, "expired", "no decision before the deadline")
            raise ReviewError(exc.status, exc.message) from None
        except NotFound:
            raise ReviewError(404, f"no review {review_id!r}") from None
        if updated.status != PENDING:
            await self._decided(updated)
        return updated

    async def _decided(self, record: ReviewRecord) -> None:
        await self._audit.record(
            f"review.{record.status}",
            actor=record.requester,
            session_id=record.session_id,
            review=record.id,
            review_kind=record.kind,
            connection=record.connection,
            decision=record.decision,
            grant_expires_at=(
                record.grant_expires_at.isoformat() if record.grant_expires_at else None
            ),
        )
        self._announce("review.decided", record)
        event = self._wake.get(record.id)
        if event is not None:
            event.set()

    async def _finish(self, review_id: str, status: str, decision: str) -> ReviewRecord:
        record, changed = await self._store.io.write(
            self._store.reviews.finish,
            review_id,
            status=status,
            decision=decision,
            at=self._clock(),
        )
        if changed:
            await self._decided(record)
        return record

    async def _expire_if_due(self, record: ReviewRecord) -> ReviewRecord:
        if record.status == PENDING and self._clock() >= record.deadline:
            return await self._finish(record.id, "expired", "no decision before the deadline")
        return record

    async def cancel(self, review_id: str, reason: str) -> None:
        """The requester is gone (the client hung up, the session ended)."""
        await self._finish(review_id, "cancelled", reason)

    # ---- waiting ---------------------------------------------------------------------

    async def wait(self, review_id: str) -> ReviewRecord:
        """Until the review is decided or its deadline passes; the decided review."""
        event = self._wake.setdefault(review_id, asyncio.Event())
        try:
            while True:
                event.clear()  # before the read: a decision after it still wakes us
                record = await self.get(review_id)
                if record.status != PENDING:
                    return record
                left = (record.deadline - self._clock()).total_seconds()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(self._poll, left))):
                        await event.wait()
        finally:
            self._wake.pop(review_id, None)

    async def wait_for_client(
        self,
        review_id: str,
        *,
        left: Coroutine[Any, Any, object],
        gone: Callable[[], bool] = lambda: False,
        check: float = 1.0,
        withdraw: str | None = None,
    ) -> ReviewRecord | None:
        """The decided review, or None when the client stopped waiting first: `left`
        returned (it withdrew, or its connection ended), or `gone()` became true, looked at
        every `check` seconds (a hang-up that only polling sees: nobody reads a held
        client). The one wait every front door holds its client in.

        With `withdraw`, nobody is left waiting for a pending review: it is cancelled with
        that reason when the client stopped waiting, and as "the session ended" when this
        wait is cancelled (then the cancellation goes on)."""
        try:
            decided = await self._wait_for_client(review_id, left, gone, check)
        except asyncio.CancelledError:
            if withdraw is not None:
                await asyncio.shield(self.cancel(review_id, "the session ended"))
            raise
        if decided is None and withdraw is not None:
            # Shielded: the session's teardown cancels this task right after the client left,
            # and a withdrawal cut short left the review pending for its approvers.
            await asyncio.shield(self.cancel(review_id, withdraw))
        return decided

    async def _wait_for_client(
        self,
        review_id: str,
        left: Coroutine[Any, Any, object],
        gone: Callable[[], bool],
        check: float,
    ) -> ReviewRecord | None:
        async with asyncio.TaskGroup() as tg:
            waiting = tg.create_task(self.wait(review_id), name=f"review/{review_id}")
            leaving = tg.create_task(left, name=f"review/{review_id}/client")
            while not (waiting.done() or leaving.done() or gone()):
                await asyncio.wait(
                    (waiting, leaving), timeout=check, return_when=asyncio.FIRST_COMPLETED
                )
            leaving.cancel()
            if waiting.done():
                return waiting.result()
            waiting.cancel()
            return None

    # ---- owners ----------------------------------------------------------------------

    async def add_owner(self, actor: Identity, identity: str, owner: str) -> None:
        try:  # the change and its event: one store transaction
            await self._audit.change(
                lambda: self._store.reviews.add_owner(identity, owner),
                lambda _: [
                    Event("identity.owner_added", actor.user, {"user": identity, "owner": owner})
                ],
            )
        except NotFound as exc:
            raise ReviewError(404, str(exc)) from None

    async def owners(self, identity: str) -> list[str]:
        found = await self._store.io.read(self._store.reviews.owners_of, [identity])
        return sorted(found[identity])
