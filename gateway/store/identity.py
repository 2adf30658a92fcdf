"""The identity repository, reached as ``Store.identity``: users (people bound to one IdP,
services, workloads), tokens, sign-ins (``logins``), local credentials, and the replay guard of
workload tokens."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from gateway.store import tables as t
from gateway.store.db import (
    AlreadyExists,
    Conflict,
    Database,
    NotFound,
    check_aware,
    check_hash,
    new_id,
)
from gateway.store.models import LoginRecord, TokenRecord, UserRecord

TOKEN_KINDS = frozenset({"bearer", "access", "refresh", "connection", "api_key"})


class Identity:
    def __init__(self, db: Database) -> None:
        self._db = db

    def ensure_user(
        self, name: str, *, is_admin: bool = False, groups: tuple[str, ...] = ()
    ) -> UserRecord:
        """Create the user, or update its admin flag and groups; ``created_at`` is kept."""
        stmt = self._db.upsert(
            t.users,
            {
                "name": name,
                "is_admin": is_admin,
                "groups": list(groups),
                "created_at": self._db.clock(),
            },
            update=("is_admin", "groups"),
        ).returning(*t.users.c)
        with self._db.write() as conn:
            row = conn.execute(stmt).one()
        return _user(row)

    def get_user(self, name: str) -> UserRecord | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(t.users).where(t.users.c.name == name)).first()
        return None if row is None else _user(row)

    def list_users(self) -> list[UserRecord]:
        with self._db.read() as conn:
            rows = conn.execute(sa.select(t.users).order_by(t.users.c.name)).all()
        return [_user(row) for row in rows]

    def add_token(
        self,
        user: str,
        token_hash: bytes,
        *,
        expires_at: dt.datetime | None = None,
        label: str = "",
        kind: str = "bearer",
        login_id: str | None = None,
        connection: str | None = None,
        scopes: Sequence[str] | None = None,
        parent_id: str | None = None,
    ) -> TokenRecord:
        """Record the digest of a bearer token issued to ``user``, who must exist."""
        check_hash(token_hash, "token_hash")
        if expires_at is not None:
            check_aware(expires_at, "expires_at")
        if kind not in TOKEN_KINDS:
            raise ValueError(f"unknown token kind {kind!r}")
        stmt = (
            sa.insert(t.tokens)
            .values(
                id=new_id(),
                user=user,
                token_hash=token_hash,
                created_at=self._db.clock(),
                expires_at=expires_at,
                label=label,
                kind=kind,
                login_id=login_id,
                connection=connection,
                scopes=None if scopes is None else list(scopes),
                parent_id=parent_id,
            )
            .returning(*t.tokens.c)
        )
        try:
            with self._db.write() as conn:
                exists = conn.execute(
                    sa.select(t.users.c.name).where(t.users.c.name == user)
                ).first()
                if exists is None:
                    raise NotFound(f"no user {user!r}")
                row = conn.execute(stmt).one()
        except sa.exc.IntegrityError as exc:
            raise AlreadyExists("a token with this hash exists already") from exc
        return _token(row)

    def find_token(self, token_hash: bytes) -> tuple[TokenRecord, UserRecord] | None:
        """The token with this hash and its user, revoked and expired tokens included.

        The caller decides validity (``TokenRecord.valid_at``), so it can log why it refused.
        """
        found = self.find_credential(token_hash)
        return None if found is None else (found[0], found[1])

    def find_credential(
        self, token_hash: bytes
    ) -> tuple[TokenRecord, UserRecord, LoginRecord | None] | None:
        """The token with this hash, its user and its sign-in, whatever their validity."""
        stmt = (
            sa.select(t.tokens, t.users, t.logins)
            .join(t.users, t.users.c.name == t.tokens.c.user)
            .outerjoin(t.logins, t.logins.c.id == t.tokens.c.login_id)
            .where(t.tokens.c.token_hash == token_hash)
        )
        with self._db.read() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        m = row._mapping
        token = _token_from(lambda c: m[t.tokens.c[c]])
        user = _user_from(lambda c: m[t.users.c[c]])
        login = None
        if m[t.logins.c.id] is not None:
            login = _login_from(lambda c: m[t.logins.c[c]])
        return token, user, login

    def get_token(self, token_id: str) -> TokenRecord | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(t.tokens).where(t.tokens.c.id == token_id)).first()
        return None if row is None else _token(row)

    def list_tokens(self, user: str) -> list[TokenRecord]:
        with self._db.read() as conn:
            rows = conn.execute(
                sa.select(t.tokens)
                .where(t.tokens.c.user == user)
                .order_by(t.tokens.c.created_at, t.tokens.c.id)
            ).all()
        return [_token(row) for row in rows]

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token and the credentials minted from it; revoking twice keeps the first
        revocation time."""
        with self._db.write() as conn:
            conn.execute(
                sa.update(t.tokens)
                .where(
                    sa.or_(t.tokens.c.id == token_id, t.tokens.c.parent_id == token_id),
                    t.tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=self._db.clock())
            )
            exists = conn.execute(sa.select(t.tokens.c.id).where(t.tokens.c.id == token_id))
            if exists.first() is None:
                raise NotFound(f"no token {token_id!r}")

    def revoke_tokens_labelled(self, user: str, label: str) -> int:
        """Revoke ``user``'s live tokens carrying ``label``; returns how many were revoked."""
        with self._db.write() as conn:
            result = conn.execute(
                sa.update(t.tokens)
                .where(
                    t.tokens.c.user == user,
                    t.tokens.c.label == label,
                    t.tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=self._db.clock())
            )
        return result.rowcount

    def revoke_token_if_live(self, token_id: str) -> bool:
        """Revoke a token unless it was revoked already; True when this call revoked it.

        Refresh-token rotation relies on it: of two concurrent uses of one refresh token,
        exactly one wins, and a replay of a rotated one is recognised as such.
        """
        with self._db.write() as conn:
            result = conn.execute(
                sa.update(t.tokens)
                .where(t.tokens.c.id == token_id, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=self._db.clock())
            )
        return result.rowcount == 1

    def bind_person(
        self, name: str, *, issuer: str, subject: str, groups: tuple[str, ...]
    ) -> UserRecord:
        """The person ``name`` signed in at ``issuer`` as ``subject``; create or update them.

        A name is bound to one (issuer, subject) for good: a name that belongs to a machine,
        to a local or bootstrap user, or to another subject raises ``Conflict``, so a crafted
        username claim can never take over somebody else's account.
        """
        now = self._db.clock()
        with self._db.write() as conn:
            row = conn.execute(
                sa.select(t.users).where(t.users.c.name == name).with_for_update()
            ).first()
            if row is None:
                other = conn.execute(
                    sa.select(t.users.c.name).where(
                        t.users.c.issuer == issuer, t.users.c.subject == subject
                    )
                ).first()
                if other is not None:
                    raise Conflict(
                        f"this IdP subject is already bound to user {other.name!r}, not {name!r}"
                    )
                created = conn.execute(
                    self._db.insert_ignore(
                        t.users,
                        {
                            "name": name,
                            "is_admin": False,
                            "groups": list(groups),
                            "created_at": now,
                            "kind": "person",
                            "issuer": issuer,
                            "subject": subject,
                        },
                    ).returning(*t.users.c)
                ).first()
                if created is not None:
                    return _user(created)
                row = conn.execute(
                    sa.select(t.users).where(t.users.c.name == name).with_for_update()
                ).one()
            if row.kind != "person" or row.issuer != issuer or row.subject != subject:
                raise Conflict(f"user {name!r} belongs to another identity")
            updated = conn.execute(
                sa.update(t.users)
                .where(t.users.c.name == name)
                .values(groups=list(groups))
                .returning(*t.users.c)
            ).one()
        return _user(updated)

    def ensure_machine(
        self, name: str, *, kind: str, groups: tuple[str, ...], dpop: bool = False
    ) -> UserRecord:
        """Create or update the machine user ``name`` of ``kind`` (service or workload).

        A name that exists with another kind raises ``Conflict``: a machine never becomes a
        person, nor a service account a workload identity. ``dpop`` turns DPoP on; saving
        the account again without it leaves it on (fail closed: dropping a key binding is
        not a side effect of editing groups).
        """
        if kind not in ("service", "workload"):
            raise ValueError(f"{kind!r} is not a machine kind")
        with self._db.write() as conn:
            row = conn.execute(
                sa.select(t.users).where(t.users.c.name == name).with_for_update()
            ).first()
            if row is None:
                created = conn.execute(
                    self._db.insert_ignore(
                        t.users,
                        {
                            "name": name,
                            "is_admin": False,
                            "groups": list(groups),
                            "created_at": self._db.clock(),
                            "kind": kind,
                            "dpop": dpop,
                        },
                    ).returning(*t.users.c)
                ).first()
                if created is not None:
                    return _user(created)
                row = conn.execute(
                    sa.select(t.users).where(t.users.c.name == name).with_for_update()
                ).one()
            if row.kind != kind:
                raise Conflict(f"user {name!r} exists and is a {row.kind}, not a {kind}")
            updated = conn.execute(
                sa.update(t.users)
                .where(t.users.c.name == name)
                .values(groups=list(groups), dpop=bool(row.dpop) or dpop)
                .returning(*t.users.c)
            ).one()
        return _user(updated)

    def set_local_credentials(
        self,
        name: str,
        *,
        password_hash: str,
        totp_secret: str | None,
        groups: tuple[str, ...] = (),
    ) -> UserRecord:
        """Create or update a local person (password + TOTP), for setups without an IdP."""
        if totp_secret is not None and not totp_secret.startswith("enc:"):
            raise ValueError("the TOTP secret must be sealed before it is stored")
        with self._db.write() as conn:
            row = conn.execute(
                sa.select(t.users).where(t.users.c.name == name).with_for_update()
            ).first()
            if row is not None and (row.kind != "person" or row.issuer is not None):
                raise Conflict(f"user {name!r} is not a local person")
            if row is None:
                stmt: sa.Insert | sa.Update = sa.insert(t.users).values(
                    name=name,
                    is_admin=False,
                    groups=list(groups),
                    created_at=self._db.clock(),
                    kind="person",
                    password_hash=password_hash,
                    totp_secret=totp_secret,
                )
            else:
                stmt = (
                    sa.update(t.users)
                    .where(t.users.c.name == name)
                    .values(password_hash=password_hash, totp_secret=totp_secret)
                )
            conn.execute(stmt)
            out = conn.execute(sa.select(t.users).where(t.users.c.name == name)).one()
        return _user(out)

    def get_local_credentials(self, name: str) -> tuple[str, str | None] | None:
        """(password hash, sealed TOTP secret) of a local user; None for everyone else."""
        with self._db.read() as conn:
            row = conn.execute(
                sa.select(t.users.c.password_hash, t.users.c.totp_secret).where(
                    t.users.c.name == name, t.users.c.password_hash.is_not(None)
                )
            ).first()
        return None if row is None else (row.password_hash, row.totp_secret)

    def set_user_disabled(self, name: str, disabled: bool) -> UserRecord:
        """Disable (revoking every sign-in and token of the user) or re-enable a user."""
        now = self._db.clock()
        with self._db.write() as conn:
            row = conn.execute(
                sa.update(t.users)
                .where(t.users.c.name == name)
                .values(disabled_at=now if disabled else None)
                .returning(*t.users.c)
            ).first()
            if row is None:
                raise NotFound(f"no user {name!r}")
            if disabled:
                conn.execute(
                    sa.update(t.logins)
                    .where(t.logins.c.user == name, t.logins.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                conn.execute(
                    sa.update(t.tokens)
                    .where(t.tokens.c.user == name, t.tokens.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
        return _user(row)

    def create_login(
        self,
        user: str,
        *,
        method: str,
        expires_at: dt.datetime,
        idle_timeout: int | None = None,
        issuer: str | None = None,
        subject: str | None = None,
        idp_refresh_token: str | None = None,
    ) -> LoginRecord:
        """Record a sign-in of ``user``, who must exist."""
        check_aware(expires_at, "expires_at")
        _check_sealed(idp_refresh_token)
        now = self._db.clock()
        stmt = (
            sa.insert(t.logins)
            .values(
                id=new_id(),
                user=user,
                method=method,
                issuer=issuer,
                subject=subject,
                created_at=now,
                expires_at=expires_at,
                last_seen_at=now,
                idle_timeout=idle_timeout,
                idp_refresh_token=idp_refresh_token,
            )
            .returning(*t.logins.c)
        )
        try:
            with self._db.write() as conn:
                row = conn.execute(stmt).one()
        except sa.exc.IntegrityError as exc:
            raise NotFound(f"no user {user!r}") from exc
        return _login(row)

    def get_login(self, login_id: str) -> LoginRecord | None:
        with self._db.read() as conn:
            row = conn.execute(sa.select(t.logins).where(t.logins.c.id == login_id)).first()
        return None if row is None else _login(row)

    def list_logins(self, user: str | None = None) -> list[LoginRecord]:
        stmt = sa.select(t.logins)
        if user is not None:
            stmt = stmt.where(t.logins.c.user == user)
        with self._db.read() as conn:
            rows = conn.execute(stmt.order_by(t.logins.c.created_at, t.logins.c.id)).all()
        return [_login(row) for row in rows]

    def touch_login(self, login_id: str, *, min_interval: float = 0.0) -> None:
        """Move the sign-in's idle clock, unless it moved less than ``min_interval`` s ago."""
        now = self._db.clock()
        with self._db.write() as conn:
            conn.execute(
                sa.update(t.logins)
                .where(
                    t.logins.c.id == login_id,
                    t.logins.c.last_seen_at <= now - dt.timedelta(seconds=min_interval),
                )
                .values(last_seen_at=now)
            )

    def set_login_idp_refresh(self, login_id: str, idp_refresh_token: str | None) -> None:
        _check_sealed(idp_refresh_token)
        with self._db.write() as conn:
            conn.execute(
                sa.update(t.logins)
                .where(t.logins.c.id == login_id)
                .values(idp_refresh_token=idp_refresh_token)
            )

    def revoke_login(self, login_id: str) -> LoginRecord:
        """Revoke a sign-in and every token issued under it; the first revocation time stays."""
        now = self._db.clock()
        with self._db.write() as conn:
            conn.execute(
                sa.update(t.logins)
                .where(t.logins.c.id == login_id, t.logins.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            conn.execute(
                sa.update(t.tokens)
                .where(t.tokens.c.login_id == login_id, t.tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = conn.execute(sa.select(t.logins).where(t.logins.c.id == login_id)).first()
        if row is None:
            raise NotFound(f"no sign-in {login_id!r}")
        return _login(row)

    def invalid_credentials(self, token_ids: Iterable[str]) -> set[str]:
        """Those of ``token_ids`` that were revoked, directly, through their sign-in or by
        disabling their user (or are gone). Expiry is not counted: a session outlives the
        short-lived credential that opened it, not its revocation."""
        wanted = set(token_ids)
        if not wanted:
            return set()
        stmt = (
            sa.select(
                t.tokens.c.id,
                t.tokens.c.revoked_at,
                t.logins.c.revoked_at.label("login_revoked_at"),
                t.users.c.disabled_at,
            )
            .join(t.users, t.users.c.name == t.tokens.c.user)
            .outerjoin(t.logins, t.logins.c.id == t.tokens.c.login_id)
            .where(t.tokens.c.id.in_(sorted(wanted)))
        )
        with self._db.read() as conn:
            rows = conn.execute(stmt).all()
        alive = {
            r.id
            for r in rows
            if r.revoked_at is None and r.login_revoked_at is None and r.disabled_at is None
        }
        return wanted - alive

    def bind_token_key(self, token_id: str, jkt: str) -> str | None:
        """Bind the token to the DPoP key ``jkt`` unless it is bound already; the key it is
        bound to afterwards (None: no such token). One UPDATE guarded by ``jkt IS NULL``:
        of two members seeing a first use at once, one binds, the other reads its key."""
        with self._db.write() as conn:
            conn.execute(
                sa.update(t.tokens)
                .where(t.tokens.c.id == token_id, t.tokens.c.jkt.is_(None))
                .values(jkt=jkt)
            )
            bound: str | None = conn.execute(
                sa.select(t.tokens.c.jkt).where(t.tokens.c.id == token_id)
            ).scalar()
        return bound

    def use_token_once(self, digest: bytes, *, trust: str, expires_at: dt.datetime) -> bool:
        """Remember a single-use token until ``expires_at``; False if it was used already.

        ``INSERT ... ON CONFLICT DO NOTHING`` on the digest: of two replicas exchanging the
        same token at once, exactly one inserts. Expired entries are deleted first, so the
        table holds only tokens that could still be presented.
        """
        check_hash(digest, "digest")
        check_aware(expires_at, "expires_at")
        now = self._db.clock()
        table = t.token_replay
        with self._db.write() as conn:
            conn.execute(sa.delete(table).where(table.c.expires_at < now))
            values = {"digest": digest, "trust": trust, "used_at": now, "expires_at": expires_at}
            # RETURNING, not rowcount: psycopg reports -1 for an INSERT that did nothing.
            stmt = self._db.insert_ignore(table, values).returning(table.c.digest)
            inserted = conn.execute(stmt).first()
        return inserted is not None

    def forget_token_use(self, digest: bytes) -> None:
        """Undo ``use_token_once`` when the exchange failed after it (the token was not
        used up: the job may retry it)."""
        check_hash(digest, "digest")
        with self._db.write() as conn:
            conn.execute(sa.delete(t.token_replay).where(t.token_replay.c.digest == digest))


def _user(row: sa.Row[Any]) -> UserRecord:
    return _user_from(lambda c: getattr(row, c))


def _user_from(get: Callable[[str], Any]) -> UserRecord:
    return UserRecord(
        name=get("name"),
        is_admin=get("is_admin"),
        created_at=get("created_at"),
        groups=tuple(get("groups")),
        kind=get("kind"),
        disabled_at=get("disabled_at"),
        issuer=get("issuer"),
        subject=get("subject"),
        has_password=get("password_hash") is not None,
        dpop=bool(get("dpop")),
    )


def _token(row: sa.Row[Any]) -> TokenRecord:
    return _token_from(lambda c: getattr(row, c))


def _token_from(get: Callable[[str], Any]) -> TokenRecord:
    scopes = get("scopes")
    return TokenRecord(
        id=get("id"),
        user=get("user"),
        token_hash=get("token_hash"),
        created_at=get("created_at"),
        expires_at=get("expires_at"),
        revoked_at=get("revoked_at"),
        label=get("label"),
        kind=get("kind"),
        login_id=get("login_id"),
        connection=get("connection"),
        scopes=None if scopes is None else tuple(scopes),
        parent_id=get("parent_id"),
        jkt=get("jkt"),
    )


def _login(row: sa.Row[Any]) -> LoginRecord:
    return _login_from(lambda c: getattr(row, c))


def _login_from(get: Callable[[str], Any]) -> LoginRecord:
    return LoginRecord(
        id=get("id"),
        user=get("user"),
        method=get("method"),
        created_at=get("created_at"),
        expires_at=get("expires_at"),
        last_seen_at=get("last_seen_at"),
        idle_timeout=get("idle_timeout"),
        revoked_at=get("revoked_at"),
        issuer=get("issuer"),
        subject=get("subject"),
        idp_refresh_token=get("idp_refresh_token"),
    )


def _check_sealed(value: str | None) -> None:
    if value is not None and not value.startswith("enc:"):
        raise ValueError("an IdP refresh token must be sealed before it is stored")
