"""Identity in the store (migration 0002), each test on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import alembic.command
import pytest
import sqlalchemy as sa

from gateway.store import Conflict, NotFound, Store
from gateway.store.store import alembic_config
from tests.gateway import test_store as base
from tests.gateway.test_store import T0, Clock, digest

# The same fixtures as test_store.py: each test runs on SQLite and on PostgreSQL.
store_url = base.store_url
store = base.store
clock = base.clock

HOUR = dt.timedelta(hours=1)
SEALED = "enc:v1:AAAA"


def test_a_person_is_bound_to_one_idp_subject(store: Store) -> None:
    alice = store.identity.bind_person("alice", issuer="https://idp", subject="s-1", groups=("a",))
    assert (alice.kind, alice.issuer, alice.subject, alice.groups) == (
        "person",
        "https://idp",
        "s-1",
        ("a",),
    )
    again = store.identity.bind_person("alice", issuer="https://idp", subject="s-1", groups=("b",))
    assert again.groups == ("b",) and again.created_at == alice.created_at
    with pytest.raises(Conflict):  # same name, other subject
        store.identity.bind_person("alice", issuer="https://idp", subject="s-2", groups=())
    with pytest.raises(Conflict):  # same name, other provider
        store.identity.bind_person("alice", issuer="https://other", subject="s-1", groups=())
    with pytest.raises(Conflict):  # same subject, other name
        store.identity.bind_person("alicia", issuer="https://idp", subject="s-1", groups=())
    store.identity.ensure_user("admin", is_admin=True)
    with pytest.raises(Conflict):  # the bootstrap admin is bound to no IdP
        store.identity.bind_person("admin", issuer="https://idp", subject="s-9", groups=())


def test_machines_and_people_never_share_a_name(store: Store) -> None:
    ci = store.identity.ensure_machine("ci", kind="workload", groups=("deployers",))
    assert ci.kind == "workload" and ci.is_machine
    assert store.identity.ensure_machine("ci", kind="workload", groups=()).groups == ()
    with pytest.raises(Conflict):
        store.identity.ensure_machine("ci", kind="service", groups=())
    with pytest.raises(Conflict):
        store.identity.bind_person("ci", issuer="https://idp", subject="s-1", groups=())
    store.identity.bind_person("bob", issuer="https://idp", subject="s-2", groups=())
    with pytest.raises(Conflict):
        store.identity.ensure_machine("bob", kind="workload", groups=())
    with pytest.raises(Conflict):
        store.identity.set_local_credentials("bob", password_hash="scrypt$x$y", totp_secret=SEALED)
    with pytest.raises(ValueError, match="machine kind"):
        store.identity.ensure_machine("x", kind="person", groups=())


def test_local_credentials_are_kept_apart(store: Store) -> None:
    with pytest.raises(ValueError, match="sealed"):
        store.identity.set_local_credentials(
            "carl", password_hash="scrypt$x$y", totp_secret="JBSWY3DP"
        )
    user = store.identity.set_local_credentials(
        "carl", password_hash="scrypt$x$y", totp_secret=SEALED
    )
    assert user.has_password and user.kind == "person"
    assert store.identity.get_local_credentials("carl") == ("scrypt$x$y", SEALED)
    store.identity.ensure_user("dora")
    assert store.identity.get_local_credentials("dora") is None


def test_logins_their_tokens_and_revocation(store: Store, clock: Clock) -> None:
    store.identity.bind_person("alice", issuer="https://idp", subject="s-1", groups=("a",))
    login = store.identity.create_login(
        "alice", method="oidc", expires_at=T0 + 12 * HOUR, idle_timeout=600, issuer="https://idp"
    )
    assert login.valid_at(T0) and login.last_seen_at == T0
    access = store.identity.add_token(
        "alice", digest("a"), expires_at=T0 + HOUR, kind="access", login_id=login.id
    )
    refresh = store.identity.add_token("alice", digest("r"), kind="refresh", login_id=login.id)
    per_conn = store.identity.add_token(
        "alice", digest("c"), kind="connection", login_id=login.id, connection="pg", scopes=("x",)
    )
    found = store.identity.find_credential(digest("c"))
    assert found is not None
    token, user, found_login = found
    assert (token.kind, token.connection, token.scopes, user.name) == (
        "connection",
        "pg",
        ("x",),
        "alice",
    )
    assert found_login == login
    with pytest.raises(ValueError, match="unknown token kind"):
        store.identity.add_token("alice", digest("z"), kind="magic")

    # Idle timeout: the clock moves only when touched.
    clock.advance(601)
    assert not store.identity.get_login(login.id).valid_at(clock.now)  # type: ignore[union-attr]
    store.identity.touch_login(login.id)
    assert store.identity.get_login(login.id).valid_at(clock.now)  # type: ignore[union-attr]
    clock.advance(10)
    store.identity.touch_login(login.id, min_interval=30)  # too soon: not written
    assert store.identity.get_login(login.id).last_seen_at == clock.now - dt.timedelta(seconds=10)  # type: ignore[union-attr]

    assert store.identity.revoke_token_if_live(refresh.id)
    assert not store.identity.revoke_token_if_live(refresh.id)  # a second use loses
    assert store.identity.invalid_credentials({access.id, per_conn.id, "nope"}) == {"nope"}
    revoked = store.identity.revoke_login(login.id)
    assert revoked.revoked_at == clock.now
    assert store.identity.invalid_credentials({access.id, per_conn.id}) == {access.id, per_conn.id}
    assert all(t.revoked_at is not None for t in store.identity.list_tokens("alice"))
    with pytest.raises(NotFound):
        store.identity.revoke_login("missing")
    with pytest.raises(ValueError, match="sealed"):
        store.identity.create_login(
            "alice", method="oidc", expires_at=T0, idp_refresh_token="plain"
        )


def test_disabling_a_user_revokes_everything(store: Store) -> None:
    store.identity.bind_person("eve", issuer="https://idp", subject="s-5", groups=())
    login = store.identity.create_login("eve", method="oidc", expires_at=T0 + HOUR)
    token = store.identity.add_token("eve", digest("e"), kind="access", login_id=login.id)
    key = store.identity.ensure_machine("svc", kind="service", groups=())
    api_key = store.identity.add_token(key.name, digest("k"), kind="api_key", scopes=("pg-*",))
    disabled = store.identity.set_user_disabled("eve", True)
    assert disabled.disabled
    assert store.identity.invalid_credentials({token.id, api_key.id}) == {token.id}
    assert store.identity.get_login(login.id).revoked_at is not None  # type: ignore[union-attr]
    assert not store.identity.set_user_disabled("eve", False).disabled
    assert store.identity.invalid_credentials({token.id}) == {
        token.id
    }  # re-enabling revives nothing
    with pytest.raises(NotFound):
        store.identity.set_user_disabled("nobody", True)


def test_revoking_a_token_revokes_what_was_minted_from_it(store: Store) -> None:
    store.identity.ensure_machine("svc", kind="service", groups=())
    key = store.identity.add_token("svc", digest("k"), kind="api_key", scopes=("pg",))
    child = store.identity.add_token("svc", digest("c"), kind="connection", parent_id=key.id)
    other = store.identity.add_token("svc", digest("o"), kind="connection")
    store.identity.revoke_token(key.id)
    assert store.identity.invalid_credentials({key.id, child.id, other.id}) == {key.id, child.id}
    assert store.identity.get_token(child.id).parent_id == key.id  # type: ignore[union-attr]


def test_idp_refresh_tokens_are_stored_sealed_only(store: Store) -> None:
    store.identity.bind_person("fay", issuer="https://idp", subject="s-6", groups=())
    login = store.identity.create_login("fay", method="oidc", expires_at=T0 + HOUR)
    with pytest.raises(ValueError, match="sealed"):
        store.identity.set_login_idp_refresh(login.id, "a-real-refresh-token")
    store.identity.set_login_idp_refresh(login.id, SEALED)
    assert store.identity.get_login(login.id).idp_refresh_token == SEALED  # type: ignore[union-attr]
    assert [lg.id for lg in store.identity.list_logins("fay")] == [login.id]


def test_upgrading_from_0001_keeps_users_and_tokens(store_url: str) -> None:
    url = sa.make_url(store_url)
    if url.get_backend_name() == "sqlite":
        Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(store_url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            alembic.command.upgrade(alembic_config(conn), "0001")
            conn.execute(
                sa.text(
                    "INSERT INTO users (name, is_admin, groups, created_at) "
                    "VALUES ('old', false, '[\"g\"]', :ts)"
                ),
                {"ts": T0.replace(tzinfo=None) if conn.dialect.name == "sqlite" else T0},
            )
            conn.execute(
                sa.text(
                    'INSERT INTO tokens (id, "user", token_hash, created_at, label) '
                    "VALUES ('t1', 'old', :h, :ts, 'cli')"
                ),
                {
                    "h": digest("legacy"),
                    "ts": T0.replace(tzinfo=None) if conn.dialect.name == "sqlite" else T0,
                },
            )
    finally:
        engine.dispose()
    with Store.open(store_url) as upgraded:
        found = upgraded.identity.find_credential(digest("legacy"))
        assert found is not None
        token, user, login = found
        assert (token.kind, token.login_id, user.kind, user.groups, login) == (
            "bearer",
            None,
            "person",
            ("g",),
            None,
        )
