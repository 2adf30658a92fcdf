"""Identity end to end: a real OpenID provider, the real `wardgate login`, psql as that user.

One PostgreSQL database, one OIDC provider (oidc-provider-mock in its own process, with a
device endpoint), one gateway configured as its relying party (and trusting it for workload
tokens), and one agent serve the module. People sign in through `wardgate login`, whose
"system browser" is a script that submits the provider's form as a chosen subject and
follows the redirects to the CLI's loopback callback. Each test uses its own people.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from psycopg import sql

from gateway.crypto import SecretBox
from tests.fixtures.oidc import OidcProvider, browser_env, start_provider
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import WARDGATE, GatewayProc, Proc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "id-app-secret-Xy7"
CLIENT_ID = "wardgate"
CI_AUDIENCE = "wardgate-ci"


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    agent: Proc
    pg: PostgresServer
    idp: OidcProvider
    tmp: Path

    def cli(
        self, home: Path, *args: str, sub: str | None = None, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run `wardgate ARGS` as a person whose config lives in `home` (no admin token)."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
        base.update(
            PYTHONUNBUFFERED="1",
            WARDGATE_URL=self.gw.url,
            WARDGATE_CA=str(self.gw.ca_path),
            WARDGATE_CONFIG_DIR=str(home),
            PGPASSFILE=str(home / "pgpass"),
            **env,
        )
        if sub is not None:
            base.update(browser_env(self.tmp, sub))
        return subprocess.run(
            [*WARDGATE, *args], env=base, capture_output=True, text=True, timeout=timeout
        )

    def login(self, home: Path, sub: str, *extra: str) -> dict[str, Any]:
        out = self.cli(home, "login", *extra, sub=sub)
        assert out.returncode == 0, out.stderr
        return dict(json.loads((home / "credentials.json").read_text()))

    def conninfo(self, home: Path, connection: str = "pg-app") -> str:
        out = self.cli(home, "creds", connection)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def audit(self, kind: str | None) -> list[dict[str, Any]]:
        return self.gw.audit(kind)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    with postgres_server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists idapp"))
        admin.execute(sql.SQL("drop role if exists id_app"))
        admin.execute(
            sql.SQL("create role id_app login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database idapp owner id_app"))
    db = dataclasses.replace(postgres_server, dbname="idapp")
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("set role id_app")
        conn.execute("create table notes (id serial primary key, body text)")
        conn.execute("insert into notes (body) values ('hello')")
    tmp = tmp_path_factory.mktemp("identity")
    idp = start_provider(tmp, device=True)
    wg = Wardgate(tmp)
    try:
        gw = wg.gateway(
            secret_key=SecretBox.generate_key(),
            identity={
                "oidc": {
                    "issuer": idp.issuer,
                    "client_id": CLIENT_ID,
                    "client_secret": "client-secret-1",
                    "scopes": ["openid", "profile", "email"],
                    "jwks_min_refresh": 0,
                },
                "workload": [
                    {
                        "name": "ci-deploy",
                        "issuer": idp.issuer,
                        "audience": CI_AUDIENCE,
                        "claims": {"repository": "acme/app", "ref": "refs/heads/main"},
                        "groups": ["deployers"],
                        "ttl": 600,
                    },
                    {
                        # A trust entry whose name is a person's: it must never sign in as her.
                        "name": "erin",
                        "issuer": idp.issuer,
                        "audience": CI_AUDIENCE,
                        "claims": {"repository": "acme/impostor"},
                    },
                ],
                "revocation_check_interval": 0.5,
                # The attack tests fail many sign-ins from one address within a minute;
                # tests/e2e/test_rate_limits.py tests the limits themselves.
                "rate_limit": {"per_address": {"attempts": 1000, "window": 60}},
            },
            roles=[
                {
                    "name": "analysts",
                    "groups": ["analysts"],
                    "grants": [{"connection": "pg-app", "access": "read-only"}],
                },
                {
                    "name": "dba",
                    "groups": ["dba", "deployers"],
                    "grants": [{"connection": "pg-*", "access": "read-write"}],
                },
            ],
        )
        agent = wg.agent(gw, gw.create_agent("default"), wait="default")
        for name in ("pg-app", "secret-db"):
            gw.create_connection(
                name=name,
                type="postgres",
                host="127.0.0.1",
                port=postgres_server.port,
                database="idapp",
                username="id_app",
                password=APP_PASSWORD,
            )
        yield Stack(wg, gw, agent, postgres_server, idp, tmp)
    finally:
        wg.close()
        idp.proc.stop()


# ---- people ----------------------------------------------------------------------------


def test_browser_login_then_psql_and_psycopg_as_that_person(stack: Stack, tmp_path: Path) -> None:
    stack.idp.set_user(
        "sub-alice", preferred_username="alice", email="alice@example.com", groups=["analysts"]
    )
    saved = stack.login(tmp_path, "sub-alice")
    path = tmp_path / "credentials.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert saved["user"] == "alice"
    assert saved["token"].startswith("wgt_") and saved["refresh_token"].startswith("wgr_")

    who = stack.cli(tmp_path, "whoami", "--json")
    assert who.returncode == 0, who.stderr
    data = json.loads(who.stdout)
    assert (data["user"], data["kind"], data["admin"]) == ("alice", "person", False)
    assert data["groups"] == ["analysts"]
    assert {"connection": "pg-app", "access": "read-only", "on_request": False} in data["grants"]

    out = stack.cli(tmp_path, "psql", "pg-app", "-XAtc", "select current_user, count(*) from notes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "id_app|1"

    # psycopg with a per-connection credential from `wardgate creds`. A read-only grant is
    # enforced per statement by the gateway (PostgreSQL's parser, 42501 with the reason),
    # and the server session is read-only too as defence in depth.
    conninfo = stack.conninfo(tmp_path)
    password = dict(p.split("=", 1) for p in conninfo.split())["password"]
    assert password.startswith("wgt_") and password != saved["token"]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="read-only"):
            conn.execute("insert into notes (body) values (%s)", ("nope",))
        # The session goes on, in order, after the refusal (extended protocol).
        assert conn.execute("select count(*) from notes").fetchone() == (1,)
    # In a pipeline the refused statement follows others the server already holds: no answer
    # of the gateway's could keep the order, so the session ends (fail closed) with 42501.
    with (
        psycopg.connect(conninfo, autocommit=True) as conn,
        pytest.raises(psycopg.Error),
        conn.pipeline(),
    ):
        conn.execute("select 1")
        conn.execute("delete from notes")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.execute("select count(*) from notes").fetchone() == (1,)
    simple = stack.cli(
        tmp_path,
        "psql",
        "pg-app",
        "-XAt",
        "-c",
        "select 1",
        "-c",
        "drop table notes",
        "-c",
        "select 2",
    )
    assert "42501" in simple.stderr or "read-only" in simple.stderr, simple.stderr
    assert simple.stdout.split() == ["1", "2"]
    refused = [e for e in stack.audit("pg.refused") if e["actor"] == "alice"]
    assert {e["data"]["text"] for e in refused} >= {"insert into notes (body) values ($1)"}

    opened = [e for e in stack.audit("session.open") if e["actor"] == "alice"]
    assert opened and all(e["data"]["access"] == "read-only" for e in opened)
    logins = [e for e in stack.audit("auth.login") if e["actor"] == "alice"]
    assert logins[0]["data"]["method"] == "oidc"
    everything = json.dumps(stack.audit(None))
    for secret in (saved["token"], saved["refresh_token"], password):
        assert secret not in everything
    assert saved["token"] not in stack.gw.log(tail=100_000)


def test_a_connection_no_role_grants_is_refused_with_42501(stack: Stack, tmp_path: Path) -> None:
    stack.idp.set_user("sub-alma", preferred_username="alma", groups=["analysts"])
    stack.login(tmp_path, "sub-alma")
    denied = stack.cli(tmp_path, "creds", "secret-db")
    assert denied.returncode != 0
    assert "no access to connection 'secret-db'" in denied.stderr
    # Straight to the front door with a credential for another connection: 42501 too.
    conninfo = stack.conninfo(tmp_path).replace("dbname=pg-app", "dbname=secret-db")
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(conninfo)
    assert "no access to connection 'secret-db'" in str(caught.value)
    refused = [e for e in stack.audit("session.refused") if e["actor"] == "alma"]
    assert refused


def test_group_change_at_the_provider_takes_effect_at_the_next_refresh(
    stack: Stack, tmp_path: Path
) -> None:
    stack.idp.set_user("sub-bob", preferred_username="bob", groups=["analysts"])
    stack.login(tmp_path, "sub-bob")
    stack.idp.set_user("sub-bob", preferred_username="bob", groups=["dba"])
    before = json.loads(stack.cli(tmp_path, "whoami", "--json").stdout)
    assert before["groups"] == ["analysts"]  # nothing changes before the refresh

    refreshed = stack.cli(tmp_path, "credentials", "refresh")
    assert refreshed.returncode == 0, refreshed.stderr
    after = json.loads(stack.cli(tmp_path, "whoami", "--json").stdout)
    assert after["groups"] == ["dba"]
    with psycopg.connect(stack.conninfo(tmp_path), autocommit=True) as conn:
        conn.execute("insert into notes (body) values ('by bob')")  # read-write now

    stack.idp.set_user("sub-bob", preferred_username="bob", groups=[])
    assert stack.cli(tmp_path, "credentials", "refresh").returncode == 0
    denied = stack.cli(tmp_path, "psql", "pg-app", "-c", "select 1")
    assert denied.returncode != 0
    assert "no access" in denied.stderr
    changed = [e for e in stack.audit("user.groups_changed") if e["actor"] == "bob"]
    assert [e["data"]["after"] for e in changed] == [["dba"], []]


def test_revoking_the_sign_in_ends_live_sessions_and_refuses_the_credential(
    stack: Stack, tmp_path: Path
) -> None:
    stack.idp.set_user("sub-carol", preferred_username="carol", groups=["analysts"])
    saved = stack.login(tmp_path, "sub-carol")
    conninfo = stack.conninfo(tmp_path)
    conn = psycopg.connect(conninfo, autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        revoked = stack.cli(tmp_path, "credentials", "revoke", saved["login_id"])
        assert revoked.returncode == 0, revoked.stderr
        assert "1 session(s) ended" in revoked.stderr

        errors: list[str] = []

        def session_ended() -> bool:
            try:
                conn.execute("select 1")
            except psycopg.OperationalError as exc:
                errors.append(str(exc))
                return True
            return False

        wait_for(session_ended, "the live session to end", timeout=10)
    finally:
        conn.close()
    # The client is told why unless its next query raced the reset (see the PG relay).
    assert "credential revoked" in errors[0] or "closed" in errors[0], errors
    # The revoked credentials are refused, the connection credential included.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(conninfo)
    with stack.gw.api(saved["token"]) as api:
        assert api.get("/v1/whoami").status_code == 401
    with stack.gw.api() as api:
        r = api.post("/v1/auth/refresh", json={"refresh_token": saved["refresh_token"]})
        assert r.status_code == 401
    ended = [e for e in stack.audit("session.terminated") if e["actor"] == "carol"]
    assert [e["data"]["reason"] for e in ended] == ["credential revoked"]


def test_disabling_a_user_ends_their_sessions(stack: Stack, tmp_path: Path) -> None:
    stack.idp.set_user("sub-dave", preferred_username="dave", groups=["analysts"])
    stack.login(tmp_path, "sub-dave")
    conn = psycopg.connect(stack.conninfo(tmp_path), autocommit=True)
    try:
        conn.execute("select 1")
        with stack.gw.api() as api:
            assert api.post("/v1/users/dave/disable").status_code == 200

        def ended() -> bool:
            try:
                conn.execute("select 1")
            except psycopg.OperationalError:
                return True
            return False

        wait_for(ended, "dave's session to end", timeout=10)
    finally:
        conn.close()
    again = stack.cli(tmp_path, "login", sub="sub-dave")
    assert again.returncode != 0
    assert "disabled" in again.stderr


def test_a_replayed_refresh_token_revokes_the_whole_sign_in(stack: Stack, tmp_path: Path) -> None:
    stack.idp.set_user("sub-frank", preferred_username="frank", groups=["analysts"])
    first = stack.login(tmp_path, "sub-frank")
    assert stack.cli(tmp_path, "credentials", "refresh").returncode == 0
    second = json.loads((tmp_path / "credentials.json").read_text())
    assert second["token"] != first["token"]
    with stack.gw.api() as api:
        replay = api.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401
    assert "already used" in replay.json()["detail"]
    with stack.gw.api(second["token"]) as api:
        assert api.get("/v1/whoami").status_code == 401  # the whole sign-in is gone
    assert any(e["actor"] == "frank" for e in stack.audit("auth.replay"))


def test_a_refresh_during_an_identity_provider_outage_keeps_the_sign_in(
    stack: Stack, tmp_path: Path
) -> None:
    """The IdP is asked before the refresh token is spent: a refresh it cannot answer
    changes nothing, and the client's retry once it is back is a refresh, not a replay."""
    stack.idp.set_user("sub-hana", preferred_username="hana", groups=["analysts"])
    first = stack.login(tmp_path, "sub-hana")
    stack.idp.set_outage(True)
    try:
        failed = stack.cli(tmp_path, "credentials", "refresh")
        again = stack.cli(tmp_path, "credentials", "refresh")  # a second try, still down
    finally:
        stack.idp.set_outage(False)
    for out in (failed, again):
        assert out.returncode == 1
        assert out.stderr == (
            "Error: gateway answered 502: refresh not done: the identity provider is "
            "unavailable (token endpoint answered 503: temporarily_unavailable); "
            "your sign-in is kept, try again later\n"
        )
    assert json.loads((tmp_path / "credentials.json").read_text()) == first  # nothing spent
    with stack.gw.api(first["token"]) as api:
        assert api.get("/v1/whoami").status_code == 200  # the sign-in is intact

    retried = stack.cli(tmp_path, "credentials", "refresh")
    assert retried.returncode == 0, retried.stderr
    second = json.loads((tmp_path / "credentials.json").read_text())
    assert second["refresh_token"] != first["refresh_token"]
    with stack.gw.api(second["token"]) as api:
        assert api.get("/v1/whoami").json()["user"] == "hana"
    assert not [e for e in stack.audit("auth.replay") if e["actor"] == "hana"]
    failures = [e for e in stack.audit("auth.failed") if e["actor"] == "hana"]
    assert [e["data"]["method"] for e in failures] == ["refresh", "refresh"]
    # The spent token is spent: presenting it now is a replay, as before.
    with stack.gw.api() as api:
        replay = api.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401 and "already used" in replay.json()["detail"]


