"""The review page and the webhook's link to it, in a real headless Chromium.

alice (dev) reads the accounts table, then runs a write the policy holds; the webhook's
event carries the review's console address. bob (dba), signed out, opens it: the console
sends him through sign-in and back to the review, which shows alice's recent activity on
the connection and that the link is genuine; he approves from it. A `next` that points off
the console is ignored after sign-in (no open redirect). olga (an administrator) sees on the
Operator page how much of the day's exfiltration budget alice has used.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.crypto import SecretBox
from gateway.identity.local import totp
from gateway.reviews.webhook import SIGNATURE_HEADER, verify
from tests.e2e.test_console import APP_PASSWORD, POLICY, ROLES, Stack, holding, sign_out
from tests.fixtures.browser import Browser, Page
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import LOCAL_PASSWORD, Wardgate, free_port, wait_for

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = "console-review-link-secret"
ROWS_PER_DAY = 1000
OPS = [*ROLES, {"name": "ops", "groups": ["ops"], "admin": True}]


class Hooks:
    """A real HTTP server keeping the webhook's verified event bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert verify(WEBHOOK_SECRET, body, self.headers[SIGNATURE_HEADER])
                with sink.lock:
                    sink.bodies.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def link(self, review_id: str) -> str | None:
        with self.lock:
            for body in self.bodies:
                if body["event"] == "review.created" and body["review"]["id"] == review_id:
                    return str(body["console_url"])
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    sink = Hooks()
    try:
        yield sink
    finally:
        sink.close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, hooks: Hooks
) -> Iterator[Stack]:
    with postgres_server.connect() as admin:
        for name in ("consoleapp", "reviewstore"):
            admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("drop role if exists console_app"))
        admin.execute(
            sql.SQL("create role console_app login password {}").format(sql.Literal(APP_PASSWORD))
        )
        admin.execute(sql.SQL("create database consoleapp owner console_app"))
    store = postgres_server.create_database("reviewstore")
    db = dataclasses.replace(postgres_server, dbname="consoleapp")
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("set role console_app")
        conn.execute("create table accounts (id int primary key, balance int not null)")
        conn.execute("insert into accounts select g, 100 from generate_series(1, 10) g")
    wg = Wardgate(tmp_path_factory.mktemp("console-review"))
    try:
        hook = {"url": f"http://127.0.0.1:{hooks.server.server_address[1]}/hook"}
        gw = wg.gateway(
            store=store.url(),
            secret_key=SecretBox.generate_key(),
            identity={"local_users": True},
            roles=OPS,
            policy={**POLICY, "budgets": [{"name": "daily-reads", "rows_per_day": ROWS_PER_DAY}]},
            reviews={"poll_interval": 0.5, "webhook": {**hook, "secret": WEBHOOK_SECRET}},
        )
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
            for name, groups in (("alice", ["dev"]), ("bob", ["dba"]), ("olga", ["ops"])):
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
        yield Stack(gw, gw, db, signed.json()["token"], secrets)
    finally:
        wg.close()


def _sign_in_here(page: Page, stack: Stack, user: str) -> None:
    """Sign in on the sign-in page the browser is on (keeping its `next`)."""
    page.fill("#user", user)
    page.fill("#password", LOCAL_PASSWORD)
    page.fill("#code", totp(stack.totp_secrets[user]))
    page.click("#signin")


