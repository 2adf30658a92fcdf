"""Identity across gateway replicas, and local users for setups without an IdP.

Two gateways share one PostgreSQL store; the agent and the client's session are on the
first. A credential revoked through the second ends the session on the first within
seconds: the first re-checks the credentials of its live sessions against the store.
"""

from __future__ import annotations

import urllib.parse

import psycopg
import pytest
from psycopg import sql

from gateway.crypto import SecretBox
from gateway.identity.local import totp
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "replica-app-Pw3"
ROLES = [
    {
        "name": "reporting",
        "groups": ["reporting"],
        "grants": [{"connection": "pg-rep", "access": "read-only"}],
    }
]


def _database(server: PostgresServer) -> None:
    with server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists repapp"))
        admin.execute(sql.SQL("drop role if exists rep_app"))
        admin.execute(
            sql.SQL("create role rep_app login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database repapp owner rep_app"))


def _connection(gw: GatewayProc, server: PostgresServer) -> None:
    gw.create_connection(
        name="pg-rep",
        type="postgres",
        host="127.0.0.1",
        port=server.port,
        database="repapp",
        username="rep_app",
        password=APP_PASSWORD,
    )


def _conninfo(gw: GatewayProc, token: str) -> str:
    with gw.api(token) as api:
        r = api.post("/v1/credentials/connection", json={"connection": "pg-rep"})
        assert r.status_code == 200, r.text
        minted = r.json()
    return (
        f"host=127.0.0.1 port={gw.public_port} dbname=pg-rep user={minted['user']} "
        f"password={minted['token']} sslmode=verify-full sslrootcert={gw.ca_path}"
    )


def test_revocation_through_another_replica_ends_the_session(
    wardgate: Wardgate, postgres_server: PostgresServer, postgres_db: PostgresServer
) -> None:
    _database(postgres_server)
    shared = {
        "store": postgres_db.url(),
        "secret_key": SecretBox.generate_key(),
        "roles": ROLES,
        "identity": {"revocation_check_interval": 0.5},
    }
    first = wardgate.gateway(**shared)
    second = wardgate.gateway(**shared)
    wardgate.agent(first, first.create_agent("default"), wait="default")
    _connection(first, postgres_server)

    with second.api() as api:
        made = api.post("/v1/service-accounts", json={"name": "nightly", "groups": ["reporting"]})
        assert made.status_code == 201, made.text
        issued = api.post("/v1/service-accounts/nightly/keys", json={"scopes": ["pg-rep"]})
        assert issued.status_code == 201, issued.text
    key, key_id = issued.json()["key"], issued.json()["id"]

    conn = psycopg.connect(_conninfo(first, key), autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        with second.api() as api:
            assert api.delete(f"/v1/credentials/{key_id}").status_code == 200

        errors: list[str] = []

        def ended() -> bool:
            try:
                conn.execute("select 1")
            except psycopg.OperationalError as exc:
                errors.append(str(exc))
                return True
            return False

        wait_for(ended, "the first replica to end the session", timeout=10)
    finally:
        conn.close()
    # The client is told why unless its next query raced the reset (see the PG relay).
    assert "credential revoked" in errors[0] or "closed" in errors[0], errors
    with first.api(key) as api:
        assert api.get("/v1/whoami").status_code == 401
    terminated = [e for e in first.audit("session.terminated") if e["actor"] == "nightly"]
    assert [e["data"]["reason"] for e in terminated] == ["credential revoked"]


def test_local_user_with_password_and_totp(
    wardgate: Wardgate, postgres_server: PostgresServer
) -> None:
    _database(postgres_server)
    gw = wardgate.gateway(
        secret_key=SecretBox.generate_key(), identity={"local_users": True}, roles=ROLES
    )
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    _connection(gw, postgres_server)
    password = "a long local password"
    with gw.api() as api:
        made = api.post(
            "/v1/users", json={"name": "lena", "password": password, "groups": ["reporting"]}
        )
        assert made.status_code == 201, made.text
        uri = made.json()["totp_uri"]
        secret = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["secret"][0]
        wrong = api.post(
            "/v1/auth/password", json={"user": "lena", "password": password, "code": "000000"}
        )
        bad_pw = api.post(
            "/v1/auth/password", json={"user": "lena", "password": "nope", "code": totp(secret)}
        )
        good = api.post(
            "/v1/auth/password", json={"user": "lena", "password": password, "code": totp(secret)}
        )
    assert wrong.status_code == 401 and bad_pw.status_code == 401
    assert good.status_code == 200, good.text
    token = good.json()["token"]
    with psycopg.connect(_conninfo(gw, token), autocommit=True) as conn:
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
    failed = [e for e in gw.audit("auth.failed") if e["data"]["method"] == "local"]
    assert len(failed) == 2
    assert password not in str(gw.audit()) and secret not in str(gw.audit())
    # Local users are for setups without an IdP: this gateway has no OIDC sign-in.
    with gw.api() as api:
        assert api.post("/v1/auth/oidc/device").status_code == 404
