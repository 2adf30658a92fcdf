"""Workload trust: which `identity.workload` entry a machine's JWT passes, if any.

A token is routed by its (unverified) `iss` and `aud` to the entries of that issuer and
audience, then validated by each entry's own `JwtValidator` (its algorithms, leeway and
audience; entries of one issuer share its discovery and JWKS) and matched against the
entry's claim patterns (`claims.trust_matches`). The first entry it passes names the
machine user. A refusal carries two texts: the audit's, naming every entry and why it did
not take the token, and the client's, which names no entry.

`single_use` entries: `single_use_key` gives the digest of issuer and `jti` (never the token)
and how long to remember it; `IdentityService` keeps it in the store, so every gateway
replica refuses the token's second use.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from gateway.config import WorkloadTrust
from gateway.identity import claims as cl
from gateway.identity.oidc import (
    MAX_NUMERIC_DATE,
    Discovery,
    JwksCache,
    JwtValidator,
    ProviderError,
    TokenRejected,
    issuer_keys,
    unverified_header_and_claims,
)

MAX_JTI = 255


class WorkloadRefused(Exception):
    """No entry takes the token: `detail` for the audit, `shown` for the client."""

    def __init__(self, detail: str, shown: str, issuer: str) -> None:
        super().__init__(shown)
        self.detail = detail
        self.shown = shown
        self.issuer = issuer[:200]


class WorkloadTrusts:
    """The configured workload entries, each with its own validator."""

    def __init__(
        self,
        trusts: Sequence[WorkloadTrust],
        http_for: Callable[[Path | None], httpx.AsyncClient],
    ) -> None:
        self._trusts = list(trusts)
        issuers: dict[tuple[str, Path | None], tuple[Discovery, JwksCache]] = {}
        self._validators: dict[str, JwtValidator] = {}
        for trust in self._trusts:
            where = (trust.issuer.rstrip("/"), trust.ca_file)
            if where not in issuers:
                issuers[where] = issuer_keys(trust.issuer, http_for(trust.ca_file))
            discovery, keys = issuers[where]
            self._validators[trust.name] = JwtValidator(
                discovery,
                keys,
                audience=trust.audience,
                algorithms=trust.algorithms,
                leeway=trust.leeway,
            )

    async def verify(self, token: str) -> tuple[WorkloadTrust, dict[str, Any], str]:
        """The entry the token passes, its verified claims and its issuer; else
        `WorkloadRefused`."""
        try:
            _, unverified = unverified_header_and_claims(token)
        except TokenRejected as exc:
            raise WorkloadRefused(exc.reason, exc.reason, "") from None
        issuer = str(unverified.get("iss", "")).rstrip("/")
        trusts = [t for t in self._trusts if t.issuer.rstrip("/") == issuer]
        if not trusts:
            raise WorkloadRefused("issuer not trusted", "its issuer is not trusted", issuer)
        # Routing only, as for the issuer: each entry validates the audience again.
        aud = unverified.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        trusts = [t for t in trusts if t.audience in audiences]
        if not trusts:
            wrong = f"wrong audience {str(aud)[:200]!r}"
            raise WorkloadRefused(wrong, wrong, issuer)
        invalid: dict[str, str] = {}  # entry -> why the token failed its validation
        mismatches: list[str] = []  # valid token: which claim each entry refused
        for trust in trusts:
            try:
                claims = await self._validators[trust.name].validate(token)
            except TokenRejected as exc:
                invalid[trust.name] = exc.reason
                continue
            except ProviderError as exc:
                invalid[trust.name] = str(exc)
                continue
            mismatch = cl.trust_matches(claims, trust)
            if mismatch is None:
                return trust, claims, issuer
            mismatches.append(f"{trust.name}: claim {mismatch!r} does not match")
        detail = "; ".join(mismatches + [f"{name}: {why}" for name, why in invalid.items()])
        reasons = "; ".join(dict.fromkeys(invalid.values()))
        shown = "its claims match no workload trust" if mismatches else reasons
        raise WorkloadRefused(detail, shown, issuer)


def single_use_key(
    trust: WorkloadTrust, claims: dict[str, Any], issuer: str
) -> tuple[bytes, dt.datetime] | None:
    """For a `single_use` entry: the digest to remember the token by, and until when (as
    long as it validates: `exp` plus the entry's leeway). None for other entries."""
    if not trust.single_use:
        return None
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI:
        raise WorkloadRefused(
            f"{trust.name}: no usable jti",
            f"single-use tokens need a jti claim (1 to {MAX_JTI} characters)",
            issuer,
        )
    until = min(float(claims["exp"]) + trust.leeway, MAX_NUMERIC_DATE)
    digest = hashlib.sha256(f"{issuer}\n{jti}".encode()).digest()
    return digest, dt.datetime.fromtimestamp(until, dt.UTC)