def test_a_webhook_link_opened_signed_out_leads_through_sign_in_to_the_review(
    stack: Stack, browser: Browser, hooks: Hooks
) -> None:
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        conn.execute("select count(*) from accounts where balance > 50").fetchall()
    with holding(stack) as (review_id, thread, result):
        link = wait_for(lambda: hooks.link(review_id), "the webhook's review.created event")
        path = f"/console/reviews/{review_id}"
        assert link.startswith(f"{stack.gw.url}{path}?sig="), link
        page = browser.new_page()
        page.goto(link)
        login = f"{stack.gw.url}/console/login?" + urllib.parse.urlencode(
            {"next": link.removeprefix(stack.gw.url)}
        )
        assert page.url == login, page.url
        _sign_in_here(page, stack, "bob")
        wait_for(lambda: page.url == link, "back at the review after sign-in")
        page.wait_loaded()
        assert "its signature is genuine" in page.wait_text("#link", "genuine"), page.text()
        article = page.text(f"#review-{review_id}")
        assert "update accounts set balance = 7" in article and "account-writes" in article
        # alice's recent activity on pg-main: the read before, and the held write.
        activity = page.text("#activity")
        assert "select count(*) from accounts where balance > 50" in activity, activity
        page.screenshot("console-review")
        # The Reviewer page's card shows a glance of it too.
        page.goto(f"{stack.gw.url}/console/reviews")
        card = page.wait_text(f"#activity-{review_id}", "select count(*) from accounts")
        assert "alice's latest on pg-main" in card, card
        # A tampered signature is called out (the link still opens nothing by itself).
        page.goto(f"{stack.gw.url}{path}?sig={'0' * 32}")
        assert "signature is wrong: it was not sent by this gateway" in page.text("#link")
        page.fill(f"#reason-{review_id}", "read the history, fine")
        page.click(f"#approve-{review_id}")
        page.wait_text("#flash", f"You approved {review_id}")
        thread.join(30)
        assert result.get("value") == [(7,)], result
        page.goto(stack.gw.url + path)
        assert page.text("#status") == "approved"
        assert "read the history, fine" in page.text("#votes")
        sign_out(page)


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/console/reviews", "//evil.example/console/", "/console/../v1/users"],
)
def test_a_next_pointing_off_the_console_is_ignored(
    stack: Stack, browser: Browser, target: str
) -> None:
    page = browser.new_page()
    page.goto(f"{stack.gw.url}/console/login?" + urllib.parse.urlencode({"next": target}))
    _sign_in_here(page, stack, "bob")
    wait_for(lambda: page.url == f"{stack.gw.url}/console/reviews", "the Reviewer page")
    page.wait_loaded()
    sign_out(page)


def _rows_used(stack: Stack) -> int:
    with stack.gw.api() as api:
        usage = api.get("/v1/budgets/usage", params={"user": "alice"}).json()
    return sum(u["rows"] for u in usage if u["budget"] == "daily-reads")


def test_the_operator_page_shows_a_budgets_usage_today(stack: Stack, browser: Browser) -> None:
    before = _rows_used(stack)
    with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
        assert len(conn.execute("select id from accounts where id <= 4").fetchall()) == 4
    page = browser.new_page()
    page.goto(f"{stack.gw.url}/console/login?next=/console/operator")
    _sign_in_here(page, stack, "olga")
    wait_for(lambda: page.url == f"{stack.gw.url}/console/operator", "the Operator page")
    row = "#budget-daily-reads-alice-pg-main"

    # An ended session's usage reaches the store within a few seconds.
    used = wait_for(lambda: (n := _rows_used(stack)) >= before + 4 and n, "alice's usage")
    page.goto(f"{stack.gw.url}/console/operator")
    text = page.text(row)
    assert f"{used} / {ROWS_PER_DAY}" in text, text
    meter = f"document.querySelector('{row} meter')"
    assert page.evaluate(f"[{meter}.value, {meter}.max]") == [used, ROWS_PER_DAY]
    page.screenshot("console-operator-budgets")
    sign_out(page)


def test_revoking_an_api_key_from_the_operator_page_stops_it_working(
    stack: Stack, browser: Browser
) -> None:
    with stack.gw.api() as api:
        made = api.post("/v1/service-accounts", json={"name": "ci-bot", "groups": ["dev"]})
        assert made.status_code == 201, made.text
        minted = api.post("/v1/service-accounts/ci-bot/keys", json={"scopes": ["pg-*"]})
        assert minted.status_code == 201, minted.text
    key, key_id = minted.json()["key"], minted.json()["id"]
    with stack.gw.api(key) as bot:
        assert bot.get("/v1/whoami").json()["user"] == "ci-bot"
    page = browser.new_page()
    page.goto(f"{stack.gw.url}/console/login?next=/console/operator")
    _sign_in_here(page, stack, "olga")
    wait_for(lambda: page.url == f"{stack.gw.url}/console/operator", "the Operator page")
    page.wait_loaded()
    listed = page.text(f"#key-{key_id}")
    assert "ci-bot" in listed and "pg-*" in listed and "active" in listed, listed
    assert key not in page.text()  # the key itself is never shown
    page.screenshot("console-operator-api-keys")
    # The table is below the fold: page.click presses where the button is on screen.
    page.evaluate(f"document.querySelector('#revoke-{key_id}').scrollIntoView()")
    page.click(f"#revoke-{key_id}")
    page.wait_text("#flash", f"API key {key_id} revoked")
    assert "revoked" in page.text(f"#key-{key_id}")
    with stack.gw.api(key) as bot:
        refused = bot.get("/v1/whoami")
    assert refused.status_code == 401, refused.text
    [event] = [e for e in stack.gw.audit("credential.revoked") if e["data"].get("credential")]
    assert (event["actor"], event["data"]["credential"]) == ("olga", key_id)
    sign_out(page)
