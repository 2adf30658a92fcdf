"""The admin API and the WebSocket entry of generic TCP sessions."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, HTTPException, Query, Request, Response, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from gateway.api import docs, limits, paging, search
from gateway.api import reviews as reviews_api
from gateway.api.deps import Admin, ApiDeps, User, client_of, identity_of
from gateway.api.health import health_router
from gateway.api.paging import MAX_PAGE
from gateway.api.policy import policy_router
from gateway.audit import AuditUnavailable, Event
from gateway.auth import AuthError, Identity
from gateway.connections import ConnectionError_, apply, describe, to_record
from gateway.connspec import NAME_RE, ConnectionSpec
from gateway.identity.credentials import FlowPending, IdentityError, IdentityService
from gateway.policy.budgets import Usage
from gateway.policy.explain import explain
from gateway.policy.grants import AccessPolicy
from gateway.policy.lineage import ColumnRules
from gateway.policy.rules import subject_for
from gateway.policystore import (
    Applied,
    PolicyDocumentError,
    as_view,
    parse_document,
)
from gateway.protocols import tcp
from gateway.protocols.pgfunctions import explain_lineage
from gateway.sessions import READ_ONLY_ENFORCED, SessionError
from gateway.store import (
    AlreadyExists,
    ConnectionRecord,
    NotFound,
    SessionRecord,
    StoreUnavailable,
)
from gateway.store.chain import ChainCheck
from gateway.telemetry import Telemetry
from shared.agentkey import AgentKey, hash_secret, new_secret
from shared.version import __version__

log = logging.getLogger(__name__)

T = TypeVar("T")

# In the OpenAPI document of every sign-in endpoint (api/ratelimit.py).
RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"description": "Too many failed sign-in attempts; `Retry-After` says when to retry."}
}


class AgentCreate(BaseModel):
    name: str
    pool: str | None = None


class ApplyRequest(BaseModel):
    connections: list[ConnectionSpec] = Field(default_factory=list)
    policy: dict[str, Any] | None = None  # a new policy version unless unchanged
    comment: str | None = Field(default=None, max_length=1000)  # the new version's


class AuthorizeRequest(BaseModel):
    redirect_uri: str
    state: str
    nonce: str
    code_challenge: str


class CallbackRequest(BaseModel):
    code: str = Field(max_length=4096)
    redirect_uri: str
    code_verifier: str = Field(max_length=256)
    nonce: str = Field(max_length=256)


class DeviceTokenRequest(BaseModel):
    device_code: str = Field(max_length=4096)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(max_length=256)


class WorkloadRequest(BaseModel):
    token: str = Field(max_length=16 * 1024)


class PasswordRequest(BaseModel):
    user: str = Field(max_length=255)
    password: str = Field(max_length=1024)
    code: str = Field(max_length=16)


class ConnectionCredentialRequest(BaseModel):
    connection: str


class LocalUserCreate(BaseModel):
    name: str
    password: str = Field(max_length=1024)
    groups: list[str] = Field(default_factory=list)


class ServiceAccountCreate(BaseModel):
    name: str
    groups: list[str] = Field(default_factory=list)
    dpop: bool = False  # its API keys need DPoP proofs (RFC 9449); stays on once set


class ExplainRequest(BaseModel):
    user: str = Field(max_length=255)
    # None: the user's groups as the store knows them (from the last sign-in).
    groups: list[str] | None = None
    connection: str = Field(max_length=255)
    sql: str = Field(max_length=1024 * 1024)


class ApiKeyCreate(BaseModel):
    scopes: list[str]
    ttl: int | None = Field(default=None, gt=0)
    label: str = ""


def _session_json(s: SessionRecord) -> dict[str, Any]:
    return {
        "id": s.id,
        "user": s.user,
        "connection": s.connection,
        "protocol": s.protocol,
        "client": s.client_addr,
        "agent": s.agent,
        "started_at": s.started_at.isoformat(),
        "ended_at": s.ended_at.isoformat() if s.ended_at else None,
        "status": s.status,
        "error": s.error,
        "bytes_up": s.bytes_up,
        "bytes_down": s.bytes_down,
        "member": s.member,  # the gateway member that serves it (docs/fleet.md)
    }


def build_app(deps: ApiDeps) -> FastAPI:
    app = FastAPI(
        title="Wardgate",
        version=__version__,
        description="Admin API of the Wardgate access gateway. Authenticate with "
        "`Authorization: Bearer <token>`.",
        docs_url=None,  # FastAPI's pages load from a CDN: see gateway.api.docs
        redoc_url=None,
    )
    docs.mount(app)
    limits.install(app)
    app.state.deps = deps

    @app.exception_handler(StoreUnavailable)
    @app.exception_handler(AuditUnavailable)
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        # A full disk or a lost store database: the change is not made, and not recorded.
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=503)

    health, app.state.store_probe = health_router(deps, deps.telemetry or Telemetry())
    app.include_router(health)

    @app.get("/v1/ca.pem", response_class=PlainTextResponse)
    async def ca_pem() -> str:
        return deps.ca_pem.decode()

    @app.get("/v1/whoami")
    async def whoami(who: User) -> dict[str, Any]:
        record = await deps.store.io.read(deps.store.identity.get_token, who.token_id)
        requested: dict[str, dt.datetime] = {}
        if deps.identity and not who.is_admin:  # grants held through approved requests
            requested = await deps.store.io.read(
                deps.store.reviews.granted_connections, who.user, dt.datetime.now(dt.UTC)
            )
        return {
            "user": who.user,
            "admin": who.is_admin,
            "groups": list(who.groups),
            "kind": who.kind,
            "login": who.login_id,
            "credential": {
                "id": who.token_id,
                "kind": who.credential,
                "expires_at": (
                    record.expires_at.isoformat() if record and record.expires_at else None
                ),
                "scopes": list(who.scopes) if who.scopes is not None else None,
                "dpop_jkt": record.jkt if record else None,  # the key it is bound to
            },
            "grants": ident().grants(who, requested) if deps.identity else [],
        }

    # ---- identity ------------------------------------------------------------------

    def ident() -> IdentityService:
        if deps.identity is None:
            raise HTTPException(404, "identity services are not configured")
        return deps.identity

    async def guarded(call: Awaitable[T]) -> T:
        try:
            return await call
        except IdentityError as exc:
            raise HTTPException(exc.status, exc.message) from None

    @app.get("/v1/auth/methods")
    async def auth_methods() -> dict[str, Any]:
        return ident().methods()

    def attempt(
        request: Request, endpoint: str, *, identity: str | None = None, refund: bool = True
    ) -> contextlib.AbstractAsyncContextManager[None]:
        if deps.limiter is None:
            return contextlib.nullcontext()
        return deps.limiter.attempt(request, endpoint, identity=identity, refund_success=refund)

    @app.post("/v1/auth/oidc/authorize", responses=RATE_LIMITED)
    async def oidc_authorize(body: AuthorizeRequest, request: Request) -> dict[str, Any]:
        async with attempt(request, "oidc_authorize"):
            url = await guarded(
                ident().oidc_authorization_url(
                    redirect_uri=body.redirect_uri,
                    state=body.state,
                    nonce=body.nonce,
                    code_challenge=body.code_challenge,
                )
            )
        return {"url": url}

    @app.post("/v1/auth/oidc/callback", responses=RATE_LIMITED)
    async def oidc_callback(body: CallbackRequest, request: Request) -> dict[str, Any]:
        async with attempt(request, "oidc_callback"):
            issued = await guarded(
                ident().oidc_code_login(
                    code=body.code,
                    redirect_uri=body.redirect_uri,
                    code_verifier=body.code_verifier,
                    nonce=body.nonce,
                    client=client_of(request),
                )
            )
        return issued.as_json()

    @app.post("/v1/auth/oidc/device", responses=RATE_LIMITED)
    async def oidc_device(request: Request) -> dict[str, Any]:
        # Every start asks the IdP for a code: counted even when it succeeds.
        async with attempt(request, "device", refund=False):
            return await guarded(ident().oidc_device_start())

    @app.post("/v1/auth/oidc/device/token", response_model=None, responses=RATE_LIMITED)
    async def oidc_device_token(
        body: DeviceTokenRequest, request: Request
    ) -> dict[str, Any] | JSONResponse:
        try:
            async with attempt(request, "device_poll"):
                issued = await guarded(
                    ident().oidc_device_poll(
                        device_code=body.device_code, client=client_of(request)
                    )
                )
        except FlowPending as pending:
            error = "slow_down" if pending.slow_down else "authorization_pending"
            return JSONResponse({"error": error}, status_code=428)
        return issued.as_json()

    @app.post("/v1/auth/refresh", responses=RATE_LIMITED)
    async def refresh(body: RefreshRequest, request: Request) -> dict[str, Any]:
        async with attempt(request, "refresh"):
            issued = await guarded(ident().refresh(body.refresh_token, client=client_of(request)))
        return issued.as_json()

    @app.post("/v1/auth/workload", responses=RATE_LIMITED)
    async def workload(body: WorkloadRequest, request: Request) -> dict[str, Any]:
        # Address only: a signature cannot be guessed, and the subject a token claims before
        # it is verified is anyone's to claim, so an identity limit would let anyone lock a
        # CI job out with forged tokens.
        async with attempt(request, "workload"):
            issued = await guarded(ident().workload_exchange(body.token, client=client_of(request)))
        return issued.as_json()

    @app.post("/v1/auth/password", responses=RATE_LIMITED)
    async def password_login(body: PasswordRequest, request: Request) -> dict[str, Any]:
        async with attempt(request, "local", identity=f"local:{body.user}"):
            issued = await guarded(
                ident().local_login(
                    user=body.user,
                    password=body.password,
                    code=body.code,
                    client=client_of(request),
                )
            )
        return issued.as_json()

    @app.post("/v1/auth/logout")
    async def logout(who: User) -> dict[str, Any]:
        return await guarded(ident().logout(who))

    @app.post("/v1/credentials/connection")
    async def connection_credential(body: ConnectionCredentialRequest, who: User) -> dict[str, Any]:
        if await deps.store.io.read(deps.store.connections.get, body.connection) is None:
            raise HTTPException(404, f"connection {body.connection!r} does not exist")
        token, expires = await guarded(ident().connection_credential(who, body.connection))
        return {
            "user": who.user,
            "connection": body.connection,
            "token": token,
            "expires_at": expires.isoformat(),
        }

    @app.get("/v1/credentials")
    async def list_credentials(who: User, user: str | None = None) -> list[dict[str, Any]]:
        return await guarded(ident().list_credentials(who, user))

    @app.delete("/v1/credentials/{credential_id}")
    async def revoke_credential(credential_id: str, who: User) -> dict[str, Any]:
        return await guarded(ident().revoke(who, credential_id))

    @app.get("/v1/users")
    async def list_users(who: Admin) -> list[dict[str, Any]]:
        return [
            {
                "name": u.name,
                "kind": u.kind,
                "admin": u.is_admin,
                "groups": list(u.groups),
                "disabled": u.disabled,
                "issuer": u.issuer,
                "local": u.has_password,
            }
            for u in await deps.store.io.scan(deps.store.identity.list_users)
        ]

    @app.post("/v1/users", status_code=201)
    async def create_local_user(body: LocalUserCreate, who: Admin) -> dict[str, Any]:
        user, uri = await guarded(
            ident().create_local_user(
                who, name=body.name, password=body.password, groups=body.groups
            )
        )
        return {"name": user.name, "totp_uri": uri}

    @app.post("/v1/users/{name}/disable")
    async def disable_user(name: str, who: Admin) -> dict[str, Any]:
        user = await guarded(ident().set_disabled(who, name, True))
        return {"name": user.name, "disabled": True}

    @app.post("/v1/users/{name}/enable")
    async def enable_user(name: str, who: Admin) -> dict[str, Any]:
        user = await guarded(ident().set_disabled(who, name, False))
        return {"name": user.name, "disabled": False}

    @app.post("/v1/service-accounts", status_code=201)
    async def create_service_account(body: ServiceAccountCreate, who: Admin) -> dict[str, Any]:
        user = await guarded(
            ident().create_service_account(who, name=body.name, groups=body.groups, dpop=body.dpop)
        )
        return {
            "name": user.name,
            "kind": user.kind,
            "groups": list(user.groups),
            "dpop": user.dpop,
        }

    @app.post("/v1/service-accounts/{name}/keys", status_code=201)
    async def create_api_key(name: str, body: ApiKeyCreate, who: Admin) -> dict[str, Any]:
        key, record = await guarded(
            ident().create_api_key(
                who, name=name, scopes=body.scopes, ttl=body.ttl, label=body.label
            )
        )
        return {
            "user": name,
            "id": record.id,
            "key": key,
            "scopes": list(record.scopes or ()),
            "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        }

    # ---- agents --------------------------------------------------------------------

    def agent_key(name: str, secret: str) -> str:
        return AgentKey(
            name=name,
            secret=secret,
            host=deps.agent_host,
            port=deps.agent_port,
            ca_fingerprint=None if deps.insecure_agents else deps.ca_fingerprint,
            insecure=deps.insecure_agents,
        ).format()

    @app.post("/v1/agents", status_code=201)
    async def create_agent(body: AgentCreate, who: Admin) -> dict[str, Any]:
        pool = body.pool or body.name
        for value in (body.name, pool):
            if not NAME_RE.match(value):
                raise HTTPException(422, f"{value!r} is not a valid agent or pool name")
        secret = new_secret()
        try:
            await deps.auditor.change(
                lambda: deps.store.agents.create(body.name, pool, hash_secret(secret)),
                lambda _: [Event("agent.created", who.user, {"agent": body.name, "pool": pool})],
            )
        except AlreadyExists:
            raise HTTPException(409, f"agent {body.name!r} already exists") from None
        return {"name": body.name, "pool": pool, "key": agent_key(body.name, secret)}

    @app.post("/v1/agents/{name}/rotate")
    async def rotate_agent(name: str, who: Admin) -> dict[str, Any]:
        secret = new_secret()
        try:
            record = await deps.auditor.change(
                lambda: deps.store.agents.rotate_secret(name, hash_secret(secret)),
                lambda _: [Event("agent.rotated", who.user, {"agent": name})],
            )
        except NotFound:
            raise HTTPException(404, f"agent {name!r} does not exist") from None
        live = deps.registry.get(name)
        if live is not None:
            live.close("key rotated")
        return {"name": name, "pool": record.pool, "key": agent_key(name, secret)}

    @app.get("/v1/agents")
    async def list_agents(who: Admin) -> list[dict[str, Any]]:
        records = await deps.store.io.scan(deps.store.agents.list_all)
        out = []
        for r in records:
            live = deps.registry.get(r.name)
            out.append(
                {
                    "name": r.name,
                    "pool": r.pool,
                    "revoked": r.revoked,
                    "connected": live is not None,
                    "version": live.version if live else None,
                    "capabilities": sorted(live.capabilities) if live else [],
                    "active_sessions": live.active_sessions if live else 0,
                    "peer": live.peer if live else None,
                }
            )
        return out

    @app.delete("/v1/agents/{name}")
    async def revoke_agent(name: str, who: Admin) -> dict[str, Any]:
        try:
            await deps.auditor.change(
                lambda: deps.store.agents.revoke(name),
                lambda _: [Event("agent.revoked", who.user, {"agent": name})],
            )
        except NotFound:
            raise HTTPException(404, f"agent {name!r} does not exist") from None
        live = deps.registry.get(name)
        if live is not None:
            live.close("revoked")
        return {"name": name, "revoked": True}

    # ---- connections ---------------------------------------------------------------

    async def visible(who: Identity, record: ConnectionRecord) -> dict[str, Any] | None:
        """What `who` may see of a connection. Administrators: all of it. Anyone else: the
        connections they may reach (or request), by name and type only: where a target
        lives is the operator's to know, and the rest do not exist for them."""
        if who.is_admin:
            return describe(record)
        decision = await deps.broker.access(who, record)
        if decision.access is None and decision.on_request is None:
            return None
        return {
            "name": record.name,
            "type": record.type,
            "access": decision.access,
            "on_request": decision.on_request is not None,
        }

    @app.get("/v1/connections")
    async def list_connections(who: User) -> list[dict[str, Any]]:
        shown = [
            await visible(who, c) for c in await deps.store.io.scan(deps.store.connections.list_all)
        ]
        return [c for c in shown if c is not None]

    @app.get("/v1/connections/{name}")
    async def show_connection(name: str, who: User) -> dict[str, Any]:
        record = await deps.store.io.read(deps.store.connections.get, name)
        shown = await visible(who, record) if record is not None else None
        if shown is None:
            raise HTTPException(404, f"connection {name!r} does not exist")
        return shown

    @app.get("/v1/connections/{name}/access")
    async def connection_access(name: str, who: User) -> dict[str, Any]:
        """Whether the caller may open a session on NAME, decided as opening one would (no
        session, no audit event): `wardgate tcp` asks before it listens."""
        record = await deps.store.io.read(deps.store.connections.get, name)
        if record is None:
            raise HTTPException(404, f"connection {name!r} does not exist")
        decision = await deps.broker.access(who, record)
        return {
            "connection": name,
            "type": record.type,
            "access": decision.access,
            "reason": decision.reason,
        }

    @app.post("/v1/connections", status_code=201)
    async def create_connection(spec: ConnectionSpec, who: Admin) -> dict[str, Any]:
        try:
            record = to_record(spec, deps.secret_box)
        except ConnectionError_ as exc:
            raise HTTPException(422, str(exc)) from None

        def create() -> ConnectionRecord:
            if deps.store.connections.get(spec.name) is not None:
                raise AlreadyExists(f"connection {spec.name!r} already exists")
            return deps.store.connections.upsert(record)[0]

        try:
            stored = await deps.auditor.change(
                create, lambda _: [Event("connection.created", who.user, {"connection": spec.name})]
            )
        except AlreadyExists as exc:
            raise HTTPException(409, str(exc)) from None
        return describe(stored)

    @app.delete("/v1/connections/{name}")
    async def delete_connection(name: str, who: Admin) -> dict[str, Any]:
        deleted = await deps.auditor.change(
            lambda: deps.store.connections.delete(name),
            lambda done: (
                [Event("connection.deleted", who.user, {"connection": name})] if done else []
            ),
        )
        if not deleted:
            raise HTTPException(404, f"connection {name!r} does not exist")
        return {"name": name, "deleted": True}

    @app.post("/v1/apply")
    async def apply_file(body: ApplyRequest, who: Admin) -> dict[str, Any]:
        source = deps.policy_source
        if body.policy is not None:
            if source is None:
                raise HTTPException(404, "this gateway keeps no policy versions")
            try:  # validated before anything is written
                parse_document(body.policy)
            except PolicyDocumentError as exc:
                raise HTTPException(422, str(exc)) from None

        def change() -> tuple[list[dict[str, str]], Applied | None]:
            # The connections, the policy version and their events: one store transaction,
            # all of it or nothing (see Auditor.change).
            with deps.store.transaction():
                results = apply(deps.store, deps.secret_box, body.connections)
                for r in results:
                    if r["status"] != "unchanged":
                        deps.store.audit.append(
                            f"connection.{r['status']}",
                            actor=who.user,
                            data={"connection": r["name"]},
                        )
                applied = None
                if body.policy is not None and source is not None:
                    applied = source.add_version(
                        body.policy, applied_by=who.user, comment=body.comment
                    )
            return results, applied

        try:
            results, applied = await deps.store.io.write(change)
        except ConnectionError_ as exc:
            raise HTTPException(422, str(exc)) from None
        out: dict[str, Any] = {"connections": results}
        if applied is not None and source is not None:
            await source.refresh()
            out["policy"] = applied.as_json()
        return out

    # ---- policy --------------------------------------------------------------------

    @app.post("/v1/policy/explain")
    async def policy_explain(body: ExplainRequest, who: Admin) -> dict[str, Any]:
        """The decision on `sql` for `user` on `connection`, and the rules behind it."""
        known = await deps.store.io.read(deps.store.identity.get_user, body.user)
        record = await deps.store.io.read(deps.store.connections.get, body.connection)
        groups = tuple(body.groups) if body.groups is not None else known.groups if known else ()
        view = as_view(deps.guardrails)
        await view.refresh()  # the version in force now, also one applied on another replica
        today = dt.datetime.now(dt.UTC).date()
        used = await deps.store.io.read(
            deps.store.policy.budget_usage, today, user=body.user, connection=body.connection
        )
        access = deps.access or AccessPolicy()
        machine = bool(known and known.kind != "person")
        subject = subject_for(access, body.user, groups, machine=machine)
        column_rules = ColumnRules.of(
            r for r in view.policy.config.masking if r.match.applies(subject, body.connection)
        )
        lineage = None
        if record is not None and record.type == "postgres" and not column_rules.empty:
            lineage = await explain_lineage(deps.broker, record, column_rules, body.sql)
        return explain(
            view.policy,
            access,
            user=body.user,
            groups=groups,
            connection=body.connection,
            sql=body.sql,
            is_admin=bool(known and known.is_admin),
            machine=machine,
            statements_checked=record is None or record.type in READ_ONLY_ENFORCED,
            usage={budget: Usage(rows, nbytes) for _, _, budget, rows, nbytes in used},
            lineage=lineage,
        )

    # ---- sessions and audit --------------------------------------------------------

    @app.get("/v1/sessions")
    async def list_sessions(
        who: User,
        request: Request,
        response: Response,
        user: str | None = None,
        connection: str | None = None,
        since: dt.datetime | None = None,
        text: str | None = None,
        protocol: str | None = None,
        until: dt.datetime | None = None,
        outcome: Annotated[str | None, Query(description="refused, masked, held or failed")] = None,
        limit: Annotated[int, Query(ge=1)] = 100,
        cursor: Annotated[
            str | None, Query(description="From the previous page's Link: rel=next.")
        ] = None,
    ) -> list[dict[str, Any]]:
        """Sessions newest first, at most `limit` (up to 1000) a page. When more remain, the
        `Link` header names the next page (rel="next"), as GitHub's API does."""
        query = search.SessionQuery(user, connection, protocol, since, until, text, outcome)
        rows, last = await search.find_sessions(
            deps.store,
            who,
            query,
            limit=min(limit, MAX_PAGE),
            before=paging.decode_cursor(cursor) if cursor else None,
        )
        if last is not None:
            following = request.url.include_query_params(cursor=paging.encode_cursor(*last))
            response.headers["Link"] = f'<{following}>; rel="next"'
        return [_session_json(s) for s in rows]

    @app.get("/v1/sessions/{session_id}")
    async def show_session(session_id: str, who: User) -> dict[str, Any]:
        record = await search.visible_session(deps.store, who, session_id)
        return {**_session_json(record), **await search.session_activity(deps.store, record.id)}

    @app.get("/v1/audit")
    async def list_audit(
        who: Admin,
        kind: str | None = None,
        session: str | None = None,
        text: str | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        events = await deps.store.io.scan(
            deps.store.audit.list_all,
            kind=kind,
            session_id=session,
            after_seq=after,
            limit=min(limit, 10_000),
            contains=text,
        )
        return [
            {
                "seq": e.seq,
                "ts": e.ts.isoformat(),
                "kind": e.kind,
                "actor": e.actor,
                "session": e.session_id,
                "data": e.data,
                "hash": e.hash.hex(),
            }
            for e in events
        ]

    @app.get("/v1/audit/verify")
    async def verify_audit(who: Admin) -> dict[str, Any]:
        checked: ChainCheck = await deps.store.io.scan(deps.store.audit.check)
        return checked.as_dict()

    app.include_router(reviews_api.router(identity_of))  # approvals: /v1/reviews, /v1/requests

    # ---- generic TCP ---------------------------------------------------------------

    @app.websocket("/v1/connections/{name}/tcp")
    async def tcp_session(ws: WebSocket, name: str) -> None:
        await ws.accept()
        client = f"{ws.client.host}:{ws.client.port}" if ws.client else "-"
        try:
            who = await deps.auth.authenticate_header(ws.headers.get("authorization"))
        except AuthError as exc:
            host = ws.client.host if ws.client else "-"
            if deps.limiter is not None and (over := await deps.limiter.rejected(host, "tcp")):
                await ws.close(tcp.CLOSE_CODES["rate_limited"], reason=over.message)
                return
            await deps.auditor.record(
                "auth.rejected", client=client, connection=name, reason=str(exc)
            )
            await ws.close(tcp.CLOSE_CODES["unauthenticated"], reason=str(exc))
            return
        try:
            session = await deps.broker.open(
                who, name, protocol="tcp", client_addr=client, types=("tcp",)
            )
        except SessionError as exc:
            await ws.close(tcp.CLOSE_CODES.get(exc.kind, 4502), reason=exc.message[:120])
            return
        await tcp.relay(ws, deps.broker, session)

    app.include_router(policy_router(deps))
    return app
