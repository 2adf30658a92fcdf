"""Approvals: statement reviews and time-boxed access requests, with segregation of duties.

    front door (PostgreSQL, SSH exec; later Kubernetes) ── decision "review" ──▶
        ReviewService.hold(...)    store: reviews row (pending), audit review.created,
                                   webhook review.created; the client is told the id
        ReviewService.wait(id)     in-process wake-up, store poll as the fallback, so a
                                   vote on any gateway replica ends the wait
    wardgate reviews approve|deny / POST /v1/reviews/{id}/approve|deny ──▶
        ReviewService.vote(...)    one store transaction: may this identity vote
                                   (`gateway.policy.approval`: not the requester nor anyone
                                   controlling the same identities, an allowed approver, not
                                   twice), add the vote, tally; audit + webhook on decision
    wardgate request CONN --for 2h / POST /v1/requests ──▶ an "access" review; once
        approved, `granted_connections` feeds the grant check of every session open
        (`gateway.policy.grants`: grants with `request:` terms hold only then)

* ``service``: ``ReviewService`` (store, audit, waiting) and the JSON form of a review.
* ``webhook``: signed POSTs of review events, retried in the background, never blocking.
* ``links``: each event's `console_url`, the review's console page (with an HMAC `sig`).

The decision logic (who may vote, what votes decide) is pure, in ``gateway.policy.approval``.
"""

from gateway.reviews.links import ReviewLinks
from gateway.reviews.service import ReviewError, ReviewService, outcome, review_json
from gateway.reviews.webhook import Webhook, sign, verify

__all__ = [
    "ReviewError",
    "ReviewLinks",
    "ReviewService",
    "Webhook",
    "outcome",
    "review_json",
    "sign",
    "verify",
]
