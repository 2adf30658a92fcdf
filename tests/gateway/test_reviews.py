"""ReviewService on a real store (SQLite and PostgreSQL) with the real auditor.

Time is a clock the test moves: deadlines and approval lifetimes are checked without waiting.
Two services on one store stand for two gateway replicas.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.audit import Auditor
from gateway.auth import Identity
from gateway.policy.approval import ReviewTerms
from gateway.policy.grants import AccessPolicy, Grant, Role
from gateway.reviews import ReviewError, ReviewService
from gateway.store import ReviewRecord, Store
from tests.fixtures.postgres import PostgresServer

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
TERMS = ReviewTerms.model_validate(
    {"approvers": {"groups": ["dba"]}, "timeout": 60, "approval_ttl": 600, "max_duration": 7200}
)
ALICE = Identity(user="alice", groups=("dev",))
BOB = Identity(user="bob", groups=("dba",))
CAROL = Identity(user="carol", groups=("dba",))
ACCESS = AccessPolicy(
    [Role("devs", groups=frozenset({"dev"}), grants=(Grant("pg-prod", "admin", request=TERMS),))]
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'wardgate.db'}"
    else:
        db: PostgresServer = request.getfixturevalue("postgres_db")
        url = db.url()
    with Store.open(url) as opened:
        yield opened


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def auditor(store: Store) -> AsyncIterator[Auditor]:
    audit = Auditor(store)
    yield audit
    await audit.aclose()


def service(store: Store, auditor: Auditor, clock: Clock) -> ReviewService:
    return ReviewService(store, auditor, ACCESS, poll_interval=0.05, clock=clock)


async def held(reviews: ReviewService, terms: ReviewTerms = TERMS) -> str:
    record = await reviews.hold(
        ALICE,
        connection="pg-main",
        session_id="s1",
        protocol="postgres",
        text="delete from t where id = 1",
        reason="writes need review",
        rules=("r",),
        terms=terms,
    )
    return record.id


async def test_a_vote_on_another_replica_ends_the_wait(
    store: Store, auditor: Auditor, clock: Clock
) -> None:
    here, there = service(store, auditor, clock), service(store, auditor, clock)
    review_id = await held(here)
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(here.wait(review_id))
        decided = await there.vote(BOB, review_id, "approve", "fine")
        assert decided.status == "approved"
        async with asyncio.timeout(30):
            result = await waiting
    assert result.status == "approved" and result.decision == "approved by 'bob': fine"
    kinds = [e.kind for e in store.audit.list_all() if e.data.get("review") == review_id]
    assert kinds == ["review.created", "review.vote", "review.approved"]


async def test_the_client_wait_ends_with_the_decision_or_the_client(
    store: Store, auditor: Auditor, clock: Clock
) -> None:
    reviews = service(store, auditor, clock)
    # decided first: the decision
    decided_id = await held(reviews)
    left = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(reviews.wait_for_client(decided_id, left=left.wait()))
        await reviews.vote(BOB, decided_id, "approve")
        async with asyncio.timeout(30):
            got = await waiting
    assert got is not None and got.status == "approved"
    # the client withdrew (a cancel, a closed connection): None, the review still pending
    withdrawn_id = await held(reviews)
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(reviews.wait_for_client(withdrawn_id, left=left.wait()))
        left.set()
        async with asyncio.timeout(30):
            assert await waiting is None
    # a hang-up that only polling sees
    polled_id = await held(reviews)
    hung_up = False
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(
            reviews.wait_for_client(
                polled_id, left=asyncio.Event().wait(), gone=lambda: hung_up, check=0.01
            )
        )
        hung_up = True
        async with asyncio.timeout(30):
            assert await waiting is None
    assert (await reviews.get(withdrawn_id)).status == "pending"
    assert (await reviews.get(polled_id)).status == "pending"


async def test_a_wait_cancelled_while_it_withdraws_still_withdraws(
    store: Store, auditor: Auditor, clock: Clock
) -> None:
    """The client left and the session's teardown cancels the wait while it withdraws (an
    SSH hang-up does both at once): the review still ends, with the client's reason."""
    reviews = service(store, auditor, clock)
    review_id = await held(reviews)
    finishing = asyncio.Event()
    finish = reviews._finish

    async def slow_finish(review_id: str, status: str, decision: str) -> ReviewRecord:
        finishing.set()
        await asyncio.sleep(0)  # a store write takes turns of the loop
        return await finish(review_id, status, decision)

    reviews._finish = slow_finish  # type: ignore[method-assign]
    left = asyncio.Event()
    left.set()
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(
            reviews.wait_for_client(review_id, left=left.wait(), withdraw="the client went away")
        )
        await finishing.wait()
        waiting.cancel()
    assert waiting.cancelled()
    async with asyncio.timeout(30):
        ended = await reviews.wait(review_id)
    assert (ended.status, ended.decision) == ("cancelled", "the client went away")


