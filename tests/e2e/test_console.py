"""The web console in a real headless Chromium against real gateway and agent processes.

alice (dev) runs a write the policy holds for review, from psycopg, and waits; bob (dba)
signs in to the console with password + TOTP, sees the held statement on the Reviewer page,
and approves it: alice's client gets its result. A POST without the CSRF token, and a form
posted from another origin (with a stolen token), are refused; dave (dev) is shown no admin
page. Each page is saved as a screenshot under build/screenshots/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.crypto import SecretBox
from gateway.identity.local import totp
from tests.fixtures.browser import Browser, Page
from tests.fixtures.oidc import OidcProvider
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import LOCAL_PASSWORD, GatewayProc, Wardgate, free_port, wait_for

pytestmark = pytest.mark.e2e

APP_PASSWORD = "console-app-Pw9"
REVIEW_ID = re.compile(r"rv_[0-9a-f]{12}")
DBA = {"approvers": {"groups": ["dba"]}}
POLICY = {
    "rules": [
        {
            "name": "account-writes",
            "effect": "review",
            "message": "writes to accounts need a second person",
            "match": {"kinds": ["write"], "tables": ["accounts"]},
            "review": {**DBA, "timeout": 120},
        }
    ]
}
GRANT = {"connection": "pg-main", "access": "read-write"}
ROLES = [
    {"name": "devs", "groups": ["dev"], "grants": [GRANT]},
    {"name": "dbas", "groups": ["dba"], "grants": [GRANT]},
]


@dataclass
class Stack:
    gw: GatewayProc
    gw2: GatewayProc  # a second member of the fleet (same PostgreSQL store), without agents
    db: PostgresServer
    alice: str  # alice's credential (she uses psycopg, not the console)
    totp_secrets: dict[str, str]  # console users' authenticator secrets

    def conninfo(self) -> str:
        return (
            f"host=127.0.0.1 port={self.gw.public_port} dbname=pg-main user=alice "
            f"password={self.alice} sslmode=verify-full sslrootcert={self.gw.ca_path}"
        )

    def review(self, review_id: str) -> dict[str, Any]:
        with self.gw.api() as api:
            r = api.get(f"/v1/reviews/{review_id}")
            r.raise_for_status()
            return dict(r.json())


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    with postgres_server.connect() as admin:
        for name in ("consoleapp", "consolestore"):
            admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("drop role if exists console_app"))
        admin.execute(
            sql.SQL("create role console_app login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database consoleapp owner console_app"))
    store = postgres_server.create_database("consolestore")
    db = dataclasses.replace(postgres_server, dbname="consoleapp")
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("set role console_app")
        conn.execute("create table accounts (id int primary key, balance int not null)")
        conn.execute("insert into accounts select g, 100 from generate_series(1, 10) g")
    wg = Wardgate(tmp_path_factory.mktemp("console"))
    try:
        shared = {
            "store": store.url(),
            "secret_key": SecretBox.generate_key(),
            "identity": {"local_users": True},
            "roles": ROLES,
            "policy": POLICY,
            "reviews": {"poll_interval": 0.5},
        }
        gw = wg.gateway(**shared)
        gw2 = wg.gateway(**shared)
        wg.agent(gw, gw.create_agent("default"), wait="default")
        gw.create_connection(
            name="pg-main",
            type="postgres",
            host="127.0.0.1",
            port=postgres_server.port,
            database="consoleapp",
            username="console_app",
            password=APP_PASSWORD,
        )
        secrets: dict[str, str] = {}
        with gw.api() as api:
            for name, groups in (("alice", ["dev"]), ("bob", ["dba"]), ("dave", ["dev"])):
                made = api.post(
                    "/v1/users", json={"name": name, "password": LOCAL_PASSWORD, "groups": groups}
                )
                assert made.status_code == 201, made.text
                query = urllib.parse.urlsplit(made.json()["totp_uri"]).query
                secrets[name] = urllib.parse.parse_qs(query)["secret"][0]
            signed = api.post(
                "/v1/auth/password",
                json={"user": "alice", "password": LOCAL_PASSWORD, "code": totp(secrets["alice"])},
            )
            assert signed.status_code == 200, signed.text
        yield Stack(gw, gw2, db, signed.json()["token"], secrets)
    finally:
        wg.close()


def sign_in(page: Page, stack: Stack, user: str, shot: str | None = None) -> None:
    page.goto(stack.gw.url + "/")  # `/` sends a browser to the console, then to sign-in
    assert page.url == stack.gw.url + "/console/login", page.url
    page.fill("#user", user)
    page.fill("#password", LOCAL_PASSWORD)
    page.fill("#code", totp(stack.totp_secrets[user]))
    if shot:
        page.screenshot(shot)
    page.click("#signin")
    wait_for(lambda: page.url.endswith("/console/reviews"), f"{user} signed in")
    page.wait_loaded()
    assert page.text("#who") == user


def sign_out(page: Page) -> None:
    page.click(".signout button")
    wait_for(lambda: page.url.endswith("/console/login"), "the sign-in page after sign-out")


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


Held = tuple[str, threading.Thread, dict[str, Any]]


@contextlib.contextmanager
def holding(stack: Stack) -> Iterator[Held]:
    """A write of alice's, held for review while her psycopg client waits."""
    notices: list[str] = []
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))

        def write() -> Any:
            cur = conn.execute("update accounts set balance = 7 where id = 3 returning balance")
            return cur.fetchall()

        thread, result = _in_thread(write)
        found = wait_for(lambda: REVIEW_ID.search(" ".join(notices)), "the review notice")
        try:
            yield found.group(0), thread, result
        finally:
            if thread.is_alive():  # still held: cancelling withdraws the review
                conn.cancel_safe()
                thread.join(30)


