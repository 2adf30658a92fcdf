"""Who is calling: bearer tokens for people and machines.

Tokens are random (`wgt_` + 256 bits); only their SHA-256 is stored, so a hash lookup is
the comparison and no token is ever kept. OIDC sign-in (a later step) mints the same kind
of short-lived token. Agent keys are a different kind of secret in a different table: an
agent key never authorises a client, and a client token never opens an agent stream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from gateway.crypto import hash_token
from gateway.store import Store

TOKEN_PREFIX = "wgt_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    is_admin: bool = False
    groups: tuple[str, ...] = ()
    token_id: str = ""


class AuthError(Exception):
    """Credentials missing, malformed, unknown, expired or revoked: one message for all."""


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def authenticate(self, token: str | None) -> Identity:
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 256:
            raise AuthError("missing or malformed credential")
        found = await asyncio.to_thread(self._store.find_token, hash_token(token))
        if found is None:
            raise AuthError("credential not recognised")
        record, user = found
        if not record.valid_at(dt.datetime.now(dt.UTC)):
            raise AuthError("credential expired or revoked")
        return Identity(user.name, user.is_admin, user.groups, record.id)

    async def authenticate_header(self, header: str | None) -> Identity:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("expected an Authorization: Bearer credential")
        return await self.authenticate(token.strip())
