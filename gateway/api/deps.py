"""What every API router stands on: the gateway's parts (`ApiDeps`) and the caller's identity
(`User`, `Admin`), in a leaf module.

Routers (api/app.py, api/policy.py, api/health.py, ..., the console) import from here, never
from api/app.py, which imports them: the layers contract in pyproject.toml keeps it so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from gateway.agents.registry import AgentRegistry
from gateway.api.ratelimit import AuthLimiter, as_http
from gateway.audit import Auditor
from gateway.auth import Authenticator, AuthError, DpopRefused, DpopRequest, Identity
from gateway.crypto import SecretBox
from gateway.identity.credentials import IdentityService
from gateway.policy.grants import AccessPolicy
from gateway.policy.rules import Policy
from gateway.policystore import PolicySource, PolicyView
from gateway.reviews import ReviewService
from gateway.sessions import SessionBroker
from gateway.store import Store
from gateway.telemetry import Telemetry


def _never() -> bool:
    return False


@dataclass
class ApiDeps:
    store: Store
    auth: Authenticator
    broker: SessionBroker
    registry: AgentRegistry
    auditor: Auditor
    secret_box: SecretBox | None
    ca_pem: bytes
    ca_fingerprint: str
    agent_host: str
    agent_port: int
    insecure_agents: bool
    identity: IdentityService | None = None
    guardrails: Policy | PolicyView | None = None
    access: AccessPolicy | None = None
    policy_source: PolicySource | None = None  # policy versions in the store (api/policy.py)
    reviews: ReviewService | None = None  # approvals (api/reviews.py, the console)
    limiter: AuthLimiter | None = None  # sign-in rate limits (api/ratelimit.py)
    telemetry: Telemetry | None = None  # metrics (gateway/telemetry.py); None: a private one
    draining: Callable[[], bool] = _never  # True once the member stops taking sessions
    agent_warmup: float = 10.0  # fleet.agent_warmup: /readyz waits this long for agents


def client_of(request: Request) -> str:
    """The caller's address as the audit log writes it."""
    return f"{request.client.host}:{request.client.port}" if request.client else "-"


async def identity_of(request: Request) -> Identity:
    """The caller named by the request's credential; 401 (audited, rate limited) without a
    valid one."""
    deps: ApiDeps = request.app.state.deps
    try:
        # Every request may carry a DPoP proof (RFC 9449); a DPoP-bound credential must.
        dpop = DpopRequest(request.headers.get("dpop"), request.method, str(request.url))
        who = await deps.auth.authenticate_header(request.headers.get("authorization"), dpop=dpop)
        if who.credential == "connection":
            raise AuthError("a per-connection credential only opens sessions on its connection")
        return who
    except AuthError as exc:
        # Counted per address like failed sign-ins, so bad credentials cannot grow the log
        # without bound either.
        host = request.client.host if request.client else "-"
        if deps.limiter is not None and (over := await deps.limiter.rejected(host, "api")):
            raise as_http(over) from None
        await deps.auditor.record(
            "auth.rejected", client=client_of(request), path=request.url.path, reason=str(exc)
        )
        challenge = "Bearer"
        if isinstance(exc, DpopRefused):
            # RFC 9449 §7.1: the error in words, without the credential.
            reason = str(exc).replace('"', "'")
            challenge = (
                f'DPoP algs="ES256 Ed25519 EdDSA", error="invalid_dpop_proof", '
                f'error_description="{reason}"'
            )
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": challenge}) from None


def require_admin(who: Identity) -> Identity:
    """`who`, when an administrator; else 403 in words (the API's and the console's rule)."""
    if not who.is_admin:
        raise HTTPException(403, f"user {who.user!r} is not an administrator")
    return who


async def admin_of(who: Annotated[Identity, Depends(identity_of)]) -> Identity:
    return require_admin(who)


User = Annotated[Identity, Depends(identity_of)]
Admin = Annotated[Identity, Depends(admin_of)]
