"""Sign-in rate limits against real gateway processes: 429 with Retry-After per client
address and per claimed identity, a bounded audit trail, the CLI's one-line message, and two
members over one PostgreSQL store sharing the limit.

Clients come from distinct loopback addresses (127.0.0.x) to stand for distinct hosts.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import paramiko
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.crypto import SecretBox
from gateway.identity.local import totp
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import (
    LOCAL_PASSWORD,
    WARDGATE,
    GatewayProc,
    Wardgate,
    wait_for,
)

pytestmark = pytest.mark.e2e


def bad_token(sub: str = "x") -> str:
    """An unsigned token claiming an issuer the gateway does not trust: a failed exchange."""

    def part(value: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'iss': 'https://evil', 'sub': sub})}.x"


BAD_TOKEN = bad_token()


def client(gw: GatewayProc, source: str = "127.0.0.1") -> httpx.Client:
    """A client of `gw` whose connections come from `source`, without a credential."""
    return httpx.Client(
        base_url=gw.url,
        verify=ssl.create_default_context(cafile=str(gw.ca_path)),
        transport=httpx.HTTPTransport(
            local_address=source, verify=ssl.create_default_context(cafile=str(gw.ca_path))
        ),
        timeout=30,
    )


def local_user(gw: GatewayProc, name: str) -> str:
    """Create a local user; returns its TOTP secret."""
    with gw.api() as api:
        made = api.post("/v1/users", json={"name": name, "password": LOCAL_PASSWORD, "groups": []})
        assert made.status_code == 201, made.text
    query = urllib.parse.urlsplit(str(made.json()["totp_uri"])).query
    return urllib.parse.parse_qs(query)["secret"][0]


def password_login(http: httpx.Client, name: str, secret: str, password: str) -> httpx.Response:
    return http.post(
        "/v1/auth/password", json={"user": name, "password": password, "code": totp(secret)}
    )


def metric(gw: GatewayProc, limit: str, endpoint: str) -> float:
    with gw.api() as api:
        r = api.get("/v1/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    # Parsed: the Prometheus client library writes label pairs in its own order.
    return next(
        (
            s.value
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
            if s.name == "wardgate_auth_rate_limited_total"
            and s.labels == {"limit": limit, "endpoint": endpoint}
        ),
        0.0,
    )


def rate_limited(gw: GatewayProc) -> list[dict[str, Any]]:
    return [e["data"] for e in gw.audit("auth.rate_limited")]


def test_bad_exchanges_from_one_address_get_429_and_others_are_unaffected(
    wardgate: Wardgate, tmp_path: Path
) -> None:
    gw = wardgate.gateway(secret_key=SecretBox.generate_key(), identity={"local_users": True})
    secret = local_user(gw, "lena")
    with client(gw) as attacker:
        # Each claims another subject: only the address limit applies.
        answers = [
            attacker.post("/v1/auth/workload", json={"token": bad_token(f"x{i}")})
            for i in range(30)
        ]
        assert [r.status_code for r in answers] == [401] * 20 + [429] * 10  # the default: 20/min
        first = answers[20]
        wait = int(first.headers["Retry-After"])
        assert 1 <= wait <= 120
        assert first.json() == {
            "detail": f"too many failed sign-in attempts from this address: retry in {wait} s"
        }
        # Over the limit, the address is refused even with the right password.
        assert password_login(attacker, "lena", secret, LOCAL_PASSWORD).status_code == 429
    with client(gw, "127.0.0.2") as other:
        good = password_login(other, "lena", secret, LOCAL_PASSWORD)
        assert good.status_code == 200, good.text

    # The CLI says what happened and how long to wait, in one line.
    token_file = tmp_path / "ci.jwt"
    token_file.write_text(BAD_TOKEN)
    env = {k: v for k, v in gw.client_env().items() if k != "WARDGATE_TOKEN"}
    out = subprocess.run(
        [*WARDGATE, "login", "--token-file", str(token_file)],
        env={**env, "WARDGATE_CONFIG_DIR": str(tmp_path / "cli")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert re.fullmatch(
        r"Error: gateway answered 429: too many failed sign-in attempts from this address: "
        r"retry in \d+ s\n",
        out.stderr,
    ), out.stderr

    # 20 failures and one rate-limit event for 41 attempts; the refusals are counted.
    failed = [e for e in gw.audit("auth.failed") if e["data"]["method"] == "workload"]
    assert len(failed) == 20
    (event,) = rate_limited(gw)
    assert (event["limit_kind"], event["address"], event["endpoint"]) == (
        "address",
        "127.0.0.1",
        "workload",
    )
    assert (event["limit"], event["window"]) == (20, 60)
    assert metric(gw, "address", "workload") == 11
    assert metric(gw, "address", "local") == 1


def test_a_claimed_identity_is_limited_from_any_address(wardgate: Wardgate) -> None:
    gw = wardgate.gateway(
        secret_key=SecretBox.generate_key(),
        identity={
            "local_users": True,
            "rate_limit": {"per_identity": {"attempts": 3, "window": 60}},
        },
    )
    lena, omar = local_user(gw, "lena"), local_user(gw, "omar")
    for n in range(3):
        with client(gw, f"127.0.0.{11 + n}") as guesser:
            assert password_login(guesser, "lena", lena, "guess").status_code == 401
    with client(gw, "127.0.0.14") as fresh:
        refused = password_login(fresh, "lena", lena, LOCAL_PASSWORD)
        assert refused.status_code == 429
        assert "from this identity" in refused.json()["detail"]
        assert int(refused.headers["Retry-After"]) >= 1
        # The refused attempt was charged to nothing: the address and other users sign in.
        assert password_login(fresh, "omar", omar, LOCAL_PASSWORD).status_code == 200
    (event,) = rate_limited(gw)
    assert (event["limit_kind"], event["identity"], event["client"]) == (
        "identity",
        "local:lena",
        "127.0.0.14",
    )


def test_a_success_clears_the_identity_count(wardgate: Wardgate) -> None:
    gw = wardgate.gateway(
        secret_key=SecretBox.generate_key(),
        identity={
            "local_users": True,
            "rate_limit": {"per_identity": {"attempts": 3, "window": 60}},
        },
    )
    lena = local_user(gw, "lena")
    with client(gw, "127.0.0.21") as http:
        for _ in range(2):
            assert password_login(http, "lena", lena, "typo").status_code == 401
        assert password_login(http, "lena", lena, LOCAL_PASSWORD).status_code == 200
        for _ in range(3):  # a fresh allowance after the success
            assert password_login(http, "lena", lena, "typo").status_code == 401
        assert password_login(http, "lena", lena, "typo").status_code == 429


def test_refusals_are_audited_once_per_window_and_summed_when_pruned(wardgate: Wardgate) -> None:
    gw = wardgate.gateway(
        identity={"rate_limit": {"per_address": {"attempts": 2, "window": 5}}},
    )
    with client(gw) as attacker:
        codes = [
            attacker.post("/v1/auth/workload", json={"token": bad_token(f"x{i}")}).status_code
            for i in range(40)
        ]
    refusals = codes.count(429)
    assert refusals >= 30 and set(codes) == {401, 429}

    def counted() -> list[dict[str, Any]] | None:
        events = rate_limited(gw)
        firsts = [e for e in events if not e.get("summary")]
        summaries = [e for e in events if e.get("summary")]
        # A window that refused once has only its first event; the others also a summary.
        total = len(firsts) - len(summaries) + sum(e["refused"] for e in summaries)
        return events if total == refusals else None

    events = wait_for(counted, "the pruned windows' summaries", timeout=40)
    assert len(events) <= 6, events  # not one per refusal
    assert all(e["address"] == "127.0.0.1" for e in events)


def test_two_members_over_one_store_share_the_limit(
    wardgate: Wardgate, postgres_db: PostgresServer
) -> None:
    shared = {
        "store": postgres_db.url(),
        "secret_key": SecretBox.generate_key(),  # a shared store's identity is sealed with it
        "identity": {"rate_limit": {"per_address": {"attempts": 5, "window": 60}}},
    }
    first = wardgate.gateway(**shared)
    second = wardgate.gateway(**shared)
    with client(first) as a, client(second) as b:
        for i, http in enumerate((a, a, a, b, b)):
            token = bad_token(f"x{i}")
            assert http.post("/v1/auth/workload", json={"token": token}).status_code == 401
        for i, http in enumerate((a, b)):
            r = http.post("/v1/auth/workload", json={"token": bad_token(f"y{i}")})
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    (event,) = rate_limited(first)  # one event for the key, whichever member refused first
    assert event["address"] == "127.0.0.1"
    assert metric(first, "address", "workload") == metric(second, "address", "workload") == 1


def test_forged_workload_tokens_cannot_lock_out_the_subject_they_claim(
    wardgate: Wardgate,
) -> None:
    """A workload token's subject is unverified until its signature is: anyone may claim it,
    so its failures count against the address that sent them, not the subject."""
    gw = wardgate.gateway(
        identity={"rate_limit": {"per_identity": {"attempts": 2, "window": 60}}},
    )
    for n in range(5):
        with client(gw, f"127.0.0.{31 + n}") as forger:
            r = forger.post("/v1/auth/workload", json={"token": BAD_TOKEN})
            assert r.status_code == 401, r.text
    assert rate_limited(gw) == []


def test_bad_credentials_on_the_api_are_limited_but_good_ones_never(wardgate: Wardgate) -> None:
    gw = wardgate.gateway(identity={"rate_limit": {"per_address": {"attempts": 5, "window": 60}}})
    with client(gw) as http:
        bad = {"Authorization": "Bearer wgt_not-a-credential-at-all-0123456789abcdef"}
        codes = [http.get("/v1/whoami", headers=bad).status_code for _ in range(8)]
        assert codes == [401] * 5 + [429] * 3
    with gw.api() as admin:  # the same address, a good credential: not counted, not refused
        assert admin.get("/v1/whoami").status_code == 200
    assert len(gw.audit("auth.rejected")) == 5
    (event,) = rate_limited(gw)
    assert (event["endpoint"], event["address"]) == ("api", "127.0.0.1")
    assert metric(gw, "address", "api") == 3


def test_bad_credentials_at_the_kubernetes_door_get_a_429_status(wardgate: Wardgate) -> None:
    gw = wardgate.gateway(identity={"rate_limit": {"per_address": {"attempts": 3, "window": 60}}})
    bad = {"Authorization": "Bearer wgt_not-a-credential-at-all-0123456789abcdef"}
    with client(gw) as kubectl_like:
        answers = [kubectl_like.get("/k8s/k8s/api/v1/pods", headers=bad) for _ in range(4)]
    assert [r.status_code for r in answers] == [401, 401, 401, 429]
    status = answers[-1].json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "TooManyRequests", 429)
    assert "too many failed sign-in attempts" in status["message"]
    assert int(answers[-1].headers["Retry-After"]) >= 1
    assert len(gw.audit("auth.rejected")) == 3
    (event,) = rate_limited(gw)
    assert event["endpoint"] == "kubernetes"


def test_bad_passwords_at_the_postgres_and_ssh_doors_are_limited(wardgate: Wardgate) -> None:
    gw = wardgate.gateway(identity={"rate_limit": {"per_address": {"attempts": 3, "window": 60}}})
    errors = []
    for _ in range(4):
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(gw.pg_conninfo("pg-any", password="wgt_wrong-0123456789abcdef"))
        errors.append(caught.value)
    assert all("password authentication failed" in str(e) for e in errors[:3]), errors
    assert "too many failed sign-in attempts from this address: retry in" in str(errors[3])
    assert len(gw.audit("pg.refused")) == 3

    def ssh_login(password: str) -> bool:
        with socket.create_connection(("127.0.0.1", gw.public_port), timeout=10) as sock:
            transport = paramiko.Transport(sock)
            try:
                transport.start_client(timeout=10)
                transport.auth_password("admin:x", password)
                return True
            except paramiko.AuthenticationException:
                return False
            finally:
                transport.close()

    # The same address is over its limit already: refused, and no more events.
    assert not ssh_login("wgt_wrong-0123456789abcdef")
    assert gw.audit("ssh.refused") == []
    events = rate_limited(gw)
    assert [e["endpoint"] for e in events] == ["postgres"]  # one per key and window
    assert metric(gw, "address", "postgres") == 1 and metric(gw, "address", "ssh") == 1