async def test_a_withdrawing_wait_cancels_the_review_nobody_waits_for(
    store: Store, auditor: Auditor, clock: Clock
) -> None:
    reviews = service(store, auditor, clock)
    # the client left: cancelled with the reason given
    left_id = await held(reviews)
    left = asyncio.Event()
    left.set()
    got = await reviews.wait_for_client(left_id, left=left.wait(), withdraw="the client went away")
    assert got is None
    cancelled = await reviews.get(left_id)
    assert (cancelled.status, cancelled.decision) == ("cancelled", "the client went away")
    # the wait itself cancelled (the session ended): cancelled too, and the cancel goes on
    ended_id = await held(reviews)
    started = asyncio.Event()

    async def client_stays() -> None:
        started.set()
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(
            reviews.wait_for_client(ended_id, left=client_stays(), withdraw="gone")
        )
        await started.wait()
        waiting.cancel()
    assert waiting.cancelled()
    ended = await reviews.get(ended_id)
    assert (ended.status, ended.decision) == ("cancelled", "the session ended")
    # decided first: nothing withdrawn
    decided_id = await held(reviews)
    async with asyncio.TaskGroup() as tg:
        waiting2 = tg.create_task(
            reviews.wait_for_client(decided_id, left=asyncio.Event().wait(), withdraw="gone")
        )
        await reviews.vote(BOB, decided_id, "deny")
    denied = await waiting2
    assert denied is not None and denied.status == "denied"


async def test_self_approval_and_outsiders_are_refused_and_audited(
    store: Store, auditor: Auditor, clock: Clock
) -> None:
    reviews = service(store, auditor, clock)
    review_id = await held(reviews)
    with pytest.raises(ReviewError, match="nobody reviews their own request") as own:
        await reviews.vote(Identity(user="alice", groups=("dba",)), review_id, "approve")
    assert own.value.status == 403
    store.identity.ensure_machine("alice-bot", kind="service", groups=("dba",))
    await reviews.add_owner(BOB, "alice-bot", "alice")
    with pytest.raises(ReviewError, match="same person"):
        await reviews.vote(Identity(user="alice-bot", groups=("dba",)), review_id, "approve")
    with pytest.raises(ReviewError, match="may not review"):
        await reviews.vote(Identity(user="dave", groups=("dev",)), review_id, "deny")
    assert (await reviews.get(review_id)).status == "pending"
    refused = [e for e in store.audit.list_all() if e.kind == "review.vote_refused"]
    assert [e.actor for e in refused] == ["alice", "alice-bot", "dave"]
    with pytest.raises(ReviewError) as unknown:
        await reviews.add_owner(BOB, "nobody", "alice")
    assert unknown.value.status == 404


