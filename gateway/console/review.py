"""One review's page: GET /console/reviews/{id}[?sig=...].

The review in full (what was asked, by whom, on what connection, the rule that held it, the
votes), the vote form when the signed-in person may vote, and the requester's recent
activity on that connection: their last sessions there and what each ran, read from the
audit events by the API's own `activity` code. Who may open the page is the API's rule
(`ReviewService.visible`: admins, the requester, its approvers); the activity is shown to
those same people, since judging a request is judging what its requester has been doing.

The webhook's link to this page carries `sig` (gateway/reviews/links.py): the page says
whether it is genuine. The link grants nothing by itself: the page needs a sign-in.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from gateway.api.activity import k8s_activity, pg_activity, ssh_activity
from gateway.api.deps import ApiDeps
from gateway.console.audit import SignedIn
from gateway.console.auth import Signed
from gateway.console.render import page
from gateway.reviews import ReviewError
from gateway.store import ReviewRecord

RECENT_SESSIONS = 5  # the requester's sessions shown (newest first)
RECENT_EVENTS = 500  # events read per session (keeps the page bounded)
RECENT_ITEMS = 10  # statements / commands / requests shown per session


async def recent_activity(
    deps: ApiDeps, record: ReviewRecord, sessions: int = RECENT_SESSIONS, per: int = RECENT_ITEMS
) -> list[dict[str, Any]]:
    """The requester's last `sessions` on the review's connection, each with up to `per` of
    the things it ran, newest first."""
    found = await deps.store.io.scan(
        deps.store.sessions.list_all,
        user=record.requester,
        connection=record.connection,
        limit=sessions,
    )
    out = []
    for s in found:
        events = await deps.store.io.scan(
            deps.store.audit.list_all, session_id=s.id, limit=RECENT_EVENTS
        )
        pg, ssh, k8s = pg_activity(events), ssh_activity(events), k8s_activity(events)
        items = [
            {"ts": x["ts"], "text": x.get("text"), "rows": x.get("rows"), "what": "statement"}
            for x in pg.get("statements", [])
        ]
        items += [
            {"ts": x["ts"], "text": x.get("text"), "rows": None, "what": "refused"}
            for x in pg.get("refused", [])
        ]
        for key, values in (*ssh.items(), *k8s.items()):
            for x in values:
                text = x.get("command") or x.get("path") or x.get("text")
                if text:
                    items.append({"ts": x.get("ts", ""), "text": text, "rows": None, "what": key})
        items.sort(key=lambda i: str(i["ts"]), reverse=True)
        out.append({"session": s, "done": items[:per], "more": len(items) > per})
    return out


def add_routes(api: APIRouter, deps: ApiDeps, signed_in: SignedIn) -> None:
    async def review_page(request: Request, signed: Signed) -> Response:
        review_id = request.path_params["review_id"]
        service = deps.reviews
        if service is None:
            return page(
                "error.html",
                404,
                title="Not found",
                message="approvals are not enabled on this gateway",
                signed=signed,
            )
        try:  # the API's rule for who may see a review; others are told it does not exist
            record = await service.visible(signed.identity, review_id)
        except ReviewError as exc:
            return page(
                "error.html", exc.status, title="Not found", message=exc.message, signed=signed
            )
        sig = request.query_params.get("sig")
        links = service.links
        return page(
            "review.html",
            signed=signed,
            r=record,
            mine=record.requester == signed.identity.user,
            activity=await recent_activity(deps, record),
            link=None if sig is None else bool(links and links.genuine(record.id, sig)),
            csrf=signed.csrf,
        )

    api.add_api_route("/console/reviews/{review_id}", signed_in(review_page), methods=["GET"])
