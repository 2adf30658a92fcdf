"""SSH exec held for approval: OpenSSH ssh -> gateway -> agent -> a real OpenSSH sshd.

alice (dev) runs commands on web-1; bob (ops) approves them with the real CLI. A command
matching `ssh_review_exec` waits in the still-connected ssh client, which is told the review
id on stderr at once; approved, it runs and its output and exit code reach that client;
denied or timed out, it gets exit status 126 and nothing runs on the target.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.crypto import SecretBox
from tests.e2e.test_ssh import Route, ssh_connection
from tests.fixtures.sshd import Sshd, start_sshd
from tests.fixtures.wardgate import GatewayProc, Wardgate, wait_for

pytestmark = pytest.mark.e2e

REVIEW_ID = re.compile(r"rv_[0-9a-f]{12}")
OPS = "{approvers: {groups: [ops]}, timeout: 120}"
ROLES = [
    {
        "name": name,
        "groups": [group],
        "grants": [
            {"connection": "web-*", "access": "read-write"},
            # Access requests: held only through an approved `wardgate request`.
            {
                "connection": "vault-*",
                "access": "read-write",
                "request": {"approvers": {"groups": ["ops"]}},
            },
        ],
    }
    for name, group in (("devs", "dev"), ("ops", "ops"))
]


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    sshd: Sshd
    tokens: dict[str, str]

    def route(self, tmp: Path, connection: str = "web-1") -> Route:
        return Route(
            self.gw,
            self.sshd,
            tmp,
            connection=connection,
            user="alice",
            credential=self.tokens["alice"],
        )

    def cli(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.wg.cli(self.gw, *args, token=self.tokens[user])

    def review(self, review_id: str) -> dict[str, Any]:
        with self.gw.api(self.tokens["bob"]) as api:
            r = api.get(f"/v1/reviews/{review_id}")
            r.raise_for_status()
            data: dict[str, Any] = r.json()
        return data


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sshd = start_sshd(tmp_path_factory.mktemp("sshd"))
    wg = Wardgate(tmp_path_factory.mktemp("sshreviews"))
    try:
        gw = wg.gateway(
            secret_key=SecretBox.generate_key(),
            identity={"local_users": True},
            roles=ROLES,
            reviews={"poll_interval": 0.5},
        )
        wg.agent(gw, gw.create_agent("default"), wait="default")
        options = {
            "ssh_deny_exec": "touch */denied-*",
            "ssh_review_exec": "touch *",
            "ssh_review": OPS,
        }
        gw.create_connection(**ssh_connection(sshd, "web-1", options=options))
        quick = {**options, "ssh_review": "{approvers: {groups: [ops]}, timeout: 1}"}
        gw.create_connection(**ssh_connection(sshd, "web-2", options=quick))
        gw.create_connection(**ssh_connection(sshd, "vault-1"))
        gw.create_connection(**ssh_connection(sshd, "nobodys-1"))  # granted to no role
        tokens = {
            name: gw.local_login(name, [group])
            for name, group in (("alice", "dev"), ("bob", "ops"))
        }
        yield Stack(wg, gw, sshd, tokens)
    finally:
        wg.close()
        sshd.proc.stop()


class Held:
    """An ssh client whose command is held: its stderr in a file, watched for the notice."""

    def __init__(
        self,
        route: Route,
        command: str,
        tmp: Path,
        *,
        extra: tuple[str, ...] = (),
        stdin: bytes | None = None,
    ) -> None:
        self.err = tmp / "ssh.err"
        source = tmp / "ssh.in"  # sent while the command waits: held back, not lost
        source.write_bytes(stdin or b"")
        with self.err.open("wb") as stderr, source.open("rb") as given:
            self.proc = subprocess.Popen(
                [
                    "ssh",
                    "-p",
                    str(route.gw.public_port),
                    *route.options(),
                    *extra,
                    route.destination,
                    command,
                ],
                env=route.env(),
                stdin=given,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        found = wait_for(lambda: REVIEW_ID.search(self.err.read_text()), "the review notice")
        self.id = found.group(0)

    def hang_up(self) -> None:
        """The client goes away while it waits."""
        self.proc.kill()
        self.proc.communicate(timeout=30)

    def finish(self) -> tuple[int, bytes, str]:
        try:
            out, _ = self.proc.communicate(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, out, self.err.read_text()


def test_approved_exec_runs_in_the_waiting_ssh_with_its_output_and_exit_code(
    stack: Stack, tmp_path: Path
) -> None:
    marker = stack.sshd.root / "approved-marker"
    route = stack.route(tmp_path)
    # A control master, so a second command can share the held one's SSH connection.
    control = ("-o", "ControlMaster=yes", "-o", f"ControlPath={tmp_path / 'cm'}")
    held = Held(
        route,
        f"touch {marker} && cat && echo ran-$((6*7)) && echo err-1 >&2; exit 7",
        tmp_path,
        extra=control,
        stdin=b"typed-while-held\n",
    )
    text = held.err.read_text()
    assert f"wardgate reviews approve {held.id}" in text
    assert "command needs approval (pattern 'touch *')" in text
    assert held.proc.poll() is None and not marker.exists()
    # Waiting holds only that channel: a second channel on the same SSH connection and
    # another session of alice's run meanwhile.
    shared = subprocess.run(
        [
            "ssh",
            "-p",
            str(stack.gw.public_port),
            *route.options(),
            "-o",
            "ControlMaster=no",
            "-o",
            f"ControlPath={tmp_path / 'cm'}",
            route.destination,
            "echo shared-connection",
        ],
        env=route.env(),
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    # The exit code too: a multiplexed client loses it if EOF reaches it before the status.
    assert (shared.returncode, shared.stdout) == (0, b"shared-connection\n"), shared.stderr
    session = stack.review(held.id)["session_id"]
    ran = [
        e for e in stack.gw.audit("ssh.exec") if e["data"]["command"] == "echo shared-connection"
    ]
    assert [e["session"] for e in ran] == [session]  # the held command's connection
    other = route.ssh("echo meanwhile")
    assert (other.returncode, other.stdout) == (0, b"meanwhile\n"), other.stderr
    shown = stack.cli("bob", "reviews", "show", held.id)
    assert re.search(rf"^command:\s+touch {re.escape(str(marker))} ", shown.stdout, re.M), shown
    approved = stack.cli("bob", "reviews", "approve", held.id, "--reason", "go")
    assert approved.returncode == 0, approved.stderr
    status, out, err = held.finish()
    assert status == 7, err
    assert out == b"typed-while-held\nran-42\n"
    assert err.endswith("err-1\n")
    assert marker.exists()
    execs = [e for e in stack.gw.audit("ssh.exec") if e["data"].get("review") == held.id]
    assert [e["data"]["command"] for e in execs] == [stack.review(held.id)["text"]]
    kinds = [e["kind"] for e in stack.gw.audit() if e["data"].get("review") == held.id]
    assert kinds == ["review.created", "review.vote", "review.approved", "ssh.exec"]


def test_denied_exec_gets_126_and_nothing_runs(stack: Stack, tmp_path: Path) -> None:
    marker = stack.sshd.root / "bob-said-no-marker"
    held = Held(stack.route(tmp_path), f"touch {marker}; echo ran", tmp_path)
    denied = stack.cli("bob", "reviews", "deny", held.id, "--reason", "not today")
    assert denied.returncode == 0, denied.stderr
    status, out, err = held.finish()
    assert status == 126
    assert out == b""
    assert f"review {held.id} was denied" in err and "command not run" in err, err
    assert "not today" in err
    assert not marker.exists()
    refused = [e for e in stack.gw.audit("ssh.refused") if e["data"].get("review") == held.id]
    assert refused and refused[0]["data"]["rules"] == ["ssh_review_exec:touch *"]


def test_self_approval_is_refused_and_a_hang_up_cancels_the_review(
    stack: Stack, tmp_path: Path
) -> None:
    marker = stack.sshd.root / "self-approved-marker"
    held = Held(stack.route(tmp_path), f"touch {marker}", tmp_path)
    mine = stack.cli("alice", "reviews", "approve", held.id)
    assert mine.returncode != 0
    assert "nobody reviews their own request" in mine.stdout + mine.stderr
    assert stack.review(held.id)["status"] == "pending"
    held.hang_up()
    review = wait_for(
        lambda: (r := stack.review(held.id))["status"] != "pending" and r, "the review to end"
    )
    assert review["status"] == "cancelled"
    assert "client went away" in review["decision"]
    assert not marker.exists()


def test_deny_wins_over_review_and_an_unanswered_review_times_out(
    stack: Stack, tmp_path: Path
) -> None:
    route = stack.route(tmp_path)
    marker = stack.sshd.root / "denied-outright"
    out = route.ssh(f"touch {marker}")
    assert out.returncode == 126
    assert b"command refused by pattern 'touch */denied-*'" in out.stderr
    assert not REVIEW_ID.search(out.stderr.decode())
    marker = stack.sshd.root / "timed-out-marker"
    held = Held(stack.route(tmp_path, "web-2"), f"touch {marker}", tmp_path)
    status, _, err = held.finish()
    assert status == 126
    assert f"review {held.id} timed out" in err, err
    assert not marker.exists()


def test_approved_exec_with_a_terminal_is_recorded(stack: Stack, tmp_path: Path) -> None:
    marker = stack.sshd.root / "pty-marker"
    held = Held(stack.route(tmp_path), f"touch {marker} && echo pty-ok", tmp_path, extra=("-tt",))
    approved = stack.cli("bob", "reviews", "approve", held.id)
    assert approved.returncode == 0, approved.stderr
    status, out, err = held.finish()
    assert status == 0, err
    assert b"pty-ok" in out
    assert marker.exists()
    text = stack.review(held.id)["text"]
    recording = wait_for(
        lambda: [e for e in stack.gw.audit("ssh.recording") if e["data"]["command"] == text],
        "the terminal recording",
    )
    assert recording[0]["data"]["format"] == "asciicast-v2"


def test_a_refused_ssh_session_says_what_to_do(stack: Stack, tmp_path: Path) -> None:
    on_request = stack.route(tmp_path, "vault-1").ssh("true")
    assert on_request.returncode == 1, on_request.stderr
    assert on_request.stderr == (
        b"wardgate: user 'alice' needs an approved access request for 'vault-1': "
        b'wardgate request vault-1 --for 1h --reason "..."\r\n'
    )
    no_grant = stack.route(tmp_path, "nobodys-1").ssh("true")
    assert no_grant.returncode == 1, no_grant.stderr
    assert no_grant.stderr == (
        b"wardgate: user 'alice' has no access to connection 'nobodys-1'\r\n"
        b"wardgate: `wardgate whoami` lists the connections you may use.\r\n"
    )
