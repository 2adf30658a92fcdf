"""The console's Auditor and User pages in a real headless Chromium, against real gateway,
agent, PostgreSQL and OpenSSH sshd processes.

alice (dev) runs statements through psycopg and a terminal session through OpenSSH ssh;
audrey (audit, a gateway administrator) finds alice's statement by its text, opens the
session's timeline, and replays alice's terminal recording in the page (asciinema-player,
served by the gateway). alice's connections page shows the commands for the connections she
may reach, not for one she may not, and the ssh and psql commands copied from it work. Each page is
saved as a screenshot under build/screenshots/.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from gateway.crypto import SecretBox
from gateway.identity.local import totp
from tests.fixtures.browser import Browser, Page
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.sshd import Sshd, start_sshd
from tests.fixtures.wardgate import LOCAL_PASSWORD, GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

MARKER = "audit_marker_7731"  # a statement the auditor searches for
POLICY = {
    "rules": [
        {
            "name": "no-ddl",
            "effect": "deny",
            "message": "no schema changes through the gateway",
            "match": {"kinds": ["ddl"]},
        }
    ]
}
ROLES = [
    {
        "name": "devs",
        "groups": ["dev"],
        "grants": [
            {"connection": "pg-main", "access": "read-write"},
            {"connection": "web-1", "access": "read-write"},
        ],
    },
    {"name": "auditors", "groups": ["audit"], "admin": True},
]


@dataclass
class Stack:
    gw: GatewayProc
    sshd: Sshd
    tmp: Path
    alice: str  # alice's credential (she uses psycopg and ssh, not the console)
    totp_secrets: dict[str, str]

    def known_hosts(self) -> Path:
        known = self.tmp / "known_hosts"
        pub = (self.gw.data_dir / "ssh_host_ed25519_key.pub").read_text().split()
        known.write_text(f"[127.0.0.1]:{self.gw.public_port} {pub[0]} {pub[1]}\n")
        return known

    def ssh_options(self) -> list[str]:
        return [
            "-F",
            "/dev/null",
            "-o",
            f"UserKnownHostsFile={self.known_hosts()}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-o",
            "LogLevel=ERROR",
        ]

    def ssh_env(self) -> dict[str, str]:
        askpass = self.tmp / "askpass.sh"
        askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$WARDGATE_TEST_SECRET"\n')
        askpass.chmod(0o700)
        return dict(
            os.environ,
            SSH_ASKPASS=str(askpass),
            SSH_ASKPASS_REQUIRE="force",
            DISPLAY=":0",
            WARDGATE_TEST_SECRET=self.alice,
        )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Stack]:
    with postgres_server.connect() as admin:
        admin.execute(sql.SQL("drop database if exists auditapp"))
    db = postgres_server.create_database("auditapp")
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("create table accounts (id int primary key, balance int not null)")
        conn.execute("insert into accounts select g, 100 from generate_series(1, 10) g")
    tmp = tmp_path_factory.mktemp("console-audit")
    sshd = start_sshd(tmp / "sshd")
    wg = Wardgate(tmp)
    try:
        gw = wg.gateway(
            secret_key=SecretBox.generate_key(),
            identity={"local_users": True},
            roles=ROLES,
            policy=POLICY,
        )
        wg.agent(gw, gw.create_agent("default"), wait="default")
        gw.create_connection(**db.connection_spec("pg-main"))
        gw.create_connection(
            name="web-1",
            type="ssh",
            host="127.0.0.1",
            port=sshd.port,
            username=sshd.user,
            private_key=f"file:{sshd.client_key}",
            host_key=sshd.host_fingerprint,
        )
        # No role grants this one: alice must not be shown how to reach it.
        gw.create_connection(name="vault-db", type="tcp", host="127.0.0.1", port=9)
        secrets: dict[str, str] = {}
        with gw.api() as api:
            for name, groups in (("alice", ["dev"]), ("audrey", ["audit"])):
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
        yield Stack(gw, sshd, tmp, signed.json()["token"], secrets)
    finally:
        wg.close()
        with contextlib.suppress(Exception):
            sshd.proc.stop()


def sign_in(page: Page, stack: Stack, user: str) -> None:
    """`user` signed in (the browser's tabs share one cookie: one person at a time)."""
    page.goto(stack.gw.url + "/console/login")
    if not page.url.endswith("/console/login"):  # someone is signed in already
        if page.text("#who") == user:
            return
        page.click(".signout button")
        wait_for(lambda: page.url.endswith("/console/login"), "the sign-in page")
        page.wait_loaded()
    page.fill("#user", user)
    page.fill("#password", LOCAL_PASSWORD)
    page.fill("#code", totp(stack.totp_secrets[user]))
    page.click("#signin")
    wait_for(lambda: page.url.endswith("/console/reviews"), f"{user} signed in")
    page.wait_loaded()
    assert page.text("#who") == user


def csp_reports(page: Page) -> list[str]:
    return [m for m in page.console_messages() if "Content Security Policy" in m]


def alice_runs_statements(stack: Stack) -> None:
    conninfo = (
        f"host=127.0.0.1 port={stack.gw.public_port} dbname=pg-main user=alice "
        f"password={stack.alice} sslmode=verify-full sslrootcert={stack.gw.ca_path}"
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("select count(*) from accounts").fetchone()
        conn.execute(f"select balance /* {MARKER} */ from accounts where id < 4").fetchall()
    refused = pytest.raises(psycopg.Error, match="no schema changes")
    with psycopg.connect(conninfo, autocommit=True) as conn, refused:  # another session
        conn.execute("drop table accounts")


def alice_uses_a_terminal(stack: Stack) -> str:
    """An interactive ssh session (so it is recorded); its session id."""
    import pexpect

    args = [
        "-tt",
        "-p",
        str(stack.gw.public_port),
        *stack.ssh_options(),
        "alice:web-1@127.0.0.1",
    ]
    child = pexpect.spawn("ssh", args, env=stack.ssh_env(), timeout=30, dimensions=(24, 80))
    try:
        child.sendline("echo replayed-$((6*7))")
        child.expect("replayed-42")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    event = wait_for(lambda: stack.gw.audit("ssh.recording"), "the recording event")[-1]
    return str(event["session"])


def test_an_auditor_finds_a_statement_by_its_text_and_reads_the_timeline(
    stack: Stack, browser: Browser
) -> None:
    alice_runs_statements(stack)
    page = browser.new_page()
    sign_in(page, stack, "audrey")
    page.goto(stack.gw.url + "/console/sessions")
    assert "alice" in page.text("#sessions")
    page.fill("#f-text", MARKER)
    page.fill("#f-outcome", "")
    page.click("#f-search")
    wait_for(lambda: f"text={MARKER}" in page.url, "the search to run")
    page.wait_loaded()
    rows = page.evaluate("document.querySelectorAll('#sessions a.session-link').length")
    assert rows == 1, page.text("#sessions")
    assert "pg-main" in page.text("#sessions") and "postgres" in page.text("#sessions")
    page.screenshot("console-sessions-search")
    page.click("#sessions a.session-link")
    wait_for(lambda: "/console/sessions/" in page.url, "the session page")
    page.wait_loaded()
    statements = page.wait_text("#statements", MARKER)
    assert "select count(*) from accounts" in statements
    found = page.evaluate(
        "[...document.querySelectorAll('#statements tbody tr')]"
        f".filter(r => r.innerText.includes({MARKER!r}))"
        ".map(r => [...r.cells].map(c => c.innerText.trim()))[0]"
    )
    assert found[2] == "ok" and found[3] == "3", found  # outcome, rows
    assert page.text("#facts").count("alice") == 1
    page.screenshot("console-session-timeline")
    assert csp_reports(page) == []
    # Text and outcome together: the statement's session had nothing refused.
    page.goto(stack.gw.url + f"/console/sessions?text={MARKER}&outcome=refused")
    assert page.text("#no-sessions") == "No session matches."
    # The refused statement's session, by its outcome.
    page.goto(stack.gw.url + "/console/sessions?protocol=postgres&outcome=refused")
    links = "document.querySelectorAll('#sessions a.session-link').length"
    assert page.evaluate(links) == 1, page.text("#sessions")
    page.click("#sessions a.session-link")
    wait_for(lambda: "/console/sessions/" in page.url, "the refused session's page")
    page.wait_loaded()
    refused = page.text("#statements tr.outcome-refused")
    assert "drop table accounts" in refused and "no schema changes" in refused, refused
    page.screenshot("console-session-refused")


def test_an_ssh_recording_plays_in_the_session_page(stack: Stack, browser: Browser) -> None:
    session_id = alice_uses_a_terminal(stack)
    page = browser.new_page()
    sign_in(page, stack, "audrey")
    page.goto(stack.gw.url + f"/console/sessions/{session_id}")
    assert "shell (pty)" in page.text("#commands")
    wait_for(
        lambda: page.evaluate("!!document.querySelector('#player-0 .ap-player')"),
        "the player to load",
    )
    # Play, as a person would: the player below the tables, scrolled into view first (a
    # click lands at viewport coordinates).
    page.evaluate("document.querySelector('#player-0').scrollIntoView()")
    page.click("#player-0 .ap-overlay-start")
    page.wait_text("#player-0", "replayed-42")
    page.screenshot("console-session-replay")
    assert csp_reports(page) == []
    # The recording itself: served to whoever may see the session, as the API serves it.
    fetched = page.evaluate(
        f"fetch('/console/sessions/{session_id}/recordings/0').then(r => r.text())"
    )
    assert '"version": 2' in fetched.splitlines()[0] or '"version":2' in fetched.splitlines()[0]
    # alice sees her own session; the recording of another user's session would be a 404.
    mine = browser.new_page()
    sign_in(mine, stack, "alice")
    status = mine.evaluate(
        f"fetch('/console/sessions/{session_id}/recordings/0').then(r => r.status)"
    )
    assert status == 200
    missing = "fetch('/console/sessions/s_none/recordings/0').then(r => r.status)"
    assert mine.evaluate(missing) == 404


def test_a_user_sees_the_commands_for_what_they_may_reach(stack: Stack, browser: Browser) -> None:
    page = browser.new_page()
    sign_in(page, stack, "alice")
    page.goto(stack.gw.url + "/console/connections")
    port = stack.gw.public_port
    psql_line = page.evaluate("document.querySelector('#conn-pg-main pre.command').innerText")
    assert psql_line == (
        f'psql "host=127.0.0.1 port={port} dbname=pg-main user=alice sslmode=verify-full '
        'sslrootcert=wardgate-ca.pem"'
    )
    assert "wardgate psql pg-main" in page.text("#conn-pg-main")
    ssh_line = page.evaluate("document.querySelector('#conn-web-1 pre.command').innerText")
    assert ssh_line == f"ssh -p {port} alice:web-1@127.0.0.1"
    assert "vault-db" not in page.text("main")
    page.screenshot("console-connections")
    # The command copied from the page works (the test adds its known_hosts and askpass).
    argv = shlex.split(ssh_line)
    done = subprocess.run(
        [argv[0], *stack.ssh_options(), *argv[1:], "echo", "copied-$((40+2))"],
        env=stack.ssh_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "copied-42"
    # And the psql one, with the CA file the page links to, saved where psql runs.
    ca_url = page.evaluate("document.querySelector('#ca-download').href")
    workdir = stack.tmp / "alice-desk"
    workdir.mkdir(exist_ok=True)
    with stack.gw.api() as api:
        (workdir / "wardgate-ca.pem").write_bytes(api.get(ca_url).raise_for_status().content)
    ran = subprocess.run(
        ["sh", "-c", psql_line + " -X -At -c 'select 40 + 2'"],
        cwd=workdir,
        env=dict(os.environ, PGPASSWORD=stack.alice),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "42"