def test_a_refresh_the_gateway_cannot_record_spends_nothing(stack: Stack, tmp_path: Path) -> None:
    """The old refresh token stays valid until the new ones are issued and recorded: a
    refresh whose `auth.refresh` event cannot be written (the audit log down) changes
    nothing, and the retry once the log is back is a refresh, not a replay."""
    stack.idp.set_user("sub-ines", preferred_username="ines", groups=["analysts"])
    first = stack.login(tmp_path, "sub-ines")
    db = stack.gw.data_dir / "wardgate.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("ALTER TABLE audit_events RENAME TO audit_events_away")
    try:
        failed = stack.cli(tmp_path, "credentials", "refresh")
    finally:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("ALTER TABLE audit_events_away RENAME TO audit_events")
    assert failed.returncode == 1
    assert "503" in failed.stderr and "no such table: audit_events" in failed.stderr
    assert json.loads((tmp_path / "credentials.json").read_text()) == first
    retried = stack.cli(tmp_path, "credentials", "refresh")
    assert retried.returncode == 0, retried.stderr
    second = json.loads((tmp_path / "credentials.json").read_text())
    with stack.gw.api(second["token"]) as api:
        assert api.get("/v1/whoami").json()["user"] == "ines"
    assert not [e for e in stack.audit("auth.replay") if e["actor"] == "ines"]
    assert len([e for e in stack.audit("auth.refresh") if e["actor"] == "ines"]) == 1


