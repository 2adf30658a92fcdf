"""The console's User page in a real headless Chromium, against real gateway, agent and
PostgreSQL processes: what a person does for themselves.

alice (dev) mints a credential for pg-main on the page, and psql connects with the string
the page shows (once: a reload no longer has it). She may only request pg-ops: she asks on
the page, sees the request pending under "My requests", bob (dba) approves it through the
API, and her page says approved without a reload; pg-ops then lets her in. Screenshots go
under build/screenshots/.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg import sql

from gateway.crypto import SecretBox
from gateway.identity.local import totp
from tests.fixtures.browser import Browser, Page
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import LOCAL_PASSWORD, GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "console-user-Pw9"
REVIEW_ID = re.compile(r"rv_[0-9a-f]{12}")
DBA = {"approvers": {"groups": ["dba"]}, "max_duration": 3600}
ROLES = [
    {
        "name": "devs",
        "groups": ["dev"],
        "grants": [
            {"connection": "pg-main", "access": "read-only"},
            {"connection": "pg-ops", "access": "read-only", "request": DBA},
        ],
    },
]


@dataclass
class Stack:
    gw: GatewayProc
    tmp: Path
    totp_secrets: dict[str, str]

    def token(self, user: str) -> str:
        with self.gw.api() as api:
            signed = api.post(
                "/v1/auth/password",
                json={
                    "user": user,
                    "password": LOCAL_PASSWORD,
                    "code": totp(self.totp_secrets[user]),
                },
            )
            assert signed.status_code == 200, signed.text
            return str(signed.json()["token"])


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    with postgres_server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists consoleuser"))
        admin.execute(sql.SQL("drop role if exists console_user_app"))
        admin.execute(
            sql.SQL("create role console_user_app login password {}").format(
                sql.Literal(APP_PASSWORD)
            )
        )
        admin.execute(sql.SQL("create database consoleuser owner console_user_app"))
    tmp = tmp_path_factory.mktemp("console-user")
    wg = Wardgate(tmp)
    try:
        gw = wg.gateway(
            secret_key=SecretBox.generate_key(),
            identity={"local_users": True},
            roles=ROLES,
            reviews={"poll_interval": 0.5},
        )
        wg.agent(gw, gw.create_agent("default"), wait="default")
        for name in ("pg-main", "pg-ops"):
            gw.create_connection(
                name=name,
                type="postgres",
                host="127.0.0.1",
                port=postgres_server.port,
                database="consoleuser",
                username="console_user_app",
                password=APP_PASSWORD,
            )
        secrets: dict[str, str] = {}
        with gw.api() as api:
            for name, groups in (("alice", ["dev"]), ("bob", ["dba"])):
                made = api.post(
                    "/v1/users", json={"name": name, "password": LOCAL_PASSWORD, "groups": groups}
                )
                assert made.status_code == 201, made.text
                query = urllib.parse.urlsplit(made.json()["totp_uri"]).query
                secrets[name] = urllib.parse.parse_qs(query)["secret"][0]
        yield Stack(gw, tmp, secrets)
    finally:
        wg.close()


def sign_in(page: Page, stack: Stack, user: str) -> None:
    page.goto(stack.gw.url + "/console/login")
    if page.text("#who") == user:  # the browser's session from an earlier test
        return
    page.fill("#user", user)
    page.fill("#password", LOCAL_PASSWORD)
    page.fill("#code", totp(stack.totp_secrets[user]))
    page.click("#signin")
    wait_for(lambda: page.url.endswith("/console/reviews"), f"{user} signed in")
    page.wait_loaded()


def click(page: Page, selector: str) -> None:
    """A real click, on a button that may be below the fold (the page grows as it is used)."""
    page.evaluate(f"document.querySelector({selector!r}).scrollIntoView({{block: 'center'}})")
    page.click(selector)


def psql(stack: Stack, line: str) -> subprocess.CompletedProcess[str]:
    """Run a psql command line copied from the page, with the gateway's CA saved beside it."""
    workdir = stack.tmp / "alice-desk"
    workdir.mkdir(exist_ok=True)
    (workdir / "wardgate-ca.pem").write_bytes(stack.gw.ca_path.read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        ["sh", "-c", line + " -X -At -c 'select 40 + 2'"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_a_user_mints_a_credential_and_psql_connects_with_it(
    stack: Stack, browser: Browser
) -> None:
    page = browser.new_page()
    sign_in(page, stack, "alice")
    page.goto(stack.gw.url + "/console/connections")
    click(page, "#mint-pg-main")
    line = page.wait_text("#conninfo-pg-main", "password=")
    page.screenshot("console-user-credential")
    assert line.startswith('psql "host=127.0.0.1 ')
    assert "dbname=pg-main user=alice" in line and "sslrootcert=wardgate-ca.pem" in line
    token = page.text("#token-pg-main")
    assert f"password={token}" in line
    ran = psql(stack, line)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "42"
    # Shown once: nothing keeps it in the browser, and the page, loaded again, does not hold it.
    assert token not in page.evaluate(
        "JSON.stringify(localStorage) + JSON.stringify(sessionStorage)"
    )
    page.goto(stack.gw.url + "/console/connections")
    assert token not in page.evaluate("document.documentElement.outerHTML")
    # Audited as the API audits it, without the secret.
    with stack.gw.api() as api:
        events = api.get("/v1/audit", params={"kind": "credential.issued"}).raise_for_status()
    assert token not in events.text
    issued = [
        e for e in events.json() if e["kind"] == "credential.issued" and e["actor"] == "alice"
    ]
    assert any(e["data"].get("connection") == "pg-main" for e in issued), issued
    assert token not in stack.gw.log(tail=100_000)  # never logged


def test_a_credential_is_not_minted_without_the_csrf_token(stack: Stack, browser: Browser) -> None:
    page = browser.new_page()
    sign_in(page, stack, "alice")
    page.goto(stack.gw.url + "/console/connections")
    # The page's own origin and cookie, but no token: what a forged same-site request has.
    status, body = page.evaluate(
        "fetch('/console/connections/pg-main/credential', {method: 'POST', "
        "body: new URLSearchParams({})}).then(async r => [r.status, await r.text()])"
    )
    assert status == 403
    assert "missing or wrong CSRF token: reload the page and try again" in body
    assert "wgt_" not in body


def test_a_user_requests_access_and_sees_it_approved_live(stack: Stack, browser: Browser) -> None:
    page = browser.new_page()
    sign_in(page, stack, "alice")
    page.goto(stack.gw.url + "/console/connections")
    assert "#mint-pg-ops" not in page.evaluate("document.documentElement.outerHTML")
    # Longer than the grant's terms allow: refused, and said in the page.
    page.fill("#reason-pg-ops", "a long look")
    page.fill("#minutes-pg-ops", "600")
    click(page, "#request-pg-ops")
    page.wait_text("#flash", "pg-ops: duration must be between 1 and 3600 seconds")
    assert page.text("#my-requests").strip() == "You have no reviews or access requests."
    page.fill("#reason-pg-ops", "incident 42: read the job queue")
    page.fill("#minutes-pg-ops", "30")
    click(page, "#request-pg-ops")
    page.wait_text("#flash", "waits for approval")
    mine = page.wait_text("#my-requests", "pending")
    found = REVIEW_ID.search(mine)
    assert found, mine
    review_id = found.group(0)
    assert "pg-ops" in mine and "for 30 min" in mine
    page.screenshot("console-user-request-pending")
    page.evaluate("window.notReloaded = true")
    with stack.gw.api(stack.token("bob")) as api:
        voted = api.post(f"/v1/reviews/{review_id}/approve", json={"reason": "go ahead"})
        assert voted.status_code == 200, voted.text
    assert page.wait_text(f"#status-{review_id}", "approved") == "approved"
    assert page.evaluate("window.notReloaded") is True  # htmx swapped it in, no reload
    page.screenshot("console-user-request-approved")
    # The connection is now reachable: the page lists it with its commands and mints for it.
    page.goto(stack.gw.url + "/console/connections")
    click(page, "#mint-pg-ops")
    line = page.wait_text("#conninfo-pg-ops", "password=")
    ran = psql(stack, line)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "42"
