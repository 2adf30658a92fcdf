"""SSH end to end: OpenSSH ssh/scp/sftp -> gateway -> agent -> a real OpenSSH sshd.

The ssh client types the Wardgate credential as its password through SSH_ASKPASS (no
terminal needed); the gateway's host key is pinned in a known_hosts file the test writes
from the gateway's data directory, so StrictHostKeyChecking stays on.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.sshd import Sshd, keygen
from tests.fixtures.wardgate import (
    ADMIN_TOKEN,
    WARDGATE,
    GatewayProc,
    Proc,
    Wardgate,
    free_port,
    port_open,
    wait_for,
)

pytestmark = pytest.mark.e2e


@dataclass
class Route:
    """How the test's OpenSSH clients reach a connection through the gateway."""

    gw: GatewayProc
    sshd: Sshd
    tmp: Path
    connection: str = "web-1"
    user: str = "admin"
    credential: str = ADMIN_TOKEN
    agent: Proc | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}:{self.connection}@127.0.0.1"

    def options(self) -> list[str]:
        known = self.tmp / "known_hosts"
        pub = (self.gw.data_dir / "ssh_host_ed25519_key.pub").read_text().split()
        known.write_text(f"[127.0.0.1]:{self.gw.public_port} {pub[0]} {pub[1]}\n")
        return [
            "-F",
            "/dev/null",
            "-o",
            f"UserKnownHostsFile={known}",
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

    def env(self) -> dict[str, str]:
        askpass = self.tmp / "askpass.sh"
        askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$WARDGATE_TEST_SECRET"\n')
        askpass.chmod(0o700)
        env = dict(os.environ)
        env.update(
            SSH_ASKPASS=str(askpass),
            SSH_ASKPASS_REQUIRE="force",
            DISPLAY=":0",
            WARDGATE_TEST_SECRET=self.credential,
        )
        return env

    def ssh(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["ssh", "-p", str(self.gw.public_port), *self.options(), self.destination, *args],
            env=self.env(),
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )


def ssh_connection(sshd: Sshd, name: str = "web-1", **extra: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "name": name,
        "type": "ssh",
        "host": "127.0.0.1",
        "port": sshd.port,
        "username": sshd.user,
        "private_key": f"file:{sshd.client_key}",
        "host_key": sshd.host_fingerprint,
    }
    spec.update(extra)
    return spec


@pytest.fixture
def route(wardgate: Wardgate, sshd: Sshd, tmp_path: Path) -> Iterator[Route]:
    gw = wardgate.gateway()
    agent = wardgate.agent(gw, gw.create_agent("default"), wait="default")
    gw.create_connection(**ssh_connection(sshd))
    yield Route(gw, sshd, tmp_path, agent=agent)
    # pytest keeps the last runs' tmp directories: not with 200 MB files in them.
    for big in [*tmp_path.glob("*.bin"), *sshd.root.glob("*.bin")]:
        big.unlink()


def test_exec_keeps_stdout_stderr_and_exit_codes(route: Route) -> None:
    out = route.ssh("echo out-$((6*7)); echo err-1 >&2; exit 3")
    assert out.returncode == 3, out.stderr
    assert out.stdout == b"out-42\n"
    assert out.stderr == b"err-1\n"
    assert route.ssh("true").returncode == 0
    events = route.gw.audit("ssh.exec")
    assert any(e["data"]["command"].startswith("echo out-") for e in events)
    exits = route.gw.audit("ssh.exit")
    assert {e["data"]["status"] for e in exits} >= {3, 0}

    def ended() -> list[dict[str, object]]:
        with route.gw.api() as api:
            rows = api.get("/v1/sessions").json()
        return rows if all(r["status"] != "open" for r in rows) else []

    sessions = wait_for(ended, "both sessions to end")
    assert [(s["protocol"], s["status"], s["error"]) for s in sessions] == [
        ("ssh", "closed", None)
    ] * 2


def test_wrong_password_is_refused(route: Route) -> None:
    route.credential = "wgt_not-a-real-credential"
    out = route.ssh("true")
    assert out.returncode == 255
    assert b"Permission denied" in out.stderr
    assert any("auth" in e["data"]["reason"] for e in route.gw.audit("ssh.refused"))
    # Guessing on one connection ends it.
    guess = subprocess.run(
        [
            "ssh",
            "-p",
            str(route.gw.public_port),
            "-o",
            "NumberOfPasswordPrompts=50",
            *route.options(),
            route.destination,
            "true",
        ],
        env=route.env(),
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert guess.returncode == 255
    # paramiko disconnects after ten failed attempts on one connection.
    attempts = [e for e in route.gw.audit("ssh.refused") if e["data"].get("user") == "admin"]
    assert 1 < len(attempts) <= 1 + 10


def test_unknown_connection_is_refused_with_a_clear_message(route: Route) -> None:
    route.connection = "nope"
    out = route.ssh("true")
    assert out.returncode == 1
    assert out.stderr == (
        b"wardgate: connection 'nope' does not exist\r\n"
        b"wardgate: `wardgate whoami` lists the connections you may use.\r\n"
    )


@pytest.mark.parametrize("login", ["admin@", ""], ids=["user-only", "no-user"])
def test_a_login_name_without_a_connection_is_told_how_to_name_one(
    route: Route, login: str
) -> None:
    # `ssh alice@gw` and `ssh gw` (the local user's name): refused before any credential is
    # asked for, with the hint in a userauth banner (shown at ssh's default log level).
    out = subprocess.run(
        [
            "ssh",
            "-p",
            str(route.gw.public_port),
            "-o",
            "LogLevel=INFO",  # ssh keeps an option's first value: before route.options()
            *route.options(),
            f"{login}127.0.0.1",
            "true",
        ],
        env=route.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 255, out.stderr
    user = "admin" if login else pwd.getpwuid(os.getuid()).pw_name
    assert "wardgate: the login name must name the target as USER:CONNECTION" in out.stderr
    assert f"ssh -p PORT {user}:CONNECTION@HOST   (or: wardgate ssh CONNECTION)" in out.stderr
    assert "Permission denied (publickey)" in out.stderr  # no credential was asked for
    assert "web-1" not in out.stderr  # nothing said about which connections exist

    def refused() -> list[dict[str, Any]]:
        return [
            e
            for e in route.gw.audit("ssh.refused")
            if "does not name a connection" in e["data"]["reason"]
        ]

    assert len(wait_for(refused, "the refusal to be audited")) == 1
    assert not [e for e in route.gw.audit("ssh.refused") if "auth" in e["data"]["reason"]]


def test_changed_host_key_is_refused(route: Route) -> None:
    assert route.ssh("true").returncode == 0
    route.sshd.regenerate_host_key()
    out = route.ssh("true")
    assert out.returncode == 1
    assert b"host key verification failed" in out.stderr
    assert b"not the pinned host key" in out.stderr


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_interactive_shell_with_pty_resize_and_exit_status(route: Route) -> None:
    import pexpect

    args = ["-tt", "-p", str(route.gw.public_port), *route.options(), route.destination]
    child = pexpect.spawn("ssh", args, env=route.env(), timeout=30, dimensions=(24, 80))
    try:
        child.sendline("stty size; echo term=$TERM; echo marker-$((40+2))")
        child.expect("marker-42")
        assert b"24 80" in child.before
        child.setwinsize(40, 120)  # SIGWINCH -> window-change -> the target's pty
        child.sendline("stty size; echo resized-$((1+1))")
        child.expect("resized-2")
        assert b"40 120" in child.before
        child.sendline("exit 7")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 7
    shells = route.gw.audit("ssh.shell")
    assert shells and shells[-1]["data"]["pty"] is True


def test_recording_replays_what_the_session_printed(route: Route, wardgate: Wardgate) -> None:
    import pexpect

    args = ["-tt", "-p", str(route.gw.public_port), *route.options(), route.destination]
    child = pexpect.spawn("ssh", args, env=route.env(), timeout=30, dimensions=(30, 100))
    try:
        child.sendline("echo recorded-$((6*7))")
        child.expect("recorded-42")
        child.setwinsize(33, 101)
        child.sendline("stty size")  # the resize has reached the target (and the record)
        child.expect("33 101")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    event = wait_for(lambda: route.gw.audit("ssh.recording"), "the recording event")[-1]
    session_id = event["session"]
    replayed = wardgate.cli(route.gw, "sessions", "replay", session_id, "--speed", "1000")
    assert replayed.returncode == 0, replayed.stderr
    assert "recorded-42" in replayed.stdout
    export = route.tmp / "s.cast"
    done = wardgate.cli(route.gw, "sessions", "replay", session_id, "--export", str(export))
    assert done.returncode == 0, done.stderr
    lines = export.read_text().splitlines()
    header = json.loads(lines[0])
    assert (header["version"], header["width"], header["height"]) == (2, 100, 30)
    events = [json.loads(line) for line in lines[1:]]
    codes = {e[1] for e in events}
    assert {"o", "i", "r"} <= codes
    assert ["r", "101x33"] in [e[1:] for e in events]
    typed = "".join(e[2] for e in events if e[1] == "i")
    assert "echo recorded-$((6*7))" in typed
    assert hashlib.sha256(export.read_bytes()).hexdigest() == event["data"]["sha256"]


def _scp_args(route: Route, legacy: bool) -> list[str]:
    # scp reads "user:conn@host:path" as host "user"; the user name goes in -o User=.
    return [
        "scp",
        *(["-O"] if legacy else []),
        "-q",
        "-P",
        str(route.gw.public_port),
        "-o",
        f"User={route.user}:{route.connection}",
    ]


@pytest.mark.parametrize("legacy", [False, True], ids=["scp-sftp-mode", "scp-legacy"])
def test_scp_both_ways_keeps_the_bytes(route: Route, legacy: bool) -> None:
    size = int(os.environ.get("WARDGATE_TEST_SSH_BYTES", 200 * 1000 * 1000))
    src = route.tmp / "up.bin"
    with src.open("wb") as fh:
        fh.write(os.urandom(size))
    remote = route.sshd.root / f"remote-{legacy}.bin"
    back = route.tmp / "down.bin"
    target = "127.0.0.1"
    up = subprocess.run(
        [*_scp_args(route, legacy), *route.options(), str(src), f"{target}:{remote}"],
        env=route.env(),
        capture_output=True,
        timeout=280,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    assert sha256(remote) == sha256(src)
    down = subprocess.run(
        [*_scp_args(route, legacy), *route.options(), f"{target}:{remote}", str(back)],
        env=route.env(),
        capture_output=True,
        timeout=280,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert sha256(back) == sha256(src)
    transfers = wait_for(
        lambda: len(route.gw.audit("ssh.transfer")) >= 2 and route.gw.audit("ssh.transfer"),
        "transfer events",
    )
    seen = {(e["data"]["direction"], e["data"]["sha256"]) for e in transfers}
    assert seen == {("upload", sha256(src)), ("download", sha256(src))}
    if legacy:
        commands = [e["data"]["command"] for e in route.gw.audit("ssh.exec")]
        assert any(c.startswith("scp -t") for c in commands)
        assert any(c.startswith("scp -f") for c in commands)
    else:
        assert len(route.gw.audit("ssh.subsystem")) >= 2


def test_sftp_both_ways_keeps_the_bytes(route: Route) -> None:
    size = int(os.environ.get("WARDGATE_TEST_SSH_BYTES", 200 * 1000 * 1000))
    src = route.tmp / "sftp-up.bin"
    with src.open("wb") as fh:
        fh.write(os.urandom(size))
    remote = route.sshd.root / "sftp-remote.bin"
    back = route.tmp / "sftp-down.bin"
    batch = route.tmp / "batch"
    batch.write_text(f"put {src} {remote}\nget {remote} {back}\nls -l {remote}\n")
    out = subprocess.run(
        [
            "sftp",
            "-q",
            "-o",
            "BatchMode=no",  # before -b, which would turn the password prompt off
            "-b",
            str(batch),
            "-P",
            str(route.gw.public_port),
            "-o",
            f"User={route.user}:{route.connection}",
            *route.options(),
            "127.0.0.1",
        ],
        env=route.env(),
        capture_output=True,
        timeout=280,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert sha256(remote) == sha256(src)
    assert sha256(back) == sha256(src)
    assert route.gw.audit("ssh.subsystem")[-1]["data"]["name"] == "sftp"
    transfers = wait_for(
        lambda: len(route.gw.audit("ssh.transfer")) >= 2 and route.gw.audit("ssh.transfer"),
        "transfer events",
    )
    seen = {(e["data"]["direction"], e["data"]["path"], e["data"]["sha256"]) for e in transfers}
    assert ("upload", str(remote), sha256(src)) in seen
    assert ("download", str(remote), sha256(src)) in seen
    sizes = {e["data"]["uploaded"] + e["data"]["downloaded"] for e in transfers}
    assert sizes == {size}


def test_forbidden_exec_and_channel_kinds_are_refused(route: Route) -> None:
    options = {"ssh_deny_exec": "rm -rf *\nshutdown*", "ssh_sftp": "none"}
    route.gw.create_connection(**ssh_connection(route.sshd, "web-2", options=options))
    route.connection = "web-2"
    out = route.ssh("echo hi && rm  -rf /tmp/wardgate-nothing-here")
    assert out.returncode == 126
    assert b"command refused by pattern 'rm -rf *'" in out.stderr
    assert out.stdout == b""  # nothing of it ran
    assert route.ssh("echo allowed").stdout == b"allowed\n"
    refused = route.gw.audit("ssh.refused")[-1]["data"]
    assert refused["rules"] == ["ssh_deny_exec:rm -rf *"]
    sftp = subprocess.run(
        [
            "sftp",
            "-P",
            str(route.gw.public_port),
            "-o",
            "User=admin:web-2",
            *route.options(),
            "127.0.0.1",
        ],
        env=route.env(),
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert sftp.returncode != 0
    assert b"sftp is not allowed on this connection" in sftp.stderr


def _forward(route: Route) -> tuple[subprocess.Popen[bytes], int]:
    local = free_port()
    proc = subprocess.Popen(
        [
            "ssh",
            "-N",
            "-L",
            f"127.0.0.1:{local}:127.0.0.1:{route.sshd.port}",
            "-p",
            str(route.gw.public_port),
            *route.options(),
            route.destination,
        ],
        env=route.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: port_open(local), "ssh -L to listen")
    return proc, local


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # Not SIGTERM: OpenSSH 9.2 checks for it and then poll()s with no timeout, so
    # one landing in between is lost and ssh waits forever (9.4 moved to ppoll).
    proc.kill()
    proc.wait(10)


def _banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        return s.recv(64)


def test_local_forwarding_only_where_allowed(route: Route) -> None:
    proc, local = _forward(route)  # web-1 does not allow forwarding (the default)
    try:
        assert _banner(local) == b""  # the channel was refused: closed at once
    finally:
        _stop(proc)
    refusals = [e["data"]["reason"] for e in route.gw.audit("ssh.refused")]
    assert any("forwarding is not allowed" in r for r in refusals), refusals
    options = {"ssh_forwarding": "all"}
    route.gw.create_connection(**ssh_connection(route.sshd, "web-fw", options=options))
    route.connection = "web-fw"
    proc, local = _forward(route)
    try:
        assert _banner(local).startswith(b"SSH-2.0-OpenSSH")
    finally:
        _stop(proc)
    assert route.gw.audit("ssh.forward")[-1]["data"]["port"] == route.sshd.port


def _cli(route: Route, *args: str) -> subprocess.CompletedProcess[str]:
    env = route.gw.client_env()
    env["WARDGATE_CONFIG_DIR"] = str(route.tmp / "wgconfig")
    return subprocess.run(
        [*WARDGATE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_wardgate_ssh_pins_the_gateway_and_uses_a_fresh_credential(route: Route) -> None:
    out = _cli(
        route, "ssh", "web-1", "-o", "LogLevel=ERROR", "--", "echo", "via-cli", ";", "exit 4"
    )
    assert out.returncode == 4, out.stderr
    assert out.stdout == "via-cli\n"
    known = (route.tmp / "wgconfig" / "known_hosts").read_text()
    assert known.startswith(f"[127.0.0.1]:{route.gw.public_port} ssh-ed25519 ")
    # The credential was minted for this connection only (not the admin token itself).
    opened = route.gw.audit("session.open")[-1]["data"]
    assert opened["protocol"] == "ssh"


SIGN_IN_BANNER = "Sign in with a Wardgate credential."


def test_wardgate_ssh_with_a_command_prints_only_the_command_output(route: Route) -> None:
    # As a script runs it: no LogLevel option, stdin and stdout not a terminal.
    out = _cli(route, "ssh", "web-1", "--", "echo out-1; echo err-1 >&2")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "out-1\n"
    assert SIGN_IN_BANNER not in out.stderr
    assert out.stderr == "err-1\n"


def test_wardgate_ssh_shows_the_sign_in_banner_on_an_interactive_shell(route: Route) -> None:
    import pexpect

    env = route.gw.client_env()
    env["WARDGATE_CONFIG_DIR"] = str(route.tmp / "wgconfig")
    child = pexpect.spawn(WARDGATE[0], [*WARDGATE[1:], "ssh", "web-1"], env=env, timeout=30)
    try:
        child.expect_exact(SIGN_IN_BANNER)
        child.sendline("echo marker-$((40+2))")
        child.expect("marker-42")
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 5


def test_registered_public_key_signs_in(route: Route) -> None:
    key = route.tmp / "user_key"
    keygen(key)
    added = _cli(route, "ssh-keys", "add", f"{key}.pub")
    assert added.returncode == 0, added.stderr
    fp = added.stdout.split()[0]
    assert fp.startswith("SHA256:")
    assert fp in _cli(route, "ssh-keys", "list").stdout
    pubkey = [
        "-o",
        "PreferredAuthentications=publickey",
        "-o",
        "PubkeyAuthentication=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(key),
    ]

    def run() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                "ssh",
                "-p",
                str(route.gw.public_port),
                *pubkey,  # ssh keeps an option's first value: ours before the defaults
                *route.options(),
                route.destination,
                "echo key-ok",
            ],
            capture_output=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    out = run()
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"key-ok\n"
    assert _cli(route, "ssh-keys", "remove", fp).returncode == 0
    refused = run()
    assert refused.returncode == 255
    assert b"Permission denied" in refused.stderr


def test_losing_the_agent_ends_the_session_with_a_message(route: Route) -> None:
    args = ["ssh", "-p", str(route.gw.public_port), *route.options(), route.destination]
    client = subprocess.Popen(
        [*args, "echo started; exec sleep 120"],
        env=route.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"started\n"
        assert route.agent is not None
        route.agent.kill()
        _, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 255
    assert b"wardgate: session ended: session lost on agent 'default'" in err


def test_an_administrator_ending_the_session_is_told_to_the_ssh_client(
    route: Route, wardgate: Wardgate
) -> None:
    args = ["ssh", "-p", str(route.gw.public_port), *route.options(), route.destination]
    client = subprocess.Popen(
        [*args, "echo started; exec sleep 120"],
        env=route.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"started\n"
        [running] = route.gw.audit("ssh.exec")
        killed = wardgate.cli(route.gw, "sessions", "kill", running["session"], "--reason", "audit")
        assert killed.returncode == 0, killed.stderr
        _, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 255
    assert b"wardgate: session ended: terminated by an administrator: audit" in err


def test_a_stalled_channel_does_not_hold_the_others(route: Route) -> None:
    """One SSH connection: a command floods a reader that never reads, then -L opens more."""
    options = {"ssh_forwarding": "all"}
    route.gw.create_connection(**ssh_connection(route.sshd, "web-fw", options=options))
    route.connection = "web-fw"
    local = free_port()
    flood = subprocess.Popen(
        [
            "ssh",
            "-L",
            f"127.0.0.1:{local}:127.0.0.1:{route.sshd.port}",
            "-p",
            str(route.gw.public_port),
            *route.options(),
            route.destination,
            "head -c 100000000 /dev/zero",
        ],
        env=route.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,  # never read: the flood stalls in every buffer on the way
        stderr=subprocess.DEVNULL,
    )
    try:
        assert flood.stdout is not None
        assert flood.stdout.read(1) == b"\0"  # flowing; it fills every buffer within ms
        wait_for(lambda: port_open(local), "ssh -L to listen")
        for _ in range(3):  # new channels open and answer while channel 0 is stalled
            assert _banner(local).startswith(b"SSH-2.0-OpenSSH")
        drained = 1
        while chunk := flood.stdout.read(1 << 20):
            drained += len(chunk)
        assert drained == 100_000_000
        assert flood.wait(60) == 0
    finally:
        if flood.poll() is None:
            flood.kill()
        flood.communicate()


def test_a_denied_command_typed_into_a_shell_is_not_entered(route: Route) -> None:
    import pexpect

    marker = route.tmp / "wardgate-typed-marker"
    marker.write_text("still here")
    options = {"ssh_deny_exec": "rm *"}
    route.gw.create_connection(**ssh_connection(route.sshd, "web-guarded", options=options))
    route.connection = "web-guarded"
    args = ["-tt", "-p", str(route.gw.public_port), *route.options(), route.destination]
    child = pexpect.spawn("ssh", args, env=route.env(), timeout=30)
    try:
        child.sendline(f"rm {marker}")
        child.expect("wardgate: command refused by pattern 'rm \\*'")
        child.sendline("echo alive-$((2+3))")
        child.expect("alive-5")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert marker.read_text() == "still here"
    refused = wait_for(
        lambda: [
            e["data"]
            for e in route.gw.audit("ssh.refused")
            if e["data"].get("request") == "shell input"
        ],
        "the refusal in the audit log",
    )
    assert refused[-1]["command"] == f"rm {marker}"


def test_a_command_killed_by_a_signal_reports_it(route: Route) -> None:
    out = route.ssh("echo before; kill -TERM $$")
    assert out.stdout == b"before\n"
    assert out.returncode == 255  # what OpenSSH's ssh exits with for a remote signal
    exits = wait_for(
        lambda: [e["data"] for e in route.gw.audit("ssh.exit") if e["data"].get("signal")],
        "the exit signal in the audit log",
    )
    assert exits[-1]["signal"] == "TERM"


# ---- SSH user certificates (issue 7) -----------------------------------------------------


def _cert_ssh(route: Route, key: Path, cert: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "ssh",
            "-p",
            str(route.gw.public_port),
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "PubkeyAuthentication=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"CertificateFile={cert}",
            "-i",
            str(key),
            *route.options(),  # ssh keeps an option's first value: ours before these
            route.destination,
            "echo cert-ok",
        ],
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _sign(
    route: Route,
    key: Path,
    ca: Any,
    principal: str,
    hours: tuple[float, float],
    key_id: str = "admin/none",
) -> Path:
    """A certificate made in the test itself (a window or principal the API would not give)."""
    from cryptography.hazmat.primitives import serialization as ser

    public = ser.load_ssh_public_key(Path(f"{key}.pub").read_bytes())
    now = time.time()
    cert = (
        ser.SSHCertificateBuilder()
        .public_key(public)  # type: ignore[arg-type]
        .serial(7)
        .type(ser.SSHCertificateType.USER)
        .key_id(key_id.encode())
        .valid_principals([principal.encode()])
        .valid_after(int(now + hours[0] * 3600))
        .valid_before(int(now + hours[1] * 3600))
        .sign(ca)
    )
    path = route.tmp / f"{key.name}-{principal}-{hours[1]}-{serial_name(key_id)}-cert.pub"
    path.write_bytes(cert.public_bytes() + b"\n")
    return path


def test_a_certificate_from_the_gateway_user_ca_signs_in(route: Route) -> None:
    key = route.tmp / "id_ed25519"
    keygen(key)
    with route.gw.api() as api:
        ca = api.get("/v1/ssh/user-ca").json()
    on_disk = (route.gw.data_dir / "ssh_user_ca_ed25519_key.pub").read_text().split()
    assert ca["public_key"] == f"{on_disk[0]} {on_disk[1]}"
    issued = _cli(route, "ssh-cert", "--key", str(key))
    assert issued.returncode == 0, issued.stderr
    cert = route.tmp / "id_ed25519-cert.pub"
    assert cert.read_text().startswith("ssh-ed25519-cert-v01@openssh.com ")
    shown = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True
    ).stdout
    assert "Type: ssh-ed25519-cert-v01@openssh.com user certificate" in shown
    assert "admin/" in shown and "permit-pty" in shown
    out = _cert_ssh(route, key, cert)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"cert-ok\n"
    opened = [e for e in route.gw.audit("ssh_cert.issued") if e["actor"] == "admin"]
    assert opened and "-----" not in json.dumps(opened)
    # `wardgate ssh` uses the certificate while it is valid (no credential is minted).
    via = _cli(route, "ssh", "web-1", "-o", "LogLevel=ERROR", "--", "echo", "via-cert")
    assert via.returncode == 0, via.stderr
    assert via.stdout == "via-cert\n"
    # `wardgate login --ssh-key` issues one at sign-in.
    second = route.tmp / "second"
    keygen(second)
    logged = _cli(route, "login", "--token", ADMIN_TOKEN, "--ssh-key", f"{second}.pub")
    assert logged.returncode == 0, logged.stderr
    assert "SSH certificate" in logged.stderr
    out = _cert_ssh(route, second, route.tmp / "second-cert.pub")
    assert out.returncode == 0, out.stderr


def test_expired_foreign_and_misaddressed_certificates_are_refused(route: Route) -> None:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = route.tmp / "id_ed25519"
    keygen(key)
    ca = ser.load_ssh_private_key(
        (route.gw.data_dir / "ssh_user_ca_ed25519_key").read_bytes(), password=None
    )
    foreign = ed25519.Ed25519PrivateKey.generate()
    cases = {
        "expired": _sign(route, key, ca, "admin", (-2, -1)),
        "not issued for this user": _sign(route, key, ca, "bob", (-1, 1)),
        "not signed by the gateway's user CA": _sign(route, key, foreign, "admin", (-1, 1)),
    }
    for reason, cert in cases.items():
        out = _cert_ssh(route, key, cert)
        assert out.returncode == 255, (reason, out.stderr)
        assert b"Permission denied" in out.stderr
        assert reason.encode() not in out.stderr  # the reason is for the audit log only
        refused = [e["data"]["reason"] for e in route.gw.audit("ssh.refused")]
        assert any(reason in r for r in refused), (reason, refused)
    # A certificate naming no live credential is refused; the same key with one gets in.
    unknown = _sign(route, key, ca, "admin", (-1, 1))
    assert _cert_ssh(route, key, unknown).returncode == 255
    assert any("revoked" in e["data"]["reason"] for e in route.gw.audit("ssh.refused"))
    with route.gw.api() as api:
        token_id = api.get("/v1/whoami").json()["credential"]["id"]
    good = _sign(route, key, ca, "admin", (-1, 1), key_id=f"admin/{token_id}")
    out = _cert_ssh(route, key, good)
    assert out.returncode == 0, out.stderr
    # ECDSA and RSA keys' certificates too (paramiko reads all three kinds).
    for kind in ("ecdsa", "rsa"):
        other = route.tmp / f"id_{kind}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(other)], check=True, timeout=60
        )
        cert = _sign(route, other, ca, "admin", (-1, 1), key_id=f"admin/{token_id}")
        out = _cert_ssh(route, other, cert)
        assert out.returncode == 0, (kind, out.stderr)


def serial_name(key_id: str) -> str:
    return key_id.replace("/", "_")


def test_certificates_end_with_the_sign_in_and_the_user(
    wardgate: Wardgate, sshd: Sshd, tmp_path: Path
) -> None:
    import urllib.parse

    from gateway.crypto import SecretBox
    from gateway.identity.local import totp

    gw = wardgate.gateway(secret_key=SecretBox.generate_key(), identity={"local_users": True})
    agent = wardgate.agent(gw, gw.create_agent("default"), wait="default")
    gw.create_connection(**ssh_connection(sshd))
    route = Route(gw, sshd, tmp_path, agent=agent)
    password = "a long local password"
    with route.gw.api() as api:
        made = api.post("/v1/users", json={"name": "carol", "password": password, "groups": []})
        assert made.status_code == 201, made.text
    secret = urllib.parse.parse_qs(urllib.parse.urlsplit(made.json()["totp_uri"]).query)

    def sign_in() -> str:
        with route.gw.api() as api:
            body = {"user": "carol", "password": password, "code": totp(secret["secret"][0])}
            got = api.post("/v1/auth/password", json=body)
        assert got.status_code == 200, got.text
        return str(got.json()["token"])

    key = route.tmp / "carol_key"
    keygen(key)
    public = Path(f"{key}.pub").read_text()
    cert = route.tmp / "carol_key-cert.pub"
    route.user = "carol"

    def issue(token: str, **extra: object) -> Any:
        with route.gw.api(token) as api:
            return api.post("/v1/ssh/certificates", json={"public_key": public, **extra})

    token = sign_in()
    # Never beyond the credential's own lifetime; bounds; a scoped credential gets none.
    with route.gw.api(token) as api:
        expires = api.get("/v1/whoami").json()["credential"]["expires_at"]
    got = issue(token)
    assert got.status_code == 201, got.text
    assert got.json()["principals"] == ["carol"]
    if expires is not None:
        assert got.json()["valid_before"] <= expires
    assert issue(token, validity_seconds=5).status_code == 422
    assert issue(token, validity_seconds=10**6).status_code == 422
    with route.gw.api(token) as api:
        cert_as_key = api.post(
            "/v1/ssh/certificates", json={"public_key": got.json()["certificate"]}
        )
        assert cert_as_key.status_code == 422
    with route.gw.api() as api:  # carol has no grant to mint one for: the admin's
        minted = api.post("/v1/credentials/connection", json={"connection": "web-1"}).json()
    assert issue(str(minted["token"])).status_code in (401, 403)  # not an API credential

    def signs_in() -> bool:
        out = _cert_ssh(route, key, cert)
        # carol has no grant on web-1: past authentication the session itself is refused.
        return out.returncode != 255 and b"Permission denied" not in out.stderr

    cert.write_text(got.json()["certificate"] + "\n")
    assert signs_in()
    with route.gw.api(token) as api:
        assert api.post("/v1/auth/logout").status_code == 200
    assert not signs_in()
    reasons = [e["data"]["reason"] for e in route.gw.audit("ssh.refused")]
    assert any("credential it was issued under is revoked" in r for r in reasons)

    cert.write_text(issue(sign_in()).json()["certificate"] + "\n")
    assert signs_in()
    with route.gw.api() as api:
        assert api.post("/v1/users/carol/disable").status_code == 200
    assert not signs_in()
    reasons = [e["data"]["reason"] for e in route.gw.audit("ssh.refused")]
    assert any("certificate: user unknown or disabled" in r for r in reasons)
