"""The Operator pages and a session's export, in a real headless Chromium against real gateway
and agent processes (the stack of test_console_audit.py: audrey is an administrator).

audrey ends a live psycopg session from the Operator page and the client is told why; she
compares two policy versions and rolls back to the older one; she exports an SSH session with
its recording, and `wardgate audit verify-export` passes the file and fails it once one byte
of an event or of the recording is changed. Each page is saved under build/screenshots/.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.test_console_audit import Stack, alice_uses_a_terminal, sign_in, stack
from tests.fixtures.browser import Browser
from tests.fixtures.postgres import closed_by_gateway, notices_of
from tests.fixtures.wardgate import WARDGATE, wait_for

pytestmark = pytest.mark.e2e
__all__ = ["stack"]  # the module's fixture, shared with test_console_audit.py


def _policy(stack: Stack, path: str = "/v1/policy") -> dict[str, Any]:
    with stack.gw.api() as api:
        r = api.get(path)
        r.raise_for_status()
        return dict(r.json())


def test_an_operator_terminates_a_live_session_and_the_client_is_told(
    stack: Stack, browser: Browser
) -> None:
    conn = psycopg.connect(stack.gw.pg_conninfo("pg-main"), autocommit=True)
    notices = notices_of(conn)
    try:
        conn.execute("select 'operator-live'")
        [event] = [
            e for e in stack.gw.audit("pg.statement") if "operator-live" in e["data"]["text"]
        ]
        session_id = str(event["session"])
        page = browser.new_page()
        sign_in(page, stack, "audrey")
        page.goto(stack.gw.url + "/console/operator")
        assert "connected" in page.text("#agents")
        assert "1 of 1" in page.text("#pools")
        assert "live" in page.text("#members")
        assert "audrey" in page.text("#users")
        assert session_id in page.text("#live")
        page.fill(f"#live-{session_id} input[name=reason]", "console test")
        page.screenshot("console-operator")
        page.click(f"#terminate-{session_id}")
        page.wait_text("#notice", f"Session {session_id} ended")
        page.screenshot("console-operator-terminated")
        assert session_id not in page.text("#live")
        wait_for(lambda: closed_by_gateway(conn), "the client to see the termination")
    finally:
        conn.close()
    said = "terminated by an administrator: console test"
    assert notices == [("08006", f"connection 'pg-main': session ended: {said}")]
    [ended] = [e for e in stack.gw.audit("session.terminated") if e["session"] == session_id]
    assert ended["data"]["by"] == "audrey"
    # The same session again: the Terminator's refusal, in words.
    posted = page.evaluate(
        f"fetch('/console/operator/sessions/{session_id}/terminate', {{method: 'POST',"
        f" headers: {{'X-CSRF-Token': JSON.parse(document.body.getAttribute('hx-headers'))"
        f"['X-CSRF-Token']}}}}).then(r => r.status)"
    )
    assert posted == 409
    # Without the CSRF token: refused, nothing ended.
    bare = f"fetch('/console/operator/sessions/{session_id}/terminate', {{method: 'POST'}})"
    assert page.evaluate(bare + ".then(r => r.status)") == 403


def test_a_non_admin_gets_no_operator_pages(stack: Stack, browser: Browser) -> None:
    page = browser.new_page()
    sign_in(page, stack, "alice")
    assert "Operator" not in page.text("header nav")
    for path in ("/console/operator", "/console/policy"):
        page.goto(stack.gw.url + path)
        assert page.text("#error") == "user 'alice' is not an administrator"
    token = "JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']"
    status = page.evaluate(
        f"fetch('/console/policy/versions/1/rollback', {{method: 'POST',"
        f" headers: {{'X-CSRF-Token': {token}}}}}).then(r => r.status)"
    )
    assert status == 403


def test_a_policy_diff_shows_the_change_and_a_rollback_restores_the_old_version(
    stack: Stack, browser: Browser
) -> None:
    first = _policy(stack)
    changed = json.loads(json.dumps(first["policy"]))
    changed["rules"][0]["message"] = "no DDL here, ask the DBA team"
    with stack.gw.api() as api:
        r = api.put("/v1/policy", json={"policy": changed, "comment": "reworded"})
        assert r.status_code == 200, r.text
    second = _policy(stack)
    old, new = first["version"], second["version"]
    assert new == old + 1
    page = browser.new_page()
    sign_in(page, stack, "audrey")
    page.goto(stack.gw.url + f"/console/policy?a={old}&b={new}")
    diff = page.text("#diff")
    assert '-      "message": "no schema changes through the gateway",' in diff
    assert '+      "message": "no DDL here, ask the DBA team",' in diff
    page.screenshot("console-policy-diff")
    page.click(f"#rollback-{old}")
    page.wait_text("#notice", f"Rolled back to version {old}: now version {new + 1}.")
    page.screenshot("console-policy-rollback")
    now = _policy(stack)
    assert now["version"] == new + 1
    assert now["sha256"] == first["sha256"]
    assert now["policy"] == first["policy"]
    [applied] = [e for e in stack.gw.audit("policy.applied") if e["data"].get("version") == new + 1]
    assert applied["actor"] == "audrey"


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WARDGATE, "audit", "verify-export", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_session_export_verifies_offline_and_fails_once_altered(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    session_id = alice_uses_a_terminal(stack)
    page = browser.new_page()
    sign_in(page, stack, "audrey")
    page.goto(stack.gw.url + f"/console/sessions/{session_id}")
    assert "match their chain hashes" in page.text("#chain")
    page.screenshot("console-session-chain")
    fetched = page.evaluate(
        "fetch(document.querySelector('#export').href).then(async r =>"
        " [r.status, r.headers.get('content-disposition'), await r.text()])"
    )
    status, disposition, text = fetched
    assert status == 200
    assert disposition == f'attachment; filename="wardgate-session-{session_id}.json"'
    exported = tmp_path / "export.json"
    exported.write_bytes(text.encode())
    done = _verify(exported)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("session export intact: ")
    assert "1 recordings checked" in done.stdout
    doc = json.loads(text)
    assert b"replayed-42" in base64.b64decode(doc["recordings"][0]["data"])

    # One byte of an event: its hash no longer matches.
    raw = exported.read_bytes()
    at = raw.index(b'"actor": "alice"') + len(b'"actor": "alic')
    edited = tmp_path / "edited-event.json"
    edited.write_bytes(raw[:at] + b"f" + raw[at + 1 :])
    done = _verify(edited)
    assert done.returncode == 1
    assert "was edited (its hash does not match its content)" in done.stderr

    # One byte of the recording: it no longer matches the SHA-256 its event holds.
    data = bytearray(base64.b64decode(doc["recordings"][0]["data"]))
    data[data.index(b"replayed-42")] ^= 0x01
    doc["recordings"][0]["data"] = base64.b64encode(bytes(data)).decode()
    altered = tmp_path / "edited-recording.json"
    altered.write_text(json.dumps(doc))
    done = _verify(altered)
    assert done.returncode == 1
    assert "recording of channel 0 was edited" in done.stderr
