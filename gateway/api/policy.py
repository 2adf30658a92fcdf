"""The policy API: versions in the store, rollback, and exfiltration budget usage.

    GET  /v1/policy                          the version in force, with its document
    PUT  /v1/policy                          {"policy": {...}, "comment": "..."}: a new version
                                             unless unchanged
    GET  /v1/policy/versions                 every version (without documents)
    GET  /v1/policy/versions/{n}             one version, with its document
    POST /v1/policy/versions/{n}/rollback    apply version n's document again, as a new version
    GET  /v1/budgets/usage?day=&user=&connection=   the day's budget usage (UTC)

All need an administrator. An invalid document is answered 422 with what is wrong, and
changes nothing. Every change is audited as `policy.applied`, in the transaction that makes
it (`PolicySource.add_version`).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from gateway.api.deps import Admin, ApiDeps
from gateway.policystore import PolicyDocumentError, PolicySource, canonical, version_json


class PolicyPut(BaseModel):
    policy: dict[str, Any] = Field(default_factory=dict)
    comment: str | None = Field(default=None, max_length=1000)


def policy_router(deps: ApiDeps) -> APIRouter:
    router = APIRouter()

    def source() -> PolicySource:
        if deps.policy_source is None:
            raise HTTPException(404, "this gateway keeps no policy versions")
        return deps.policy_source

    @router.get("/v1/policy")
    async def show(who: Admin) -> dict[str, Any]:
        src = source()
        version = await src.refresh()
        record = await deps.store.io.read(deps.store.policy.get_version, version or None)
        if record is None:  # nothing in the store: the config's (empty) policy
            text, sha = canonical(src.policy.config)
            return {"version": 0, "sha256": sha, "policy": json.loads(text)}
        return version_json(record, document=True)

    @router.put("/v1/policy")
    async def put(body: PolicyPut, who: Admin) -> dict[str, Any]:
        try:
            applied = await source().apply(body.policy, applied_by=who.user, comment=body.comment)
        except PolicyDocumentError as exc:
            raise HTTPException(422, str(exc)) from None
        return applied.as_json()

    @router.get("/v1/policy/versions")
    async def versions(who: Admin) -> list[dict[str, Any]]:
        source()
        return [version_json(r) for r in await deps.store.io.scan(deps.store.policy.list_versions)]

    @router.get("/v1/policy/versions/{version}")
    async def version(version: int, who: Admin) -> dict[str, Any]:
        source()
        record = await deps.store.io.read(deps.store.policy.get_version, version)
        if record is None:
            raise HTTPException(404, f"policy version {version} does not exist")
        return version_json(record, document=True)

    @router.post("/v1/policy/versions/{version}/rollback")
    async def rollback(version: int, who: Admin) -> dict[str, Any]:
        try:
            applied = await source().rollback(version, applied_by=who.user)
        except PolicyDocumentError as exc:  # a version this gateway can no longer read
            raise HTTPException(422, str(exc)) from None
        if applied is None:
            raise HTTPException(404, f"policy version {version} does not exist")
        return applied.as_json()

    @router.get("/v1/budgets/usage")
    async def budget_usage(
        who: Admin,
        day: dt.date | None = None,
        user: str | None = None,
        connection: str | None = None,
    ) -> list[dict[str, Any]]:
        day = day or dt.datetime.now(dt.UTC).date()
        rows = await deps.store.io.read(
            deps.store.policy.budget_usage, day, user=user, connection=connection
        )
        return [
            {"day": day.isoformat(), "user": u, "connection": c, "budget": b, "rows": r, "bytes": n}
            for u, c, b, r, n in rows
        ]

    return router