@pytest.fixture
def held(stack: Stack) -> Iterator[Held]:
    with holding(stack) as found:
        yield found


def test_a_reviewer_approves_a_held_statement_and_the_waiting_client_gets_its_result(
    stack: Stack, browser: Browser
) -> None:
    page = browser.new_page()
    sign_in(page, stack, "bob", shot="console-sign-in")
    cookie = next(c for c in page.cookies() if c["name"] == "__Secure-wardgate-console")
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"], cookie["path"]) == (
        True,
        True,
        "Strict",
        "/console",
    )
    assert page.evaluate("typeof htmx") == "object"  # loaded from the package, under the CSP
    page.wait_text("#reviews", "Nothing is waiting for your review.")
    with holding(stack) as (review_id, thread, result):
        # It appears without a reload (htmx polls the list).
        article = page.wait_text(f"#review-{review_id}", "update accounts set balance = 7")
        assert "alice" in article and "pg-main" in article and "account-writes" in article
        page.screenshot("console-reviews")
        assert thread.is_alive()  # still held while the reviewer reads it
        _approve(page, stack, review_id, thread, result)


def _approve(
    page: Page, stack: Stack, review_id: str, thread: threading.Thread, result: dict[str, Any]
) -> None:
    page.fill(f"#reason-{review_id}", "ticket 42, checked")
    page.click(f"#approve-{review_id}")
    page.wait_text("#flash", f"You approved {review_id}")
    assert page.url.endswith("/console/reviews")  # swapped in place by htmx, not a new page
    page.screenshot("console-approved")
    thread.join(30)
    assert result.get("value") == [(7,)], result
    decided = stack.review(review_id)
    assert decided["status"] == "approved"
    assert [(v["voter"], v["vote"], v["reason"]) for v in decided["votes"]] == [
        ("bob", "approve", "ticket 42, checked")
    ]
    # The list no longer offers it (polled, no reload).
    page.wait_text("#reviews", "Nothing is waiting for your review.")
    sign_out(page)
    page.goto(stack.gw.url + "/console/reviews")  # the revoked session opens nothing
    assert page.url == stack.gw.url + "/console/login"


def test_a_post_without_the_csrf_token_is_refused(
    stack: Stack, browser: Browser, held: Held
) -> None:
    review_id, thread, _ = held
    page = browser.new_page()
    sign_in(page, stack, "bob")
    # The page's own origin and cookie, but no token: what a forged same-site request has.
    answer = page.evaluate(
        f"fetch('/console/reviews/{review_id}/vote', {{method: 'POST', "
        f"body: new URLSearchParams({{vote: 'approve', reason: 'forged'}})}})"
        ".then(async r => [r.status, await r.text()])"
    )
    status, body = answer
    assert status == 403
    assert "missing or wrong CSRF token: reload the page and try again" in body
    assert stack.review(review_id)["status"] == "pending"
    assert thread.is_alive()
    sign_out(page)


def test_a_form_posted_from_another_origin_is_refused(
    stack: Stack, browser: Browser, held: Held
) -> None:
    review_id, thread, _ = held
    page = browser.new_page()
    sign_in(page, stack, "bob")
    stolen = page.evaluate("document.querySelector('input[name=csrf]').value")
    evil = _evil_site(
        f'<form method="post" action="{stack.gw.url}/console/reviews/{review_id}/vote">'
        f'<input name="csrf" value="{stolen}"><input name="vote" value="approve">'
        '<button id="go">Win a prize</button></form>'
    )
    try:
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        page.click("#go")
        page.wait_text("#error", "cross-origin request refused")
        page.screenshot("console-cross-origin-refused")
    finally:
        evil.shutdown()
        evil.server_close()
    assert stack.review(review_id)["status"] == "pending"
    assert thread.is_alive()
    page.goto(stack.gw.url + "/console/reviews")  # still signed in: a refusal ends nothing
    sign_out(page)