def test_logout_ends_the_sign_in(stack: Stack, tmp_path: Path) -> None:
    stack.idp.set_user("sub-gina", preferred_username="gina", groups=["analysts"])
    saved = stack.login(tmp_path, "sub-gina")
    out = stack.cli(tmp_path, "logout")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "credentials.json").exists()
    with stack.gw.api(saved["token"]) as api:
        assert api.get("/v1/whoami").status_code == 401


def test_device_flow_login(stack: Stack, tmp_path: Path) -> None:
    stack.idp.set_user("sub-hana", preferred_username="hana", groups=["analysts"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    env.update(
        WARDGATE_URL=stack.gw.url,
        WARDGATE_CA=str(stack.gw.ca_path),
        WARDGATE_CONFIG_DIR=str(tmp_path),
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "device.log"
    proc = Proc([*WARDGATE, "login", "--device"], log, env).start()
    try:
        line = wait_for(
            lambda: next(
                (ln for ln in proc.log().splitlines() if "enter the code:" in ln),
                None if proc.alive() else pytest.fail(proc.log()),
            ),
            "the device code to be shown",
        )
        stack.idp.approve_device(line.rsplit(":", 1)[1].strip(), "sub-hana")
        assert proc.proc is not None
        assert proc.proc.wait(30) == 0, proc.log()
    finally:
        proc.stop()
    who = json.loads(stack.cli(tmp_path, "whoami", "--json").stdout)
    assert who["user"] == "hana"
    assert any(
        e["actor"] == "hana" and e["data"]["method"] == "device" for e in stack.audit("auth.login")
    )


def test_a_username_claim_cannot_take_over_another_account(stack: Stack, tmp_path: Path) -> None:
    # The bootstrap admin, a machine name, and a person bound to another subject.
    stack.idp.set_user("sub-ivan", preferred_username="ivan", groups=[])
    stack.login(tmp_path / "ivan", "sub-ivan")
    for sub, name in (("sub-evil1", "admin"), ("sub-evil2", "ivan")):
        stack.idp.set_user(sub, preferred_username=name, groups=["dba"])
        out = stack.cli(tmp_path / sub, "login", sub=sub)
        assert out.returncode != 0, f"{name} was taken over"
        assert "belongs to another identity" in out.stderr
    failures = [e["data"]["reason"] for e in stack.audit("auth.failed")]
    assert any("belongs to another identity" in r for r in failures)


# ---- machines --------------------------------------------------------------------------


def ci_claims(idp: OidcProvider, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": idp.issuer,
        "sub": "repo:acme/app:ref:refs/heads/main",
        "aud": CI_AUDIENCE,
        "repository": "acme/app",
        "ref": "refs/heads/main",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def test_workload_token_exchange_then_psql_as_the_machine(stack: Stack, tmp_path: Path) -> None:
    token_file = tmp_path / "ci.jwt"
    token_file.write_text(stack.idp.sign(ci_claims(stack.idp)))
    out = stack.cli(tmp_path, "login", "--token-file", str(token_file))
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "credentials.json").read_text())
    assert saved["user"] == "ci-deploy" and "refresh_token" not in saved
    who = json.loads(stack.cli(tmp_path, "whoami", "--json").stdout)
    assert (who["user"], who["kind"], who["groups"]) == ("ci-deploy", "workload", ["deployers"])
    psql = stack.cli(tmp_path, "psql", "pg-app", "-XAtc", "select count(*) >= 1 from notes")
    assert psql.returncode == 0, psql.stderr
    assert psql.stdout.strip() == "t"


def test_a_workload_trust_never_becomes_a_person(stack: Stack, tmp_path: Path) -> None:
    stack.idp.set_user("sub-erin", preferred_username="erin", groups=["analysts"])
    stack.login(tmp_path / "erin", "sub-erin")
    token = stack.idp.sign(ci_claims(stack.idp, repository="acme/impostor"))
    with stack.gw.api() as api:
        r = api.post("/v1/auth/workload", json={"token": token})
    assert r.status_code == 403
    assert "is a person" in r.json()["detail"]


def test_service_account_api_key_is_scoped(stack: Stack, tmp_path: Path) -> None:
    admin = stack.gw.token
    made = stack.cli(
        tmp_path,
        "service-account",
        "create",
        "reporter",
        "--group",
        "analysts",
        WARDGATE_TOKEN=admin,
    )
    assert made.returncode == 0, made.stderr
    key_out = stack.cli(
        tmp_path,
        "service-account",
        "key",
        "reporter",
        "--scope",
        "pg-app",
        "--ttl",
        "600",
        WARDGATE_TOKEN=admin,
    )
    assert key_out.returncode == 0, key_out.stderr
    key = key_out.stdout.strip()
    assert key.startswith("wgk_")
    ok = stack.cli(tmp_path, "psql", "pg-app", "-XAtc", "select 1", WARDGATE_TOKEN=key)
    assert ok.returncode == 0, ok.stderr
    out_of_scope = stack.cli(tmp_path, "creds", "secret-db", WARDGATE_TOKEN=key)
    assert out_of_scope.returncode != 0
    with stack.gw.api(key) as api:
        assert api.get("/v1/agents").status_code == 403  # no admin scope, no admin API
    # A service account name is taken: no person may sign in with it.
    stack.idp.set_user("sub-rep", preferred_username="reporter", groups=["dba"])
    taken = stack.cli(tmp_path / "p", "login", sub="sub-rep")
    assert taken.returncode != 0


# ---- the token-attack suite ------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def forge_none(idp: OidcProvider) -> str:
    return _compact({"alg": "none", "typ": "JWT"}, ci_claims(idp)) + "."


def forge_hs256_with_public_key(idp: OidcProvider) -> str:
    public = RSAKey.import_key(idp.jwks()["keys"][0])
    pem = public.as_pem(private=False)
    signing_input = _compact({"alg": "HS256", "typ": "JWT", "kid": public.kid}, ci_claims(idp))
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)


def forge_unknown_kid(idp: OidcProvider) -> str:
    rogue = RSAKey.generate_key(2048, parameters={"kid": "rogue-kid"})
    return jwt.encode({"alg": "RS256", "kid": "rogue-kid"}, ci_claims(idp), rogue)


def forge_tampered(idp: OidcProvider) -> str:
    header, _, signature = idp.sign(ci_claims(idp, ref="refs/heads/feature")).split(".")
    payload = _b64(json.dumps(ci_claims(idp)).encode())
    return f"{header}.{payload}.{signature}"


ATTACKS: dict[str, tuple[Any, str]] = {
    "wrong issuer": (lambda idp: idp.sign(ci_claims(idp, iss="https://evil.example")), "issuer"),
    "wrong audience": (lambda idp: idp.sign(ci_claims(idp, aud="someone-else")), "audience"),
    "expired": (
        lambda idp: idp.sign(
            ci_claims(idp, iat=int(time.time()) - 900, exp=int(time.time()) - 600)
        ),
        "expired",
    ),
    "not yet valid": (lambda idp: idp.sign(ci_claims(idp, nbf=int(time.time()) + 600)), "nbf"),
    "no expiry": (lambda idp: idp.sign(ci_claims(idp, exp=None)), "exp"),
    "alg none": (forge_none, "alg none"),
    "HS256 signed with the provider's public key": (forge_hs256_with_public_key, "HS256"),
    "unknown kid": (forge_unknown_kid, "unknown signing key"),
    "tampered claims": (forge_tampered, "bad signature"),
    "CI token whose branch does not match": (
        lambda idp: idp.sign(ci_claims(idp, ref="refs/heads/feature")),
        "ci-deploy: claim 'ref' does not match",
    ),
    "CI token of another repository": (
        lambda idp: idp.sign(ci_claims(idp, repository="mallory/app")),
        "ci-deploy: claim 'repository' does not match",
    ),
    "not a JWT": (lambda idp: "wgt_not-a-jwt", "malformed"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_token_attacks_are_refused(stack: Stack, attack: str) -> None:
    forge, reason = ATTACKS[attack]
    token = forge(stack.idp)
    with stack.gw.api() as api:
        r = api.post("/v1/auth/workload", json={"token": token})
    assert r.status_code == 401, r.text
    failures = [e for e in stack.audit("auth.failed") if e["data"]["method"] == "workload"]
    assert reason in failures[-1]["data"]["reason"]
    assert token not in json.dumps(failures)


def test_a_token_of_another_provider_is_refused(
    stack: Stack, oidc_providers: Callable[..., OidcProvider]
) -> None:
    other = oidc_providers()
    with stack.gw.api() as api:
        own_issuer = api.post("/v1/auth/workload", json={"token": other.sign(ci_claims(other))})
        # The other provider's key, claiming to be ours: its kid is unknown to our issuer.
        posing = api.post("/v1/auth/workload", json={"token": other.sign(ci_claims(stack.idp))})
    assert own_issuer.status_code == 401 and "not trusted" in own_issuer.json()["detail"]
    assert posing.status_code == 401 and "unknown signing key" in posing.json()["detail"]


def test_a_revoked_gateway_credential_replayed_is_refused(stack: Stack, tmp_path: Path) -> None:
    token_file = tmp_path / "ci.jwt"
    token_file.write_text(stack.idp.sign(ci_claims(stack.idp)))
    assert stack.cli(tmp_path, "login", "--token-file", str(token_file)).returncode == 0
    saved = json.loads((tmp_path / "credentials.json").read_text())
    with stack.gw.api() as api:
        assert api.delete(f"/v1/credentials/{saved['login_id']}").status_code == 200
    for _ in range(2):
        with stack.gw.api(saved["token"]) as api:
            assert api.get("/v1/whoami").status_code == 401
    denied = stack.cli(tmp_path, "psql", "pg-app", "-c", "select 1")
    assert denied.returncode != 0
