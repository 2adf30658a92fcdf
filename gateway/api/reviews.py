"""The approvals API: reviews, votes, time-boxed access requests, service-account owners.

    GET  /v1/reviews[?status=&kind=&mine=true]   reviews the caller may see
    GET  /v1/reviews/{id}[?wait=SECONDS]          one review with its votes (long-poll)
    POST /v1/reviews/{id}/approve  {"reason"}     a vote; 403 names the rule it breaks
    POST /v1/reviews/{id}/deny     {"reason"}
    POST /v1/requests  {"connection", "duration", "reason"}   an access request (201)
    GET  /v1/requests                              the caller's own access requests
    POST /v1/service-accounts/{name}/owners {"owner"}  admin: who answers for it
    GET  /v1/service-accounts/{name}/owners

Every call is made as the authenticated caller (the same bearer credentials as the rest of
the API); the review service enforces who may see and vote on what.

No `from __future__ import annotations` here: FastAPI reads the route annotations at
definition time, and they name aliases local to `router`.
"""

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from gateway.auth import Identity
from gateway.reviews import ReviewError, ReviewService, review_json

T = TypeVar("T")
MAX_WAIT = 60.0  # seconds one long-poll may last


class VoteBody(BaseModel):
    reason: str = Field(default="", max_length=4096)


class AccessRequestBody(BaseModel):
    connection: str = Field(max_length=255)
    duration: int = Field(gt=0)  # seconds
    reason: str = Field(max_length=4096)


class OwnerBody(BaseModel):
    owner: str = Field(max_length=255)


def _service(request: Request) -> ReviewService:
    service: ReviewService | None = getattr(request.app.state, "reviews", None)
    if service is None:
        raise HTTPException(404, "approvals are not enabled on this gateway")
    return service


def router(identity: Callable[..., Coroutine[Any, Any, Identity]]) -> APIRouter:
    """The routes, authenticated by `identity` (the API's own bearer dependency)."""
    api = APIRouter()
    Caller = Annotated[Identity, Depends(identity)]
    Reviews = Annotated[ReviewService, Depends(_service)]

    async def call(work: Coroutine[Any, Any, T]) -> T:
        try:
            return await work
        except ReviewError as exc:
            raise HTTPException(exc.status, exc.message) from None

    @api.get("/v1/reviews")
    async def list_reviews(
        who: Caller,
        reviews: Reviews,
        status: str | None = None,
        kind: str | None = None,
        mine: bool = False,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        found = await reviews.list_reviews(
            who, status=status, kind=kind, mine=mine, limit=min(limit, 1000)
        )
        return [review_json(r, votes=False) for r in found]

    @api.get("/v1/reviews/{review_id}")
    async def show_review(
        review_id: str, who: Caller, reviews: Reviews, wait: float = 0
    ) -> dict[str, Any]:
        record = await call(reviews.visible(who, review_id))
        if wait > 0 and record.status == "pending":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, MAX_WAIT)):
                    record = await call(reviews.wait(review_id))
            record = await call(reviews.visible(who, review_id))
        return review_json(record)

    @api.post("/v1/reviews/{review_id}/approve")
    async def approve(
        review_id: str, body: VoteBody, who: Caller, reviews: Reviews
    ) -> dict[str, Any]:
        return review_json(await call(reviews.vote(who, review_id, "approve", body.reason)))

    @api.post("/v1/reviews/{review_id}/deny")
    async def deny(review_id: str, body: VoteBody, who: Caller, reviews: Reviews) -> dict[str, Any]:
        return review_json(await call(reviews.vote(who, review_id, "deny", body.reason)))

    @api.post("/v1/requests", status_code=201)
    async def request_access(
        body: AccessRequestBody, who: Caller, reviews: Reviews
    ) -> dict[str, Any]:
        record = await call(
            reviews.request_access(
                who, connection=body.connection, duration=body.duration, reason=body.reason
            )
        )
        return review_json(record)

    @api.get("/v1/requests")
    async def my_requests(who: Caller, reviews: Reviews) -> list[dict[str, Any]]:
        found = await reviews.list_reviews(who, kind="access", mine=True)
        return [review_json(r, votes=False) for r in found]

    @api.post("/v1/service-accounts/{name}/owners")
    async def add_owner(
        name: str, body: OwnerBody, who: Caller, reviews: Reviews
    ) -> dict[str, Any]:
        if not who.is_admin:
            raise HTTPException(403, f"user {who.user!r} is not an administrator")
        await call(reviews.add_owner(who, name, body.owner))
        return {"name": name, "owners": await reviews.owners(name)}

    @api.get("/v1/service-accounts/{name}/owners")
    async def list_owners(name: str, who: Caller, reviews: Reviews) -> dict[str, Any]:
        return {"name": name, "owners": await reviews.owners(name)}

    return api