def test_a_requester_cannot_approve_their_own_statement(
    stack: Stack, browser: Browser, held: Held
) -> None:
    review_id, thread, _ = held
    page = browser.new_page()
    sign_in(page, stack, "alice")
    mine = page.wait_text(".mine", review_id)  # listed as hers, with nothing to click
    assert "update accounts set balance = 7" in mine
    assert page.evaluate(f"document.querySelector('#approve-{review_id}')") is None
    # Posted anyway, the way htmx posts (token in the header): the API's rule refuses it.
    status, body = page.evaluate(
        f"fetch('/console/reviews/{review_id}/vote', {{method: 'POST', "
        "headers: {'X-CSRF-Token': document.querySelector('input[name=csrf]').value}, "
        "body: new URLSearchParams({vote: 'approve'})}).then(async r => [r.status, await r.text()])"
    )
    assert status == 403
    assert f"{review_id}: nobody reviews their own request" in body
    assert stack.review(review_id)["status"] == "pending"
    assert thread.is_alive()
    sign_out(page)


def test_a_non_admin_gets_no_admin_page(stack: Stack, browser: Browser) -> None:
    page = browser.new_page()
    sign_in(page, stack, "dave")
    assert "Admin" not in page.text("header")  # not offered
    page.goto(stack.gw.url + "/console/admin")  # and refused when asked for
    assert page.text("h1") == "Not for you"
    assert page.text("#error") == "user 'dave' is not an administrator"
    page.screenshot("console-admin-refused")
    status = page.evaluate("fetch('/console/admin').then(r => r.status)")
    assert status == 403
    sign_out(page)


def _evil_site(body: str) -> ThreadingHTTPServer:
    """A page on another origin (another port), served by a real local HTTP server."""
    html = f"<!doctype html><title>elsewhere</title>{body}".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_pages_run_under_a_csp_that_refuses_inline_scripts(stack: Stack, browser: Browser) -> None:
    page = browser.new_page()
    sign_in(page, stack, "dave")
    page.wait_text("#reviews", "Nothing is waiting for your review.")
    wait_for(lambda: page.evaluate("typeof htmx") == "object", "htmx to load")
    assert [m for m in page.console_messages() if "Content Security Policy" in m] == []
    # What an injected script would do is refused, and the browser says why.
    ran = page.evaluate(
        "(() => { const s = document.createElement('script');"
        " s.textContent = 'window.injected = true'; document.body.append(s);"
        " return window.injected === true })()"
    )
    assert ran is False
    wait_for(
        lambda: [m for m in page.console_messages() if "Content Security Policy" in m],
        "the browser's report of the refused script",
    )
    sign_out(page)


def test_any_member_of_the_fleet_accepts_a_console_sign_in_and_its_sign_out(
    stack: Stack, browser: Browser
) -> None:
    first = browser.new_page()
    sign_in(first, stack, "bob")  # on the first member, whose Reviewer page polls
    # Another tab of the same browser on the second member (cookies are per host, not per
    # port): the session is in the shared store, found by its hash.
    second = browser.new_page()
    second.goto(stack.gw2.url + "/console/reviews")
    assert second.url == stack.gw2.url + "/console/reviews"
    assert second.text("#who") == "bob"
    sign_out(second)  # on the second member: revoked in the store, for every member
    # The first tab's next poll finds the session gone and takes the page to sign-in.
    wait_for(lambda: first.url == stack.gw.url + "/console/login", "the first tab to sign-in")
    first.goto(stack.gw.url + "/console/reviews")
    assert first.url == stack.gw.url + "/console/login"


def test_a_person_signs_in_through_the_identity_provider(
    wardgate: Wardgate, oidc_provider: OidcProvider, browser: Browser
) -> None:
    oidc_provider.set_user("sub-erin", preferred_username="erin", groups=["dba"])
    gw = wardgate.gateway(
        secret_key=SecretBox.generate_key(),
        identity={
            "oidc": {
                "issuer": oidc_provider.issuer,
                "client_id": "wardgate",
                "client_secret": "client-secret-1",
                "jwks_min_refresh": 0,
            }
        },
    )
    page = browser.new_page()
    page.goto(gw.url + "/")
    assert page.url == gw.url + "/console/login"
    assert page.evaluate("document.querySelector('#password')") is None  # no local users
    page.screenshot("console-sign-in-oidc")
    page.click("#oidc")
    # The provider's own page, reached with a PKCE challenge and our callback.
    wait_for(lambda: page.url.startswith(oidc_provider.issuer), "the provider's sign-in page")
    asked = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    assert asked["code_challenge_method"] == ["S256"]
    assert asked["redirect_uri"] == [gw.url + "/console/login/oidc/callback"]
    page.wait_loaded()
    page.fill("input[name=sub]", "sub-erin")
    page.click("button[type=submit]")
    wait_for(lambda: page.url == gw.url + "/console/reviews", "the console after the provider")
    page.wait_loaded()
    assert page.text("#who") == "erin"
    kinds = [(e["kind"], e["data"].get("method")) for e in gw.audit() if e["actor"] == "erin"]
    assert ("auth.login", "oidc") in kinds and ("console.login", "oidc") in kinds
    sign_out(page)
