"""The reviews repository, reached as ``Store.reviews``: access requests and reviews with their
votes, and the owners of identities (``gateway/reviews``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from gateway.store import tables as t
from gateway.store.db import Database, NotFound, check_aware
from gateway.store.models import ReviewRecord, VoteRecord


class Reviews:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, rec: ReviewRecord) -> None:
        check_aware(rec.created_at, "created_at")
        check_aware(rec.deadline, "deadline")
        with self._db.write() as conn:
            conn.execute(
                sa.insert(t.reviews).values(
                    id=rec.id,
                    kind=rec.kind,
                    status=rec.status,
                    requester=rec.requester,
                    connection=rec.connection,
                    session_id=rec.session_id,
                    protocol=rec.protocol,
                    text=rec.text,
                    reason=rec.reason,
                    rules=list(rec.rules),
                    terms=rec.terms,
                    access=rec.access,
                    duration=rec.duration,
                    created_at=rec.created_at,
                    deadline=rec.deadline,
                )
            )

    def _review(self, conn: sa.Connection, review_id: str, *, lock: bool = False) -> ReviewRecord:
        stmt = sa.select(t.reviews).where(t.reviews.c.id == review_id)
        if lock and self._db.dialect == "postgresql":
            stmt = stmt.with_for_update()  # votes on one review take turns across replicas
        row = conn.execute(stmt).first()
        if row is None:
            raise NotFound(f"no review {review_id!r}")
        votes = conn.execute(
            sa.select(t.review_votes)
            .where(t.review_votes.c.review_id == review_id)
            .order_by(t.review_votes.c.voted_at)
        ).all()
        return _review_record(row, votes)

    def get(self, review_id: str) -> ReviewRecord | None:
        with self._db.read() as conn:
            try:
                return self._review(conn, review_id)
            except NotFound:
                return None

    def list_all(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        requester: str | None = None,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        """Reviews newest first, without their votes."""
        stmt = sa.select(t.reviews)
        if status is not None:
            stmt = stmt.where(t.reviews.c.status == status)
        if kind is not None:
            stmt = stmt.where(t.reviews.c.kind == kind)
        if requester is not None:
            stmt = stmt.where(t.reviews.c.requester == requester)
        stmt = stmt.order_by(t.reviews.c.created_at.desc(), t.reviews.c.id).limit(limit)
        with self._db.read() as conn:
            return [_review_record(row, ()) for row in conn.execute(stmt).all()]

    def vote(
        self,
        review_id: str,
        judge: Callable[[ReviewRecord], tuple[VoteRecord, Mapping[str, Any] | None]],
    ) -> ReviewRecord:
        """Add a vote and maybe decide, in one transaction.

        ``judge`` sees the review with its votes (locked against concurrent votes); it raises
        to refuse the vote, or returns the vote and, when the vote decides the review, the
        columns to set (status, decided_at, decision, grant_expires_at).
        """
        with self._db.write() as conn:
            review = self._review(conn, review_id, lock=True)
            vote, decided = judge(review)
            conn.execute(
                sa.insert(t.review_votes).values(
                    review_id=review_id,
                    voter=vote.voter,
                    controllers=list(vote.controllers),
                    vote=vote.vote,
                    reason=vote.reason,
                    voted_at=vote.voted_at,
                    expires_at=vote.expires_at,
                )
            )
            if decided:
                conn.execute(
                    sa.update(t.reviews).where(t.reviews.c.id == review_id).values(**decided)
                )
            return self._review(conn, review_id)

    def finish(
        self, review_id: str, *, status: str, decision: str, at: dt.datetime
    ) -> tuple[ReviewRecord, bool]:
        """End a pending review (expired, cancelled); (the review, whether this call ended it)."""
        with self._db.write() as conn:
            changed = conn.execute(
                sa.update(t.reviews)
                .where(t.reviews.c.id == review_id, t.reviews.c.status == "pending")
                .values(status=status, decision=decision, decided_at=at)
            ).rowcount
            return self._review(conn, review_id), bool(changed)

    # Kubernetes reviews: the client is answered at once and runs its request again; an
    # approval of the identical request (same requester, connection, protocol and text)
    # lets it pass.
    def matching(
        self, *, requester: str, connection: str, protocol: str, text: str, limit: int = 5
    ) -> list[ReviewRecord]:
        """Statement reviews of exactly this request, newest first, with their votes."""
        stmt = (
            sa.select(t.reviews.c.id)
            .where(
                t.reviews.c.requester == requester,
                t.reviews.c.kind == "statement",
                t.reviews.c.connection == connection,
                t.reviews.c.protocol == protocol,
                t.reviews.c.text == text,
            )
            .order_by(t.reviews.c.created_at.desc(), t.reviews.c.id)
            .limit(limit)
        )
        with self._db.read() as conn:
            ids = conn.execute(stmt).scalars().all()
            return [self._review(conn, i) for i in ids]

    def granted_connections(self, user: str, at: dt.datetime) -> dict[str, dt.datetime]:
        """Connections `user` holds an approved, unexpired access request for -> its end."""
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(t.reviews.c.connection, t.reviews.c.grant_expires_at).where(
                    t.reviews.c.requester == user,
                    t.reviews.c.kind == "access",
                    t.reviews.c.status == "approved",
                    t.reviews.c.grant_expires_at > at,
                )
            ).all()
        out: dict[str, dt.datetime] = {}
        for r in rows:
            out[r.connection] = max(r.grant_expires_at, out.get(r.connection, r.grant_expires_at))
        return out

    def add_owner(self, identity: str, owner: str) -> None:
        with self._db.write() as conn:
            if (
                conn.execute(sa.select(t.users.c.name).where(t.users.c.name == identity)).first()
                is None
            ):
                raise NotFound(f"no user {identity!r}")
            conn.execute(
                self._db.insert_ignore(
                    t.identity_owners,
                    {"identity": identity, "owner": owner, "created_at": self._db.clock()},
                )
            )

    def owners_of(self, identities: Iterable[str]) -> dict[str, set[str]]:
        names = list(identities)
        out: dict[str, set[str]] = {n: set() for n in names}
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(t.identity_owners).where(t.identity_owners.c.identity.in_(names))
            ).all()
        for r in rows:
            out[r.identity].add(r.owner)
        return out


def _review_record(row: sa.Row[Any], votes: Iterable[sa.Row[Any]]) -> ReviewRecord:
    return ReviewRecord(
        id=row.id,
        kind=row.kind,
        status=row.status,
        requester=row.requester,
        connection=row.connection,
        text=row.text,
        reason=row.reason,
        terms=dict(row.terms),
        created_at=row.created_at,
        deadline=row.deadline,
        rules=tuple(row.rules),
        session_id=row.session_id,
        protocol=row.protocol,
        access=row.access,
        duration=row.duration,
        decided_at=row.decided_at,
        decision=row.decision,
        grant_expires_at=row.grant_expires_at,
        votes=tuple(
            VoteRecord(
                voter=v.voter,
                controllers=tuple(v.controllers),
                vote=v.vote,
                reason=v.reason,
                voted_at=v.voted_at,
                expires_at=v.expires_at,
            )
            for v in votes
        ),
    )