async def test_undecided_reviews_expire_and_refuse_late_votes(
    store: Store, auditor: Auditor, clock: Clock
) -> None:
    reviews = service(store, auditor, clock)
    review_id = await held(reviews)
    clock.advance(61)
    async with asyncio.timeout(30):
        result = await reviews.wait(review_id)
    assert result.status == "expired"
    with pytest.raises(ReviewError, match="already expired") as late:
        await reviews.vote(BOB, review_id, "approve")
    assert late.value.status == 409


async def test_approvals_expire_before_the_second_arrives(
    store: Store, auditor: Auditor, clock: Clock
) -> None:
    reviews = service(store, auditor, clock)
    terms = TERMS.model_copy(update={"required": 2, "timeout": 3600})
    review_id = await held(reviews, terms)
    assert (await reviews.vote(BOB, review_id, "approve")).status == "pending"
    clock.advance(601)  # bob's approval is stale now
    assert (await reviews.vote(CAROL, review_id, "approve")).status == "pending"
    denied = await reviews.vote(Identity(user="erin", groups=("dba",)), review_id, "deny", "no")
    assert denied.status == "denied" and denied.decision == "denied by 'erin': no"


async def test_access_request_grants_the_connection_until_it_expires(
    store: Store, auditor: Auditor, clock: Clock
) -> None:
    reviews = service(store, auditor, clock)
    with pytest.raises(ReviewError, match="no role lets"):
        await reviews.request_access(BOB, connection="pg-prod", duration=60, reason="x")
    with pytest.raises(ReviewError, match="duration"):
        await reviews.request_access(ALICE, connection="pg-prod", duration=7201, reason="x")
    record = await reviews.request_access(
        ALICE, connection="pg-prod", duration=3600, reason="incident"
    )
    assert record.access == "admin" and await reviews.granted_connections("alice") == {}
    approved = await reviews.vote(BOB, record.id, "approve")
    assert approved.grant_expires_at == T0 + dt.timedelta(seconds=3600)
    assert await reviews.granted_connections("alice") == {"pg-prod": approved.grant_expires_at}
    clock.advance(3600)
    assert await reviews.granted_connections("alice") == {}
    seen = await reviews.list_reviews(Identity(user="dave", groups=("dev",)))
    assert seen == []  # neither requester nor approver
    assert [r.id for r in await reviews.list_reviews(BOB, kind="access")] == [record.id]


async def test_latest_review_of_a_request_and_how_long_its_approval_holds(
    store: Store, auditor: Auditor, clock: Clock
) -> None:
    """Kubernetes: the client runs its request again; the newest review of exactly that
    request (user, connection, protocol, text) decides whether it passes."""
    reviews = service(store, auditor, clock)
    text = "exec pod/web-1 -n default -c app -- ls"
    where = {"connection": "k8s", "protocol": "kubernetes", "text": text}
    assert await reviews.latest(ALICE, **where) is None
    first = await reviews.hold(
        ALICE, session_id="s1", reason="exec needs review", rules=("r",), terms=TERMS, **where
    )
    found = await reviews.latest(ALICE, **where)
    assert found is not None and found.id == first.id and not reviews.still_approved(found)
    assert await reviews.latest(BOB, **where) is None  # another user's request
    assert await reviews.latest(ALICE, **{**where, "text": text + " -la"}) is None
    assert await reviews.latest(ALICE, **{**where, "connection": "k8s-2"}) is None
    await reviews.vote(BOB, first.id, "approve")
    found = await reviews.latest(ALICE, **where)
    assert found is not None and reviews.still_approved(found)
    clock.advance(601)  # TERMS.approval_ttl: the approval is spent
    assert not reviews.still_approved(found)
    second = await reviews.hold(
        ALICE, session_id="s2", reason="exec needs review", rules=("r",), terms=TERMS, **where
    )
    await reviews.vote(CAROL, second.id, "deny")
    found = await reviews.latest(ALICE, **where)
    assert found is not None and found.id == second.id and found.status == "denied"
    assert not reviews.still_approved(found)
