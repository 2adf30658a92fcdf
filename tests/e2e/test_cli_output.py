"""What the CLI prints, against a real gateway, agent and sshd: tables with headers for every
list, `-o json` exactly the API's data, `-o yaml`, `audit list --session`, the commands and
file transfers of an SSH session in `sessions show`, and request-only grants in `whoami`."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from gateway.crypto import SecretBox
from tests.e2e.test_ssh import Route, ssh_connection
from tests.fixtures.sshd import Sshd, start_sshd
from tests.fixtures.wardgate import GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

DBA = {"approvers": {"groups": ["dba"]}}
ROLES = [
    {
        "name": "devs",
        "groups": ["dev"],
        "grants": [
            {"connection": "web-1", "access": "read-write"},
            {"connection": "pg-prod", "access": "read-write", "request": DBA},
        ],
    },
    {"name": "dbas", "groups": ["dba"], "grants": [{"connection": "web-1", "access": "admin"}]},
]
MARKER = "printed-by-the-output-test"


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    route: Route
    tokens: dict[str, str]
    ssh_session: str

    def cli(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        out = self.wg.cli(self.gw, *args, token=token)
        assert "Traceback" not in out.stderr, out.stderr
        return out

    def api(self, path: str, **params: Any) -> Any:
        with self.gw.api() as api:
            r = api.get(path, params=params)
            r.raise_for_status()
            return r.json()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cli-output")
    sshd: Sshd = start_sshd(tmp / "sshd")
    wg = Wardgate(tmp)
    try:
        gw = wg.gateway(
            identity={"local_users": True}, roles=ROLES, secret_key=SecretBox.generate_key()
        )
        wg.agent(gw, gw.create_agent("default"), wait="default")
        gw.create_connection(**ssh_connection(sshd))
        gw.create_connection(name="pg-prod", type="postgres", host="127.0.0.1", port=1)
        gw.create_connection(name="nobodys-tcp", type="tcp", host="127.0.0.1", port=9)
        tokens = {
            "alice": gw.local_login("alice", ["dev"]),
            "bob": gw.local_login("bob", ["dba"]),
        }
        route = Route(gw, sshd, tmp)
        # One SSH session: a command, and a file uploaded over scp (sftp mode).
        ran = route.ssh(f"echo {MARKER}; exit 3")
        assert ran.returncode == 3 and ran.stdout == f"{MARKER}\n".encode(), ran.stderr
        src = tmp / "upload.txt"
        src.write_text("a small file\n")
        up = subprocess.run(
            [
                "scp",
                "-q",
                "-P",
                str(gw.public_port),
                "-o",
                f"User={route.user}:{route.connection}",
                *route.options(),
                str(src),
                f"127.0.0.1:{sshd.root / 'uploaded.txt'}",
            ],
            env=route.env(),
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert up.returncode == 0, up.stderr

        def settled() -> list[dict[str, Any]]:
            with gw.api() as api:
                rows = api.get("/v1/sessions").json()
            done = len(rows) == 2 and all(r["status"] != "open" for r in rows)
            exits = [e for e in gw.audit("ssh.exit") if e["data"].get("status") == 3]
            return rows if done and exits and gw.audit("ssh.transfer") else []

        sessions = wait_for(settled, "both SSH sessions to end with their audit events")
        first = min(sessions, key=lambda s: s["started_at"])
        yield Stack(wg, gw, route, tokens, first["id"])
    finally:
        wg.close()
        with contextlib.suppress(Exception):
            sshd.proc.stop()


LISTS: list[tuple[list[str], str, dict[str, Any], list[str]]] = [
    (["connection", "list"], "/v1/connections", {}, ["NAME", "TYPE", "ADDRESS", "AGENT"]),
    (["agent", "list"], "/v1/agents", {}, ["NAME", "POOL", "STATE", "SESSIONS"]),
    (["user", "list"], "/v1/users", {}, ["NAME", "KIND", "ADMIN", "GROUPS", "STATE"]),
    (
        ["sessions", "list"],
        "/v1/sessions",
        {"limit": 50},
        ["ID", "USER", "CONNECTION", "PROTOCOL", "STARTED", "DURATION", "STATUS"],
    ),
    (["credentials", "list"], "/v1/credentials", {}, ["ID", "TYPE", "USER", "HOW"]),
    (["audit", "list"], "/v1/audit", {}, ["SEQ", "TIME", "KIND", "ACTOR", "SESSION", "DATA"]),
    (["reviews", "list"], "/v1/reviews", {"mine": False}, ["ID", "STATUS", "KIND", "REQUESTER"]),
    (["policy", "history"], "/v1/policy/versions", {}, ["VERSION", "APPLIED", "BY", "SHA256"]),
    (["budgets", "usage"], "/v1/budgets/usage", {}, ["DAY", "USER", "CONNECTION", "BUDGET"]),
    (["ssh-keys", "list"], "/v1/ssh-keys", {}, ["ID", "USER", "FINGERPRINT", "ADDED"]),
]


@pytest.mark.parametrize(("command", "path", "params", "headers"), LISTS, ids=lambda v: str(v))
def test_every_list_prints_a_table_with_headers_and_json_and_yaml_are_the_api_data(
    stack: Stack,
    command: list[str],
    path: str,
    params: dict[str, Any],
    headers: list[str],
) -> None:
    table = stack.cli(*command)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[: len(headers)] == headers, table.stdout
    assert "\x1b[" not in table.stdout  # piped: plain text
    as_json = stack.cli(*command, "-o", "json")
    alias = stack.cli(*command, "--json")
    as_yaml = stack.cli(*command, "--output", "yaml")
    expected = stack.api(path, **params)
    assert json.loads(as_json.stdout) == expected
    assert json.loads(alias.stdout) == expected
    assert yaml.safe_load(as_yaml.stdout) == expected


def test_tables_keep_whole_ids_on_one_line_each(stack: Stack) -> None:
    sessions = stack.api("/v1/sessions")
    lines = stack.cli("sessions", "list").stdout.splitlines()
    assert len(lines) == 1 + len(sessions)
    for s, line in zip(sessions, lines[1:], strict=True):
        assert re.match(rf"{re.escape(s['id'])}\s+admin\s+web-1\s+ssh\s", line), line
        assert line.endswith(s["client"])
    audit = stack.cli("audit", "list").stdout.splitlines()
    assert len(audit) == 1 + len(stack.api("/v1/audit"))  # long data does not wrap


def test_audit_list_session_returns_only_that_sessions_events(stack: Stack) -> None:
    sid = stack.ssh_session
    events = json.loads(stack.cli("audit", "list", "--session", sid, "-o", "json").stdout)
    assert events == stack.api("/v1/audit", session=sid)
    assert {e["session"] for e in events} == {sid}
    kinds = {e["kind"] for e in events}
    assert {"session.open", "ssh.exec", "ssh.exit"} <= kinds
    assert "ssh.transfer" not in kinds  # the scp upload was the other session
    everything = stack.api("/v1/audit")
    assert len(everything) > len(events)
    table = stack.cli("audit", "list", "--session", sid).stdout.splitlines()
    assert len(table) == 1 + len(events)
    column = table[0].index("SESSION")
    assert all(line[column:].startswith(sid) for line in table[1:])


def test_sessions_show_of_ssh_sessions_lists_commands_and_transfers(stack: Stack) -> None:
    sid = stack.ssh_session
    shown = stack.cli("sessions", "show", sid)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert re.search(rf"^id:\s+{sid}$", text, re.M)
    assert re.search(r"^protocol:\s+ssh$", text, re.M)
    assert re.search(r"^started:\s+\d+ (s|min) ago \(\d{4}-\d\d-\d\d ", text, re.M), text
    assert "\ncommands:\n" in text
    row = re.search(
        rf"^\s+\d+\s+\d\d:\d\d:\d\d\s+\d+\s+exec\s+3\s+echo {MARKER}; exit 3$", text, re.M
    )
    assert row, text
    data = json.loads(stack.cli("sessions", "show", sid, "-o", "json").stdout)
    assert data == stack.api(f"/v1/sessions/{sid}")
    assert [(c["request"], c["command"], c["exit_status"]) for c in data["commands"]] == [
        ("exec", f"echo {MARKER}; exit 3", 3)
    ]
    assert data["statements"] == [] and data["transfers"] == []
    assert yaml.safe_load(stack.cli("sessions", "show", sid, "-o", "yaml").stdout) == data

    other = next(s["id"] for s in stack.api("/v1/sessions") if s["id"] != sid)
    scp = stack.cli("sessions", "show", other).stdout
    assert "\nfile transfers:\n" in scp, scp
    path = str(stack.route.sshd.root / "uploaded.txt")
    assert re.search(
        rf"^\s+\d+\s.*\supload\s+13 B\s+[0-9a-f]{{64}}\s+{re.escape(path)}$", scp, re.M
    )
    transfers = stack.api(f"/v1/sessions/{other}")["transfers"]
    assert [(t["op"], t["path"], t["bytes"]) for t in transfers] == [("upload", path, 13)]


def test_show_commands_print_labels_and_take_o_json(stack: Stack) -> None:
    shown = stack.cli("connection", "show", "web-1")
    assert re.search(r"^type:\s+ssh$", shown.stdout, re.M), shown.stdout
    assert re.search(r"^updated:\s+\d+ (s|min) ago \(", shown.stdout, re.M)
    data = json.loads(stack.cli("connection", "show", "web-1", "-o", "json").stdout)
    assert data == stack.api("/v1/connections/web-1")
    policy = json.loads(stack.cli("policy", "show", "-o", "json").stdout)
    assert policy == stack.api("/v1/policy")


def test_whoami_marks_a_grant_that_needs_an_access_request(stack: Stack) -> None:
    alice = stack.tokens["alice"]
    who = stack.cli("whoami", token=alice)
    assert who.returncode == 0, who.stderr
    assert re.search(r"^user:\s+alice \(person\)$", who.stdout, re.M)
    assert re.search(r"^\s+web-1\s+read-write\s+granted$", who.stdout, re.M), who.stdout
    needs = r"needs an approved request: wardgate request pg-prod --for 1h --reason \.\.\."
    assert re.search(rf"^\s+pg-prod\s+read-write\s+{needs}$", who.stdout, re.M), who.stdout
    data = json.loads(stack.cli("whoami", "-o", "json", token=alice).stdout)
    grants = {g["connection"]: g for g in data["grants"]}
    assert grants["web-1"]["on_request"] is False
    assert grants["pg-prod"]["on_request"] is True and grants["pg-prod"]["approved"] == []

    asked = stack.cli(
        "request", "pg-prod", "--for", "2h", "--reason", "incident", "--json", token=alice
    )
    assert asked.returncode == 0, asked.stderr
    review = json.loads(asked.stdout)["id"]
    ok = stack.cli("reviews", "approve", review, token=stack.tokens["bob"])
    assert ok.returncode == 0, ok.stderr
    approved = stack.cli("whoami", token=alice).stdout
    assert re.search(
        r"^\s+pg-prod\s+read-write\s+approved request for pg-prod until in (1|2) h$", approved, re.M
    ), approved
    listed = stack.cli("reviews", "list", token=alice).stdout
    assert re.search(rf"^{review}\s+approved\s+access\s+alice\s+pg-prod\s", listed, re.M), listed
    assert "read-write for 2 h: incident" in listed


def test_people_see_only_the_connections_they_may_reach_and_not_where_they_lead(
    stack: Stack,
) -> None:
    alice = stack.tokens["alice"]
    listed = json.loads(stack.cli("connection", "list", "-o", "json", token=alice).stdout)
    by_name = {c["name"]: c for c in listed}
    assert set(by_name) == {"pg-prod", "web-1"}  # not nobodys-tcp, granted to nobody
    assert by_name["web-1"] == {
        "name": "web-1",
        "type": "ssh",
        "access": "read-write",
        "on_request": False,
    }
    # pg-prod is granted on request (approved or not, depending on what ran before)
    assert set(by_name["pg-prod"]) == {"name", "type", "access", "on_request"}
    table = stack.cli("connection", "list", token=alice).stdout
    assert "(hidden)" in table and "127.0.0.1" not in table and "nobodys-tcp" not in table
    hidden = stack.cli("connection", "show", "nobodys-tcp", token=alice)
    assert hidden.returncode == 1 and "connection 'nobodys-tcp' does not exist" in hidden.stderr
    shown = stack.cli("connection", "show", "web-1", token=alice).stdout
    assert "access: read-write" in " ".join(shown.split()) and "127.0.0.1" not in shown
    every = json.loads(stack.cli("connection", "list", "-o", "json").stdout)  # the admin
    assert {"nobodys-tcp", "pg-prod", "web-1"} <= {c["name"] for c in every}
    assert all("host" in c and "port" in c for c in every)
